"""Unit tests of pytest_llmperf.judge.baseline: round trips, retention, refusals, corrupt files, concurrent writers."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.judge.baseline import (
    SCHEMA_VERSION,
    BaselineStore,
    Fingerprint,
    compare_fingerprint,
    reduce_summary,
    workload_hash,
)
from pytest_llmperf.judge.verdict import run_keys

HW, PREC, MODULE = "h200x8", "fp8", "tests/perf/test_latency.py"
WORKLOAD = {"input_len": 128, "output_len": 64, "concurrency": 4, "request_rate": float("inf")}


def fingerprint(workload: dict[str, Any] = WORKLOAD, **changes: Any) -> Fingerprint:
    base: dict[str, Any] = {
        "hardware": HW,
        "precision": PREC,
        "model": "tiny-llama",
        "workload_hash": workload_hash(workload),
        "engine": "vllm",
        "engine_version": "0.9.1",
        "server_command_hash": "abc",
        "plugin_version": "0.1.0",
        "git_commit": "deadbeef",
        "date": "2025-06-01",
    }
    base.update(changes)
    return Fingerprint(**base)


def summary(ttft: float = 12.3456789, **extra: Any) -> dict[str, Any]:
    """A run summary with the kinds of keys metrics.summarize produces, including ones a baseline drops."""
    return {
        "compat_mode": "vllm",
        "completed": 49,
        "failed": 1,
        "error_rate": 0.02,
        "duration": 10.123456789,
        "median_ttft_ms": ttft,
        "p99_ttft_ms": 40.0,
        "median_tpot_ms": 5.5,
        "median_e2el_ms": 400.0,
        "p99.9_itl_ms": 9.0,
        "output_throughput": 1234.56789,
        "interactivity": None,
        "errors": {"http_500": 1},
        "validity": {"warnings": []},
        "notes": ["kept out of baselines"],
        "per_token_itl_source": "continuous_usage",
        **extra,
    }


@pytest.fixture
def store(tmp_path: Path) -> BaselineStore:
    return BaselineStore(tmp_path / "baselines")


def path_of(store: BaselineStore) -> Path:
    return store.path_for(HW, PREC, MODULE)


def test_path_layout(store: BaselineStore) -> None:
    assert path_of(store) == store.root / "h200x8-fp8" / "tests" / "perf" / "test_latency.yaml"
    for bad_module in ("../outside.py", "/abs/test_x.py"):
        with pytest.raises(BaselineError, match="relative"):
            store.path_for(HW, PREC, bad_module)
    with pytest.raises(BaselineError, match="hardware"):
        store.path_for("h200/x8", PREC, MODULE)


def test_round_trip(store: BaselineStore) -> None:
    change = store.update(HW, PREC, MODULE, "test_sweep[8]", fingerprint=fingerprint(), runs=[summary(), summary(13.0)])
    assert "new entry with 2 run(s)" in change
    assert "test_latency.yaml::test_sweep[8]" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_sweep[8]")
    assert entry is not None
    assert entry.k == 2
    assert entry.schema_version == SCHEMA_VERSION
    assert entry.fingerprint == fingerprint()
    assert entry.workload_hash == workload_hash(WORKLOAD)
    run = entry.runs[0]
    assert run["median_ttft_ms"] == 12.3457  # 6 significant digits
    assert run["n"] == 50
    assert run["completed"] == 49
    assert run["p99.9_itl_ms"] == 9.0
    assert run["interactivity"] is None
    assert "notes" not in run
    assert "errors" not in run
    assert "validity" not in run
    assert isinstance(run["run_id"], str)
    assert entry.runs[1]["median_ttft_ms"] == 13.0
    assert store.load_entry(HW, PREC, MODULE, "test_other") is None
    assert store.load_entry(HW, "bf16", MODULE, "test_sweep[8]") is None
    # Sorted keys, header comment, and no lock or temp file left among the baselines.
    text = path_of(store).read_text()
    assert text.startswith("# pytest-llmperf baselines")
    assert text.rstrip().endswith(f"schema_version: {SCHEMA_VERSION}")
    assert sorted(p.name for p in path_of(store).parent.iterdir()) == ["test_latency.yaml"]


def test_workload_recorded_for_review(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()], workload=WORKLOAD)
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert entry.workload == WORKLOAD
    with pytest.raises(ValueError, match="workload_hash"):
        store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()], workload={"x": 1})


def test_keep_newest_k(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, keep=3)
    for i in range(5):
        change = store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(float(i + 1))])
    assert "1 oldest dropped" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert [r["median_ttft_ms"] for r in entry.runs] == [3.0, 4.0, 5.0]
    many = store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(9.0)] * 4)
    assert "appended 4 run(s), 3 kept from 1 session(s) (4 oldest dropped" in many


def test_entries_of_one_module_share_a_file(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    store.update(HW, PREC, MODULE, "test_b[2-x]", fingerprint=fingerprint(), runs=[summary()])
    data = yaml.safe_load(path_of(store).read_text())
    assert sorted(data["entries"]) == ["test_a", "test_b[2-x]"]


def test_hard_key_change_is_refused_unless_forced(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(1.0), summary(2.0)])
    before = path_of(store).read_bytes()
    with pytest.raises(BaselineError) as info:
        store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(model="other"), runs=[summary(3.0)])
    message = str(info.value)
    assert "refusing to update across a hard-key change" in message
    assert "model: baseline 'tiny-llama', now 'other'" in message
    assert "--llmperf-update=force" in message
    assert str(path_of(store)) in message
    assert "'test_a'" in message
    assert path_of(store).read_bytes() == before

    change = store.update(
        HW, PREC, MODULE, "test_a", fingerprint=fingerprint(model="other"), runs=[summary(3.0)], force=True
    )
    assert "hard keys changed, 2 old run(s) replaced (forced)" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert [r["median_ttft_ms"] for r in entry.runs] == [3.0]
    assert entry.fingerprint.model == "other"


def test_soft_key_change_appends_and_is_reported(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    change = store.update(
        HW,
        PREC,
        MODULE,
        "test_a",
        fingerprint=fingerprint(git_commit="cafe", date="2025-07-01"),
        runs=[summary()],
    )
    assert "appended 1 run(s), 2 kept" in change
    assert "git_commit: baseline 'deadbeef', now 'cafe'" in change
    assert "date" not in change  # the date always differs; it is not a difference in the setup
    assert "epoch" not in change


@pytest.mark.parametrize(
    ("key", "value"), [("engine_version", "0.10.0"), ("server_command_hash", "def"), ("plugin_version", "0.2.0")]
)
def test_a_changed_engine_command_or_plugin_starts_an_epoch(store: BaselineStore, key: str, value: str) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(8.8), summary(8.9)])
    change = store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(**{key: value}), runs=[summary(3.0)])
    assert f"new epoch 2 ({key}: " in change
    assert "epoch 1's 2 run(s) kept under previous_epochs" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert entry.epoch == 2
    assert [r["median_ttft_ms"] for r in entry.runs] == [3.0]  # never 8.8 and 3.0 in one pool
    (closed,) = entry.previous_epochs
    assert closed["epoch"] == 1
    assert [r["median_ttft_ms"] for r in closed["runs"]] == [8.8, 8.9]
    assert key in closed["reason"]


def test_runs_that_differ_by_the_verdict_start_an_epoch(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(10.0)])
    change = store.update(
        HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(20.0)], differs="REGRESSION: TTFT 2.0×"
    )
    assert "new epoch 2 (the new runs differ from the stored ones (REGRESSION: TTFT 2.0×))" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert [r["median_ttft_ms"] for r in entry.runs] == [20.0]


def test_at_most_three_previous_epochs_are_kept(store: BaselineStore) -> None:
    for version in range(6):
        store.update(
            HW, PREC, MODULE, "test_a", fingerprint=fingerprint(engine_version=f"v{version}"), runs=[summary()]
        )
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert entry.epoch == 6
    assert [e["epoch"] for e in entry.previous_epochs] == [3, 4, 5]


def test_the_runs_of_the_newest_sessions_are_kept(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, keep_sessions=3)
    for day in range(5):
        runs = [summary(float(day), session_id=f"day{day}") for _ in range(2)]
        change = store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=runs)
    assert "appended 2 run(s), 6 kept from 3 session(s) (2 oldest dropped" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert [r["session"] for r in entry.runs] == ["day2", "day2", "day3", "day3", "day4", "day4"]
    assert entry.sessions == 3


def test_a_version_one_file_is_read_and_rewritten_as_version_two(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(1.0)])
    path = path_of(store)
    data = yaml.safe_load(path.read_text())
    data["schema_version"] = 1
    entry = data["entries"]["test_a"]
    entry["schema_version"] = 1
    del entry["epoch"], entry["previous_epochs"]
    path.write_text(yaml.safe_dump(data))
    old = store.load_entry(HW, PREC, MODULE, "test_a")
    assert old is not None
    assert (old.epoch, old.sessions, old.previous_epochs) == (1, 1, ())
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(2.0, session_id="new")])
    rewritten = yaml.safe_load(path.read_text())
    assert rewritten["schema_version"] == SCHEMA_VERSION == 2
    again = store.load_entry(HW, PREC, MODULE, "test_a")
    assert again is not None
    assert again.sessions == 2  # the old runs (no session) and the new session


def test_the_command_hash_leaves_the_port_out() -> None:
    from pytest_llmperf.judge.baseline import command_hash

    one = command_hash(["llama-server", "--port", "41234", "--host", "127.0.0.1"], 41234)
    other = command_hash(["llama-server", "--port", "39001", "--host", "127.0.0.1"], 39001)
    assert one == other
    assert command_hash(["srv", "--url", "http://127.0.0.1:41234/v1"], 41234) == command_hash(
        ["srv", "--url", "http://127.0.0.1:5555/v1"], 5555
    )
    assert command_hash(["srv", "--threads", "4", "--port", "9"], 9) != command_hash(
        ["srv", "--threads", "8", "--port", "9"], 9
    )
    assert command_hash(["srv", "--batch", "141234"], 41234) != command_hash(["srv", "--batch", "1{port}"], None)


def test_compare_fingerprint(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()], workload=WORKLOAD)
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert compare_fingerprint(entry, fingerprint()) == (True, [], [])
    ok, hard, soft = store.compare_fingerprint(entry, fingerprint(git_commit="cafe", engine=None))
    assert ok
    assert hard == []
    assert soft == ["engine: baseline 'vllm', now unknown", "git_commit: baseline 'deadbeef', now 'cafe'"]
    changed = {**WORKLOAD, "concurrency": 8}
    ok, hard, _ = compare_fingerprint(entry, fingerprint(changed), workload=changed)
    assert not ok
    assert hard == ["workload changed (concurrency: 4 -> 8)"]
    ok, hard, _ = compare_fingerprint(entry, fingerprint(precision="bf16"))
    assert hard == ["precision: baseline 'fp8', now 'bf16'"]


def test_raw_sidecar_round_trip_and_pruning(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path, keep=2)
    raw: dict[str, list[Any]] = {
        "ttfts": [0.1, 0.2, None],
        "output_lens": [3, 4, 5],
        "itls": [[0.1], [0.2], []],
        "errors": ["", "", "x"],
    }
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()], raw=[raw])
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert entry.raw_sidecar is not None
    assert entry.raw_sidecar.endswith(".npz")
    arrays = store.load_raw(entry)
    (run_id,) = arrays
    assert arrays[run_id]["output_lens"] == [3, 4, 5]
    assert arrays[run_id]["ttfts"][:2] == [0.1, 0.2]
    assert set(arrays[run_id]) == {"ttfts", "output_lens"}  # ragged and text fields are not stored
    # Two more runs push the first one out; its arrays go with it.
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()] * 2, raw=[raw, raw])
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    arrays = store.load_raw(entry)
    assert run_id not in arrays
    assert set(arrays) == {str(r["run_id"]) for r in entry.runs}


def test_reduce_summary_rounds_and_filters() -> None:
    reduced = reduce_summary(summary(duration=float("nan")))
    assert reduced["duration"] is None
    assert reduced["output_throughput"] == 1234.57
    assert reduced["n"] == 50
    assert "per_token_itl_source" not in reduced


Edit = Callable[[str], str]
GOOD_ENTRY_EDITS: dict[str, Edit] = {
    "bad syntax": lambda text: text.replace("entries:", "entries: [", 1),
    "truncated": lambda text: text[: len(text) // 2],
    "runs not a list": lambda text: _edit(text, lambda e: e.__setitem__("runs", "many")),
    "missing fingerprint": lambda text: _edit(text, lambda e: e.pop("fingerprint")),
    "value of wrong type": lambda text: _edit(text, lambda e: e["runs"][0].__setitem__("median_ttft_ms", "fast")),
    "negative value": lambda text: _edit(text, lambda e: e["runs"][0].__setitem__("median_ttft_ms", -1.0)),
    "unknown run key": lambda text: _edit(text, lambda e: e["runs"][0].__setitem__("median_ttft", 1.0)),
    "fingerprint hard key missing": lambda text: _edit(text, lambda e: e["fingerprint"].pop("model")),
    "sidecar path escapes": lambda text: _edit(text, lambda e: e.__setitem__("raw_sidecar", "../../x.npz")),
    "top level is a list": lambda text: "- 1\n- 2\n",
    "schema_version missing": lambda text: text.replace(f"\nschema_version: {SCHEMA_VERSION}\n", "\n"),
}


def _edit(text: str, change: Callable[[dict[str, Any]], object]) -> str:
    data = yaml.safe_load(text)
    change(data["entries"]["test_a"])
    return yaml.safe_dump(data, sort_keys=True)


@pytest.mark.parametrize("case", sorted(GOOD_ENTRY_EDITS))
def test_corrupt_files_name_file_and_entry_and_stay_untouched(store: BaselineStore, case: str) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    path = path_of(store)
    path.write_text(GOOD_ENTRY_EDITS[case](path.read_text()))
    before = path.read_bytes()
    with pytest.raises(BaselineError) as info:
        store.load_entry(HW, PREC, MODULE, "test_a")
    message = str(info.value)
    assert str(path) in message
    assert "'test_a'" in message
    assert "--llmperf-update" in message
    assert path.read_bytes() == before


@pytest.mark.parametrize("case", ["bad syntax", "top level is a list", "schema_version missing"])
def test_update_never_overwrites_an_unparseable_file(store: BaselineStore, case: str) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    path = path_of(store)
    path.write_text(GOOD_ENTRY_EDITS[case](path.read_text()))
    before = path.read_bytes()
    for forced in (False, True):
        with pytest.raises(BaselineError, match=r"test_latency\.yaml"):
            store.update(HW, PREC, MODULE, "test_b", fingerprint=fingerprint(), runs=[summary()], force=forced)
    assert path.read_bytes() == before


def test_update_replaces_an_unreadable_entry_and_keeps_the_others(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    store.update(HW, PREC, MODULE, "test_b", fingerprint=fingerprint(), runs=[summary(2.0)])
    path = path_of(store)
    path.write_text(GOOD_ENTRY_EDITS["value of wrong type"](path.read_text()))
    # Reading the other entry still works; the broken one names itself.
    assert store.load_entry(HW, PREC, MODULE, "test_b") is not None
    change = store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary(5.0)])
    assert "replaced an unreadable entry" in change
    assert "median_ttft_ms" in change
    entry = store.load_entry(HW, PREC, MODULE, "test_a")
    assert entry is not None
    assert [r["median_ttft_ms"] for r in entry.runs] == [5.0]
    other = store.load_entry(HW, PREC, MODULE, "test_b")
    assert other is not None
    assert other.runs[0]["median_ttft_ms"] == 2.0


def test_other_schema_version(store: BaselineStore) -> None:
    store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    path = path_of(store)
    path.write_text(path.read_text().replace(f"\nschema_version: {SCHEMA_VERSION}\n", "\nschema_version: 99\n"))
    before = path.read_bytes()
    with pytest.raises(BaselineError) as info:
        store.load_entry(HW, PREC, MODULE, "test_a")
    message = str(info.value)
    assert "schema_version is 99" in message
    assert "reads versions 1, 2" in message
    assert "migrate" in message
    assert "re-record with --llmperf-update" in message
    with pytest.raises(BaselineError, match="force"):
        store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()])
    assert path.read_bytes() == before
    change = store.update(HW, PREC, MODULE, "test_a", fingerprint=fingerprint(), runs=[summary()], force=True)
    assert "replaced a file of schema version 99" in change
    assert store.load_entry(HW, PREC, MODULE, "test_a") is not None


def _concurrent_writer(root: str, worker: int, rounds: int) -> None:
    store = BaselineStore(root, keep=1000)
    for i in range(rounds):
        runs = [summary(float(worker * 100 + i))]
        store.update(HW, PREC, MODULE, f"test_w{worker}", fingerprint=fingerprint(), runs=runs)
        store.update(HW, PREC, MODULE, "test_shared", fingerprint=fingerprint(), runs=runs)


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    workers, rounds = 4, 6
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_concurrent_writer, args=(str(tmp_path), w, rounds)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = BaselineStore(tmp_path)
    for w in range(workers):
        entry = store.load_entry(HW, PREC, MODULE, f"test_w{w}")
        assert entry is not None
        assert [r["median_ttft_ms"] for r in entry.runs] == [float(w * 100 + i) for i in range(rounds)]
    shared = store.load_entry(HW, PREC, MODULE, "test_shared")
    assert shared is not None
    assert sorted(r["median_ttft_ms"] for r in shared.runs) == sorted(
        float(w * 100 + i) for w in range(workers) for i in range(rounds)
    )
    assert len({r["run_id"] for r in shared.runs}) == workers * rounds


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_reduced_runs_keep_every_key_the_verdicts_read(compat: str) -> None:
    keys = run_keys(compat)
    full = {key: 1.5 for key in keys} | {"completed": 10, "failed": 0, "compat_mode": compat}
    reduced = reduce_summary(full)
    assert set(keys) <= set(reduced)
    assert reduced["compat_mode"] == compat
