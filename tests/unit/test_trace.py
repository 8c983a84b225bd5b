"""Trace replay from a Mooncake-style JSONL (issue 16, item 7): arrivals with the speed-up, prompt blocks shared by
hash id, exact lengths, the keywords' checks, and the open-loop schedule the load generator takes from it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pytest_llmperf.client.datasets import PromptContext, asks_for_sharing, build_prompts, read_trace
from pytest_llmperf.errors import LLMPerfDatasetWarning, SpecError
from pytest_llmperf.harness.markers import build_spec
from pytest_llmperf.harness.runner import planned_prompts
from pytest_llmperf.judge.baseline import workload_hash
from pytest_llmperf.spec import Workload

POOL = PromptContext(token_pool=list(range(1000, 5000)))
# Block size 4: request 0 is blocks 1, 2 (8 tokens); request 1 shares block 1, then a partial block 3 (3 of its
# 4 tokens); request 2 shares blocks 1 and 2 and needs 2 tokens beyond them; request 3 shares nothing.
LINES = [
    {"timestamp": 1000, "input_length": 8, "output_length": 5, "hash_ids": [1, 2]},
    {"timestamp": 1500, "input_length": 7, "output_length": 3, "hash_ids": [1, 3]},
    {"timestamp": 3000, "input_length": 10, "output_length": 4, "hash_ids": [1, 2]},
    {"timestamp": 3000, "input_length": 4, "output_length": 2, "hash_ids": [9]},
]


def write_trace(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return write_trace(tmp_path / "trace.jsonl", LINES)


def ids(prompt: str | list[int]) -> list[int]:
    assert isinstance(prompt, list)
    return prompt


def test_arrivals_follow_the_timestamps_divided_by_the_speedup(trace: Path) -> None:
    plain = build_prompts(Workload(trace=str(trace), num_prompts=None, trace_block_size=4), 4, POOL)
    assert [p.arrival_s for p in plain] == [0.0, 0.5, 2.0, 2.0]  # seconds after the first line's timestamp
    fast = build_prompts(Workload(trace=str(trace), num_prompts=None, trace_block_size=4, trace_speedup=2.0), 4, POOL)
    assert [p.arrival_s for p in fast] == [0.0, 0.25, 1.0, 1.0]


def test_lengths_are_the_traces(trace: Path) -> None:
    prompts = build_prompts(Workload(trace=str(trace), num_prompts=None, trace_block_size=4), 4, POOL)
    assert [(p.input_len, p.output_len) for p in prompts] == [(8, 5), (7, 3), (10, 4), (4, 2)]
    assert [len(ids(p.prompt)) for p in prompts] == [8, 7, 10, 4]


def test_requests_sharing_a_hash_id_share_its_blocks_tokens(trace: Path) -> None:
    prompts = build_prompts(Workload(trace=str(trace), num_prompts=None, trace_block_size=4), 4, POOL, contents="r0")
    a, b, c, d = (ids(p.prompt) for p in prompts)
    assert a[:4] == b[:4] == c[:4]  # hash id 1
    assert a[4:8] == c[4:8]  # hash id 2
    assert b[4:7] != a[4:7]  # hash id 3 is another block (3 tokens of it: the last block is partial)
    assert d != a[:4]  # hash id 9 is shared with nobody
    assert d != b[4:7]
    # Beyond its hash ids a prompt has tokens of its own.
    assert len(c) == 10


def test_blocks_are_new_per_run_unless_reused(trace: Path) -> None:
    w = Workload(trace=str(trace), num_prompts=None, trace_block_size=4)
    run0 = build_prompts(w, 4, POOL, contents="s/run0")
    run1 = build_prompts(w, 4, POOL, contents="s/run1")
    assert ids(run0[0].prompt)[:4] != ids(run1[0].prompt)[:4]
    assert build_prompts(w, 4, POOL, contents="s/run0") == run0  # reproducible from the key
    reused = w.replace(prefix_reuse=True)
    a = build_prompts(reused, 4, POOL, contents="a/run0")
    b = build_prompts(reused, 4, POOL, contents="b/run3")
    covered = [8, 7, 8, 4]  # the tokens of each prompt its hash ids cover (the rest is its own, new per run)
    assert [ids(p.prompt)[:n] for p, n in zip(a, covered, strict=True)] == [
        ids(p.prompt)[:n] for p, n in zip(b, covered, strict=True)
    ]
    assert ids(a[2].prompt)[8:] != ids(b[2].prompt)[8:]


def test_default_block_is_512_tokens(tmp_path: Path) -> None:
    path = write_trace(
        tmp_path / "t.jsonl",
        [
            {"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [7, 8]},
            {"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [7, 5]},
        ],
    )
    a, b = (ids(p.prompt) for p in build_prompts(Workload(trace=str(path), num_prompts=None), 2, POOL))
    assert a[:512] == b[:512]
    assert a[512:600] != b[512:600]


def test_text_prompts_share_blocks_too(trace: Path) -> None:
    context = PromptContext(tokenize=lambda text: list(range(len(text.split()))))
    w = Workload(trace=str(trace), num_prompts=None, trace_block_size=4, api="chat")
    prompts = build_prompts(w, 4, context)
    words = [str(p.prompt).split() for p in prompts]
    assert [len(x) for x in words] == [8, 7, 10, 4]
    assert [p.input_len for p in prompts] == [8, 7, 10, 4]
    assert words[0][:4] == words[1][:4] == words[2][:4]


def test_num_prompts_takes_the_first_lines(trace: Path) -> None:
    w = Workload(trace=str(trace), num_prompts=2, trace_block_size=4)
    assert planned_prompts(w) == 2
    assert [p.output_len for p in build_prompts(w, planned_prompts(w), POOL)] == [5, 3]
    whole = w.replace(num_prompts=None)
    assert planned_prompts(whole) == 4
    with pytest.warns(LLMPerfDatasetWarning, match=r"9 request\(s\) asked for but the trace holds 4"):
        assert len(build_prompts(w.replace(num_prompts=9), 9, POOL)) == 4


def test_the_marker_replays_the_whole_trace_unless_num_prompts_is_given(trace: Path) -> None:
    assert build_spec({"trace": str(trace)}, {}).workload.num_prompts is None
    assert build_spec({"trace": str(trace), "num_prompts": 3}, {}).workload.num_prompts == 3
    assert build_spec({}, {}).workload.num_prompts == 32


def test_sharing_is_asked_for(trace: Path) -> None:
    assert asks_for_sharing(Workload(trace=str(trace)))


def test_bad_traces_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not an existing file"):
        build_prompts(Workload(trace=str(tmp_path / "missing.jsonl")), 1, POOL)
    late = write_trace(
        tmp_path / "late.jsonl",
        [
            {"timestamp": 5, "input_length": 1, "output_length": 1, "hash_ids": []},
            {"timestamp": 4, "input_length": 1, "output_length": 1, "hash_ids": []},
        ],
    )
    with pytest.raises(SpecError, match=r"late.jsonl:2: timestamp 4 is before the previous line's 5"):
        read_trace(late)
    bad = write_trace(tmp_path / "bad.jsonl", [{"timestamp": 0, "input_length": "8", "output_length": 1}])
    with pytest.raises(SpecError, match=r"bad.jsonl:1: each line must be"):
        read_trace(bad)


def test_trace_keywords_are_checked() -> None:
    with pytest.raises(SpecError, match="trace_speedup=0"):
        Workload(trace="t.jsonl", trace_speedup=0)
    with pytest.raises(SpecError, match="trace_block_size=0"):
        Workload(trace="t.jsonl", trace_block_size=0)
    with pytest.raises(SpecError, match="trace_speedup set without trace"):
        Workload(trace_speedup=2.0)
    with pytest.raises(SpecError, match=r"request_rate=4\.0 set with trace"):
        Workload(trace="t.jsonl", request_rate=4.0)
    with pytest.raises(SpecError, match=r"dataset='x\.jsonl' set with trace"):
        Workload(trace="t.jsonl", dataset="x.jsonl")
    assert Workload(trace="t.jsonl", num_prompts=None).duration_s is None  # the trace bounds the run


def test_baselines_recorded_before_the_trace_keywords_keep_their_hash() -> None:
    now = Workload().as_dict()
    before = {k: v for k, v in now.items() if not k.startswith("trace")}
    assert workload_hash(now) == workload_hash(before)
    assert workload_hash({**now, "trace": "t.jsonl"}) != workload_hash(before)


def test_the_load_generator_sends_at_the_traces_times_even_with_a_concurrency(tmp_path: Path, sim_url: str) -> None:
    from pytest_llmperf.client import loadgen
    from pytest_llmperf.spec import Endpoint

    lines = [{"timestamp": t, "input_length": 8, "output_length": 2, "hash_ids": [1]} for t in (0, 400, 800, 800)]
    path = write_trace(tmp_path / "t.jsonl", lines)
    # concurrency=2 caps the requests in flight; it does not make a closed loop of the replay.
    w = Workload(trace=str(path), num_prompts=None, trace_speedup=4.0, trace_block_size=4, concurrency=2)
    prompts = build_prompts(w, planned_prompts(w), POOL)
    run = loadgen.run(w, Endpoint(url=sim_url, model="llmperf-sim"), prompts)
    assert all(r.ok for r in run.records)
    due = [round(r.arrival_s - run.bench_start_s, 6) for r in sorted(run.records, key=lambda r: r.index)]
    assert due == [0.0, 0.1, 0.2, 0.2]
    assert all(r.start_s >= r.arrival_s for r in run.records)
    assert run.duration_s >= 0.2


def test_reports_name_the_trace_not_the_unused_lengths() -> None:
    from pytest_llmperf.report import html, terminal
    from pytest_llmperf.results import RunSummary

    w = Workload(trace="traces/conversation.jsonl", trace_speedup=2.0, concurrency=8, num_prompts=None)
    d = w.as_dict()
    # The file by its name: a report is shared, its directories are nobody else's business.
    assert html._workload_text(d) == "trace conversation.jsonl ×2 · c8"
    assert html._workload_text(d, with_load=False) == "trace conversation.jsonl ×2"
    summary: RunSummary = {}
    assert terminal._workload(d, summary) == "trace×2 c8"
    assert terminal._workload({**d, "trace_speedup": 1.0, "concurrency": None}, summary) == "trace"


def test_a_warmup_asks_for_its_own_few_lines_without_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in LINES) + "\n")
    w = Workload(trace=str(path), num_prompts=10, warmup=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(build_prompts(w, 2, POOL)) == 2
