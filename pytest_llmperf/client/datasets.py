"""Prompts for a workload: random token ids or text, ShareGPT JSON, JSONL, or a trace to replay.

Pure: the caller passes in what it learned from the server (a pool of valid token ids, a tokenize callable,
the chat template's token overhead), so this module does no I/O beyond reading a dataset file.

Exact input lengths come from token-id prompts on ``/v1/completions`` (a list of ints is valid OpenAI input)
or, for chat and for servers without a token pool, from text trimmed until the server's tokenizer agrees.
Random prompts differ per request (token ids drawn independently per position) so a prefix cache cannot serve
them, except the shared ``prefix_len`` tokens when a test asks for them.

Fresh contents per run. Lengths (and the dataset rows chosen) come from ``workload.seed`` alone, so every run of
a test asks for the same work; the *contents* come from a second stream keyed by ``contents`` (the caller passes
the session's nonce, the test and the run index), so no run repeats an earlier run's prompts and no engine's
prefix cache can serve them. Shared prefixes (``prefix_len``) stay shared within a run and are new per run,
unless ``prefix_reuse`` asks for one prefix across runs and sessions. Dataset files cannot have new contents, so
each run prepends its own short salt to every prompt: sharing inside the file stays sharing inside the run, and
nothing is shared across runs.

ShareGPT files are sampled as the workload's compat mode's tool samples them (read from the tools' source):

* both: conversations with at least two turns are kept (``conversations``; SGLang also reads ``conversation``),
  shuffled with ``random.Random(seed)`` (the tools call ``random.seed(seed)`` then ``random.shuffle``, which
  gives the same order), and walked in that order until enough pairs survive. The prompt is the first turn,
  the reply the second; lengths are counted with the server's (or the local) tokenizer. The output length is
  ``dataset_output_len`` when given (``--sharegpt-output-len``), else the reply's token count.
* ``compat="sglang"``: ``sglang.bench_serving`` (``python/sglang/benchmark/datasets/sharegpt.py``,
  ``sample_sharegpt_requests``): a pair is pruned when its prompt or output is under 2 tokens, or when
  ``dataset_context_len`` (``--sharegpt-context-len``) is given and prompt + output exceeds it. SGLang's default
  context limit is ``None``: no limit. An output override under 4 is refused, as SGLang does.
* ``compat="vllm"``: ``vllm bench serve`` (``vllm/benchmarks/datasets/sharegpt.py``, ``ShareGPTDataset.sample``
  with ``vllm/benchmarks/datasets/utils.py::is_valid_sequence`` at its defaults): pruned when the prompt is
  under 4 tokens, the output is under 4 (not checked when overridden), the prompt is over 1024, or prompt +
  output is over 2048 (also with an override: with ``dataset_output_len=1600`` only prompts of at most 448
  tokens survive). vLLM has no context option; ``dataset_context_len``, when given, prunes prompt + output
  over it as well.

JSONL files: ``dataset_output_len`` replaces every line's output length and ``dataset_context_len`` prunes as
above; no other filter. When fewer prompts survive than a run sends, they repeat (each pass over them with a
salt of its own, so a repeat is no prefix-cache hit) and a :class:`LLMPerfDatasetWarning` says how many were
available and how many were asked for: SGLang would send fewer requests, vLLM oversamples with replacement.

Traces (``trace``): a Mooncake-style JSONL (the FAST'25 Mooncake traces), one request a line:
``{"timestamp": ms, "input_length": N, "output_length": M, "hash_ids": [ints]}``. Lines are taken in file order
(the first ``num_prompts`` when given; timestamps must not decrease), each due ``(timestamp - first timestamp) /
1000 / trace_speedup`` seconds after the run's start (``Prompt.arrival_s``). ``hash_ids`` name prefix blocks of
``trace_block_size`` tokens (512, Mooncake's): block ``k`` of a prompt is the block of its ``k``-th hash id, whose
tokens depend only on that id (and, as for ``prefix_len``, on the run unless ``prefix_reuse``), so requests that
share hash ids share those blocks' tokens. The prompt is those blocks cut to ``input_length`` (the last block
may be partial), filled up with tokens of its own when the hash ids cover less; ``output_length`` is asked for
(at least 1). Token ids are exact on ``/v1/completions`` with a token pool; text is made of single-token words,
block by block, and fitted at its end until the server's tokenizer agrees.

Multi-turn conversations (``turns > 1``, random prompts or a ShareGPT file): :mod:`pytest_llmperf.client.conversations`
builds them; ``count`` then counts conversations, each giving one prompt per turn.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import LLMPerfDatasetWarning, SpecError
from pytest_llmperf.spec import Prompt, Workload

Tokenize = Callable[[str], list[int]]

# Common short English words: most tokenizers map each (with its leading space) to one token, which keeps
# text prompts close to their target length before trimming.
COMMON_WORDS = tuple(
    """the of and to in is was for that on as with by he at from his it an were are which this be or has had
    not first one their its new after who they have her she two been other when there all during into school
    time may years more most only over city some world would where later up such used many can state about
    national out known university united then made year part three both under north""".split()
)

_MAX_CALIBRATION_ROUNDS = 8
# Words of the per-run salt before dataset-file prompts: (1/100)^4 odds that two runs share one.
SALT_WORDS = 4

# vLLM's is_valid_sequence defaults (vllm/benchmarks/datasets/utils.py) and SGLang's "too short" bound.
VLLM_MIN_LEN = 4
VLLM_MAX_PROMPT_LEN = 1024
VLLM_MAX_TOTAL_LEN = 2048
SGLANG_MIN_LEN = 2

# A dataset row: the prompt, and the reply's text (ShareGPT), an output length (JSONL) or None (JSONL, none
# given). A malformed ShareGPT entry keeps its place as None so the shuffle orders rows as the tools do.
_Row = tuple[str, int | str | None] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class PromptContext:
    """What the orchestrator learned from the server before building prompts."""

    token_pool: Sequence[int] = ()
    tokenize: Tokenize | None = None
    chat_overhead_tokens: int = 0
    # Special tokens (a BOS) the server adds to a text prompt of /v1/completions: part of what it counts.
    text_overhead_tokens: int = 0
    # Exact count of what the server sees for one chat message (template applied), when it can tell us.
    count_chat: Callable[[str], int] | None = None
    # The same for a whole ``messages`` list (multi-turn requests), when the server can tell us.
    count_messages: Callable[[Sequence[Mapping[str, str]]], int] | None = None
    # Words the server's tokenizer maps to one token each: text made of them grows one token per word.
    words: Sequence[str] = ()


def sample_lengths(workload: Workload, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """(input_len, output_len) per request with the range-ratio rule ``workload.range_rule`` names, else the
    compat mode's.

    vllm: integers uniform on ``[floor(L(1-r)), ceil(L(1+r))]``; sglang (and inferencemax, which used SGLang's
    rule): uniform on ``[max(1, int(L r)), L]``.
    """
    r = workload.range_ratio
    rule = workload.range_rule or workload.compat

    def one(length: int) -> int:
        if rule in ("sglang", "inferencemax"):
            low, high = max(1, int(length * r)), length
        else:
            low, high = max(1, math.floor(length * (1 - r))), max(1, math.ceil(length * (1 + r)))
        return rng.randint(low, high) if high > low else low

    return [(one(workload.input_len), one(workload.output_len)) for _ in range(count)]


def asks_for_sharing(workload: Workload) -> bool:
    """Whether the workload's prompts share prefixes on purpose (a prefix cache may then serve them)."""
    return (
        workload.prefix_len > 0
        or workload.prefix_reuse
        or workload.dataset != "random"
        or workload.trace is not None
        or workload.turns > 1  # each turn carries the earlier ones: the cache is meant to serve them
    )


