"""The examples run as written against a GPU server (``--llmperf-endpoint=URL`` or ``--llmperf-server=vllm``).

With no server option they run against the embedded llama.cpp engine, where ``--llmperf-scale=auto`` shrinks
lengths, prompt counts and TTFT/E2E limits 20× so that the whole directory takes a few minutes on a laptop.
There the engine's one core stands in for one GPU, priced at $0.05 an hour (about a cloud vCPU's on-demand
price), so that the per-GPU SLOs are measured and every row gets its cost per million tokens. Against a GPU
server give the real figures: ``--llmperf-gpus=8 --llmperf-gpu-cost-per-hour=2.21``.

The published ShareGPT file and Mooncake trace cannot be downloaded here (no network), so this file writes
small stand-ins in their formats, the same bytes on every machine, under ``.llmperf/examples/`` in the current
directory; on a GPU server point the tests' ``dataset=`` and ``trace=`` at the real files.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

DATA = Path(".llmperf", "examples")  # relative: the workload (and its baseline hash) names no machine's path
SHAREGPT = DATA / "sharegpt_v3_sample.json"
MOONCAKE_TRACE = DATA / "mooncake_conversation_sample.jsonl"

EMBEDDED_GPUS = "1"
EMBEDDED_GPU_COST_PER_HOUR = "0.05"

WORDS = """
the of and to in is was for on that with as by at from it be this are or an have has not but which were they one
their all been had can more will would there his her she he we you your our them these those who what when where
why how if then than so some any each other such into over about after before under between through during
without again also only just very most many much few first last new old good great small large long short high
low same different own time year day week month hour people world life hand part place case point group number
way thing fact work water food house city country school family system program question problem answer result
reason example model data server request token prompt output input test speed fast slow latency throughput
memory cache batch queue stream text word line page book story name form kind level rate price value cost
""".split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def sharegpt_conversations() -> list[dict[str, object]]:
    """620 ShareGPT_V3-style entries: 600 of two turns (prompts of 5–38 words, a third of 40–160), 20 of one turn
    (both tools drop those). Scaled ×0.05 the context limit (120 tokens, 80 of them output) keeps the short
    prompts; as written (2400, 1600) it keeps all 600."""
    rng = random.Random(20251201)
    entries: list[dict[str, object]] = []
    for i in range(620):
        prompt_words = rng.randint(40, 160) if rng.random() < 1 / 3 else rng.randint(5, 38)
        turns = [{"from": "human", "value": _text(rng, prompt_words).capitalize() + "?"}]
        if i % 31 != 30:
            turns.append({"from": "gpt", "value": _text(rng, rng.randint(10, 60)).capitalize() + "."})
        entries.append({"id": f"sample_{i}", "conversations": turns})
    return entries


def mooncake_trace() -> list[dict[str, object]]:
    """32 requests in the format of Mooncake's FAST'25 ``conversation_trace.jsonl``: 8 conversations whose turns
    repeat the earlier turns' blocks (``hash_ids``) and add their own, arriving about 5 a second.

    Mooncake's lengths (12k tokens in, 343 out on average, 512-token blocks) are shrunk 20× for the lengths and
    16× for the blocks, to 32 tokens, so that a prompt still spans several blocks."""
    rng = random.Random(20250225)
    history: dict[int, list[int]] = {}
    next_block, stamp = 0, 0.0
    lines = []
    for _ in range(32):
        conversation = rng.randrange(8)
        blocks = history.setdefault(conversation, [])
        new = rng.randint(2, 5)
        blocks.extend(range(next_block, next_block + new))
        next_block += new
        input_length = 32 * (len(blocks) - 1) + rng.randint(8, 32)
        line = {"timestamp": round(stamp), "input_length": input_length, "output_length": rng.randint(8, 30)}
        lines.append({**line, "hash_ids": list(blocks)})
        stamp += rng.expovariate(5.0) * 1000
    return lines


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless the file holds it already; atomically, since pytest-xdist workers may race."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def on_embedded_engine(config: pytest.Config) -> bool:
    """No server option: the tests run against the embedded llama.cpp engine."""
    given = [config.getoption(f"llmperf_{name}") or config.getini(f"llmperf_{name}") for name in ("endpoint", "server")]
    return not any(given) and not config.getoption("llmperf_compare")


@pytest.fixture(scope="session")
def embedded(pytestconfig: pytest.Config) -> bool:
    """True on the embedded engine, whose one CPU core stands in for a GPU."""
    return on_embedded_engine(pytestconfig)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _write(SHAREGPT, json.dumps(sharegpt_conversations(), indent=1) + "\n")
    _write(MOONCAKE_TRACE, "".join(json.dumps(line) + "\n" for line in mooncake_trace()))
    if not on_embedded_engine(config):
        return  # a real server: its GPU count and price come from the command line or its profile
    for name, value in (("gpus", EMBEDDED_GPUS), ("gpu_cost_per_hour", EMBEDDED_GPU_COST_PER_HOUR)):
        if not config.getoption(f"llmperf_{name}") and not config.getini(f"llmperf_{name}"):
            setattr(config.option, f"llmperf_{name}", value)  # read by the plugin's own pytest_configure