def build_prompts(workload: Workload, count: int, context: PromptContext, *, contents: str = "") -> list[Prompt]:
    """``count`` prompts for ``workload``.

    Lengths are reproducible from ``workload.seed``; token contents from ``seed`` and ``contents`` together, so
    each distinct ``contents`` key (one per run) gives prompts no earlier run sent. ``contents=""`` draws
    everything from the seed alone (the same workload then gives the same prompts).
    """
    rng = random.Random(workload.seed)
    content_rng = random.Random(f"{workload.seed}|{contents}") if contents else rng
    if workload.trace is not None:
        return _trace_prompts(workload, count, context, content_rng, contents)
    if workload.turns > 1:  # ``count`` conversations, each a request per turn
        from pytest_llmperf.client.conversations import conversation_prompts

        return conversation_prompts(workload, count, context, rng, content_rng, contents)
    if workload.dataset == "random":
        return _random_prompts(workload, count, context, rng, content_rng)
    path = Path(workload.dataset)
    if not path.is_file():
        raise SpecError(
            f"dataset={workload.dataset!r} is neither 'random' nor an existing file; "
            "give a ShareGPT .json file or a .jsonl file of {'prompt': ..., 'output_len': ...} lines"
        )
    sharegpt = path.suffix != ".jsonl"
    rows: list[_Row] = _read_sharegpt(path, workload.compat) if sharegpt else [*_read_jsonl(path)]
    if not rows:
        raise SpecError(f"dataset {path} holds no usable prompts; check its format (ShareGPT JSON or JSONL)")
    rng.shuffle(rows)
    tokenize = context.tokenize

    def count_tokens(text: str) -> int:
        return len(tokenize(text)) if tokenize else estimate_tokens(text)

    usable = _usable(rows, workload, count_tokens, count, sharegpt=sharegpt)
    if not usable:
        raise SpecError(
            f"dataset {path}: no prompt survives {_rules(workload, sharegpt)}; "
            "loosen dataset_context_len or dataset_output_len, or use another file"
        )
    if len(usable) < count:
        warnings.warn(
            LLMPerfDatasetWarning(
                f"dataset {path.name}: {len(usable)} distinct prompt(s) survive {_rules(workload, sharegpt)}, "
                f"but {count} were asked for: prompts repeat (up to {math.ceil(count / len(usable))} times each). "
                "Use a larger file or fewer prompts (num_prompts), or loosen dataset_context_len"
            ),
            stacklevel=2,
        )
    vocabulary = context.words or COMMON_WORDS
    salts: list[str] = []

    def salt(repeat: int) -> str:
        # One salt per run and pass over the rows: a repeated prompt is new to the prefix cache too.
        if not contents or workload.prefix_reuse:
            return ""
        while len(salts) <= repeat:
            salts.append(" ".join(content_rng.choice(vocabulary) for _ in range(SALT_WORDS)) + " ")
        return salts[repeat]

    prompts: list[Prompt] = []
    for i in range(count):
        repeat, j = divmod(i, len(usable))
        text, n_out = usable[j]
        text = salt(repeat) + text
        prompts.append(
            Prompt(prompt=text, input_len=count_tokens(text) + _overhead(workload, context), output_len=n_out)
        )
    return prompts


def _rules(workload: Workload, sharegpt: bool) -> str:
    """The filters of ``workload`` in words, for messages."""
    context = "" if workload.dataset_context_len is None else f", dataset_context_len={workload.dataset_context_len}"
    if not sharegpt:
        return f"the JSONL filters ({context[2:] or 'none'})"
    if workload.compat == "sglang":
        return f"sglang.bench_serving's ShareGPT filters (prompt and output >= {SGLANG_MIN_LEN} tokens{context})"
    return (
        f"vllm bench serve's ShareGPT filters (prompt >= {VLLM_MIN_LEN} and <= {VLLM_MAX_PROMPT_LEN} tokens, "
        f"prompt + output <= {VLLM_MAX_TOTAL_LEN}{context})"
    )


def _usable(
    rows: Sequence[_Row], workload: Workload, count_tokens: Callable[[str], int], wanted: int, *, sharegpt: bool
) -> list[tuple[str, int]]:
    """(prompt, output_len) of the rows that pass the compat mode's filters, in order, stopping at ``wanted``."""
    override, context = workload.dataset_output_len, workload.dataset_context_len
    usable: list[tuple[str, int]] = []
    for row in rows:
        if len(usable) >= wanted:
            break
        if row is None:
            continue
        text, wanted_out = row
        prompt_len = count_tokens(text)
        if override is not None:
            n_out = override
        elif isinstance(wanted_out, str):
            n_out = count_tokens(wanted_out)  # the reply's length, as both tools take it
        else:
            n_out = wanted_out or workload.output_len
        if context is not None and prompt_len + n_out > context:
            continue
        if sharegpt and not passes(prompt_len, n_out, workload):
            continue
        if not text.strip():
            continue  # never send an empty prompt (the tools would have pruned it as too short)
        usable.append((text, max(1, n_out)))
    return usable


def passes(prompt_len: int, output_len: int, workload: Workload) -> bool:
    """Whether a ShareGPT pair survives the length rules of ``workload.compat`` (see the module docstring)."""
    if workload.compat == "sglang":
        return prompt_len >= SGLANG_MIN_LEN and output_len >= SGLANG_MIN_LEN
    output_checked = workload.dataset_output_len is None
    return not (
        prompt_len < VLLM_MIN_LEN
        or (output_checked and output_len < VLLM_MIN_LEN)
        or prompt_len > VLLM_MAX_PROMPT_LEN
        or prompt_len + output_len > VLLM_MAX_TOTAL_LEN
    )


def _overhead(workload: Workload, context: PromptContext) -> int:
    return context.chat_overhead_tokens if workload.api == "chat" else context.text_overhead_tokens


def _random_prompts(
    workload: Workload, count: int, context: PromptContext, rng: random.Random, content_rng: random.Random
) -> list[Prompt]:
    lengths = sample_lengths(workload, count, rng)
    use_ids = workload.api == "completions" and len(context.token_pool) > 0
    prefix_len = min(workload.prefix_len, workload.input_len)
    # One prefix for every run and session when asked for; otherwise the run's own (shared within the run).
    prefix_rng = random.Random(f"{workload.seed}|prefix") if workload.prefix_reuse else content_rng
    draw = content_rng
    if use_ids:
        pool = list(context.token_pool)
        prefix_ids = [prefix_rng.choice(pool) for _ in range(prefix_len)]
        return [
            Prompt(
                prompt=prefix_ids[: min(prefix_len, n_in)]
                + [draw.choice(pool) for _ in range(max(0, n_in - prefix_len))],
                input_len=n_in,
                output_len=n_out,
            )
            for n_in, n_out in lengths
        ]
    vocabulary = context.words or COMMON_WORDS
    prefix_words = [prefix_rng.choice(vocabulary) for _ in range(prefix_len)]
    counter = text_counter(workload, context)
    prompts = []
    for n_in, n_out in lengths:
        words = prefix_words[:n_in] + [draw.choice(vocabulary) for _ in range(max(0, n_in - prefix_len))]
        text = fit_text(words, n_in, counter, vocabulary, draw)
        prompts.append(Prompt(prompt=text, input_len=counter(text) if counter else n_in, output_len=n_out))
    return prompts


@dataclass(frozen=True, slots=True)
class TraceLine:
    """One request of a trace: when it came (ms), its lengths and the prefix blocks its prompt is made of."""

    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def trace_requests(path: Path) -> int:
    """How many requests (non-empty lines) a trace holds; 0 when it cannot be read (building prompts says why)."""
    try:
        with path.open(encoding="utf-8") as lines:
            return sum(1 for line in lines if line.strip())
    except (OSError, ValueError):
        return 0


def read_trace(path: Path, limit: int | None = None) -> list[TraceLine]:
    """The first ``limit`` lines (all when None) of a Mooncake-style JSONL trace, checked."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read trace {path}: {exc}") from exc
    usage = (
        'each line must be {"timestamp": ms, "input_length": int >= 1, "output_length": int >= 0, '
        '"hash_ids": [int, ...]}'
    )
    out: list[TraceLine] = []
    for number, line in enumerate(lines, start=1):
        if limit is not None and len(out) >= limit:
            break
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"{path}:{number}: not valid JSON ({exc}); {usage}") from exc
        parsed = _trace_line(entry)
        if parsed is None:
            raise SpecError(f"{path}:{number}: {usage}")
        if out and parsed.timestamp_ms < out[-1].timestamp_ms:
            raise SpecError(
                f"{path}:{number}: timestamp {parsed.timestamp_ms:g} is before the previous line's "
                f"{out[-1].timestamp_ms:g}; a trace's lines must be in time order"
            )
        out.append(parsed)
    return out


def _whole(value: object, low: int) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= low else None


def _trace_line(entry: object) -> TraceLine | None:
    """One trace line's request, or None when the line does not have the trace's fields."""
    if not isinstance(entry, dict):
        return None
    stamp, hash_ids = entry.get("timestamp"), entry.get("hash_ids", [])
    n_in, n_out = _whole(entry.get("input_length"), 1), _whole(entry.get("output_length"), 0)
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        return None
    if n_in is None or n_out is None or not isinstance(hash_ids, list):
        return None
    ids = [_whole(h, -(2**63)) for h in hash_ids]
    if None in ids:
        return None
    return TraceLine(float(stamp), n_in, n_out, tuple(h for h in ids if h is not None))


def _trace_prompts(
    workload: Workload, count: int, context: PromptContext, content_rng: random.Random, contents: str
) -> list[Prompt]:
    assert workload.trace is not None
    path = Path(workload.trace)
    if not path.is_file():
        raise SpecError(f"trace={workload.trace!r} is not an existing file; give a Mooncake-style .jsonl trace")
    lines = read_trace(path, count)
    if not lines:
        raise SpecError(f"trace {path} holds no requests")
    if len(lines) < count:  # fewer lines than asked for (a warmup asks for its own few)
        warnings.warn(
            LLMPerfDatasetWarning(
                f"trace {path.name}: {count} request(s) asked for but the trace holds {len(lines)} "
                "request(s): all of them are replayed, once"
            ),
            stacklevel=3,
        )
    size = workload.trace_block_size
    use_ids = workload.api == "completions" and len(context.token_pool) > 0
    pool: Sequence[int | str] = list(context.token_pool) if use_ids else list(context.words or COMMON_WORDS)
    # A block's tokens depend on its hash id alone (and on the run's key unless the blocks are reused).
    block_key = f"{workload.seed}|trace" if workload.prefix_reuse else f"{workload.seed}|{contents}|trace"
    blocks: dict[int, list[int | str]] = {}

    def block(hash_id: int) -> list[int | str]:
        if hash_id not in blocks:
            blocks[hash_id] = random.Random(f"{block_key}|{hash_id}").choices(pool, k=size)
        return blocks[hash_id]

    counter = None if use_ids else text_counter(workload, context)
    vocabulary = [str(t) for t in pool]
    start = lines[0].timestamp_ms
    prompts: list[Prompt] = []
    for line in lines:
        n_in, n_out = line.input_length, max(1, line.output_length)
        tokens: list[int | str] = []
        for hash_id in line.hash_ids:
            if len(tokens) >= n_in:
                break
            tokens.extend(block(hash_id))
        del tokens[n_in:]
        tokens.extend(content_rng.choices(pool, k=n_in - len(tokens)))  # beyond the hash ids: its own
        arrival_s = (line.timestamp_ms - start) / 1000.0 / workload.trace_speedup
        if use_ids:
            ids = [int(t) for t in tokens]
            prompts.append(Prompt(prompt=ids, input_len=n_in, output_len=n_out, arrival_s=arrival_s))
            continue
        words = [str(t) for t in tokens]
        text = fit_text(words, n_in, counter, vocabulary, content_rng)
        n_text = counter(text) if counter else n_in
        prompts.append(Prompt(prompt=text, input_len=n_text, output_len=n_out, arrival_s=arrival_s))
    return prompts


def text_counter(workload: Workload, context: PromptContext) -> Callable[[str], int] | None:
    """Tokens the server will count for a text prompt, as exactly as the context allows."""
    if workload.api == "chat" and context.count_chat is not None:
        return context.count_chat
    tokenize = context.tokenize
    if tokenize is None:
        return None
    overhead = _overhead(workload, context)
    return lambda text: len(tokenize(text)) + overhead


def fit_text(
    words: list[str], target: int, count: Callable[[str], int] | None, vocabulary: Sequence[str], rng: random.Random
) -> str:
    """Add or drop words until ``count`` agrees the text has ``target`` tokens (best effort)."""
    if count is None:
        return " ".join(words)
    for _ in range(_MAX_CALIBRATION_ROUNDS):
        counted = count(" ".join(words))
        if counted == target:
            break
        if counted > target:
            # One token per surplus word: exact for single-token vocabularies, and never overshoots below.
            words = words[: max(1, len(words) - (counted - target))]
        else:
            words = words + [rng.choice(vocabulary) for _ in range(target - counted)]
    return " ".join(words)


def estimate_tokens(text: str) -> int:
    # Only used without any tokenizer; the server's usage.prompt_tokens replaces it when reported.
    return max(1, round(len(text.split()) * 1.3))


def sharegpt_conversations(path: Path, compat: str) -> list[list[Any]]:
    """The message list of every conversation of two messages or more in a ShareGPT file, in file order
    (messages unchecked: each reader checks what it takes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read ShareGPT dataset {path}: {exc}") from exc
    if not isinstance(data, list):
        raise SpecError(f"ShareGPT dataset {path} must be a JSON list of {{'conversations': [...]}} entries")
    found: list[list[Any]] = []
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if turns is None and compat == "sglang" and isinstance(entry, dict):
            turns = entry.get("conversation")  # SGLang reads either key; vLLM only "conversations"
        if isinstance(turns, list) and len(turns) >= 2:
            found.append(turns)
    return found


def _read_sharegpt(path: Path, compat: str) -> list[_Row]:
    """The (prompt, reply) of every conversation of two turns or more, in file order; a malformed one as None."""
    rows: list[_Row] = []
    for turns in sharegpt_conversations(path, compat):
        first, second = turns[0], turns[1]
        prompt = first.get("value") if isinstance(first, dict) else None
        reply = second.get("value") if isinstance(second, dict) else None
        rows.append((prompt, reply) if isinstance(prompt, str) and isinstance(reply, str) else None)
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, int | str | None]]:
    rows: list[tuple[str, int | str | None]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read JSONL dataset {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"{path}:{number}: not valid JSON ({exc}); each line must be an object") from exc
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(prompt, str):
            raise SpecError(f"{path}:{number}: each line needs a string 'prompt'")
        out = entry.get("output_len", entry.get("output_tokens"))
        rows.append((prompt, int(out) if isinstance(out, int) and out > 0 else None))
    return rows
