"""What a session adds to the history, built from result documents and baseline entries (known answers)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.history import provenance, records
from pytest_llmperf.history.model import CiRun
from pytest_llmperf.judge.baseline import BaselineEntry, Fingerprint, workload_hash

WORKLOAD = {"api": "completions", "input_len": 16, "output_len": 8, "concurrency": 4, "compat": "vllm"}
FINGERPRINT = {
    "hardware": "h200x8",
    "precision": "fp8",
    "model": "m",
    "workload_hash": "w1",
    "engine": "vllm",
    "engine_version": "0.11.0",
    "server_command_hash": "c1",
    "plugin_version": "0.1.0",
    "git_commit": "abc",
    "date": "2026-10-01",
}


def summary(tpot: float, start: float, **extra: Any) -> dict[str, Any]:
    return {
        "compat_mode": "vllm",
        "median_tpot_ms": tpot,
        "output_throughput": 1000 / tpot,
        "completed": 16,
        "client_bound": False,  # a bool is no metric
        "errors": {},  # nor a mapping
        "mean_ttft_ms": None,  # nor a missing value
        "p99_itl_ms": float("nan"),  # nor a non-finite one
        "started_at_unix": start,  # nor bookkeeping
        "ended_at_unix": start + 2,
        **extra,
    }


def document(**extra: Any) -> dict[str, Any]:
    return {
        "nodeid": "t.py::test_a",
        "baseline_key": "t.py::test_a",
        "outcome": "passed",
        "workload": WORKLOAD,
        "endpoint": {"url": "http://127.0.0.1:1", "model": "m", "engine": "vllm", "engine_version": "0.11.0"},
        "fingerprint": FINGERPRINT,
        "runs": [summary(10.0, 1_790_000_000), summary(11.0, 1_790_000_010, invalid_reasons=["cached"])],
        "verdict": {"status": "PASS", "reason": "ok"},
        "slos": [{"name": "tpot_p50_ms", "passed": True}],
        **extra,
    }


def test_a_document_gives_one_record_per_run_with_its_numbers_only() -> None:
    runs = records.runs_of_document(document(), session_id="s1", pair="h200x8-fp8")  # type: ignore[arg-type]
    assert [r.run_index for r in runs] == [0, 1]
    first, second = runs
    assert first.metrics == {"median_tpot_ms": 10.0, "output_throughput": 100.0, "completed": 16.0}
    assert first.started_at == datetime.fromtimestamp(1_790_000_000, tz=timezone.utc)
    assert first.valid
    assert not second.valid
    assert (first.test_id, first.pair, first.hardware, first.precision) == (
        "t.py::test_a",
        "h200x8-fp8",
        "h200x8",
        "fp8",
    )
    assert (first.engine, first.engine_version, first.workload_hash) == ("vllm", "0.11.0", "w1")
    assert (first.verdict_status, first.outcome) == ("PASS", "passed")
    assert (first.slos, len(second.slos)) == ((), 1)  # the document keeps the last run's SLO checks
    assert first.epoch_key == records.epoch_key(FINGERPRINT)


def test_the_epoch_key_follows_the_epoch_keys_alone() -> None:
    assert records.epoch_key({**FINGERPRINT, "git_commit": "other", "date": "2027-01-01"}) == records.epoch_key(
        FINGERPRINT
    )
    for key in ("engine_version", "server_command_hash", "plugin_version"):
        assert records.epoch_key({**FINGERPRINT, key: "changed"}) != records.epoch_key(FINGERPRINT)


def test_a_further_run_call_is_its_own_test_and_an_old_document_without_fingerprint_still_maps() -> None:
    old = document(baseline_key="t.py::test_a#1")
    del old["fingerprint"]
    (run, _) = records.runs_of_document(old, session_id="s", pair="cpu_x-default")  # type: ignore[arg-type]
    assert run.test_id == "t.py::test_a#1"
    assert run.workload_hash == workload_hash(WORKLOAD)
    assert (run.hardware, run.precision, run.model, run.engine) == ("cpu_x", "default", "m", "vllm")


def test_ab_documents_give_both_sides_each_with_its_own_fingerprint() -> None:
    a_fingerprint = {**FINGERPRINT, "engine_version": "0.10.0"}
    ab = document(
        ab={
            "runs_a": [summary(9.0, 1.0)],
            "runs_b": [summary(10.0, 2.0), summary(10.5, 3.0)],
            "fingerprint_a": a_fingerprint,
            "a": {"engine": "vllm", "engine_version": "0.10.0"},
        }
    )
    runs = records.runs_of_document(ab, session_id="s", pair="p-q")  # type: ignore[arg-type]
    assert [(r.side, r.run_index) for r in runs] == [("B", 0), ("B", 1), ("A", 0)]
    assert [len(r.slos) for r in runs] == [0, 1, 0]
    assert [r.engine_version for r in runs] == ["0.11.0", "0.11.0", "0.10.0"]
    assert runs[2].epoch_key == records.epoch_key(a_fingerprint) != runs[0].epoch_key
    # The verdict judged B against A: A's rows do not carry it.
    assert [r.verdict_status for r in runs] == ["PASS", "PASS", None]
    assert runs[2].verdict is None


def test_the_session_spans_its_runs_and_names_its_ci_run() -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "42", "GITHUB_RUN_ATTEMPT": "2"}
    env |= {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r", "GITHUB_REF_NAME": "main"}
    session, runs = records.session_of_documents(
        [document()],  # type: ignore[list-item]
        session_id="s1",
        pair="h200x8-fp8",
        plugin_version="0.1.0",
        git_commit="abc",
        git_branch=provenance.git_branch(env, None),
        ci=provenance.ci_run(env),
        fallback_time=datetime(2000, 1, 1, tzinfo=timezone.utc),
    )
    assert session.started_at == datetime.fromtimestamp(1_790_000_000, tz=timezone.utc)
    assert session.ended_at == datetime.fromtimestamp(1_790_000_012, tz=timezone.utc)
    assert session.git_branch == "main"
    assert session.ci == CiRun("github", "42.2", "https://github.com/o/r/actions/runs/42")
    assert len(runs) == 2


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GITLAB_CI": "true", "CI_JOB_ID": "7", "CI_JOB_URL": "https://u:p@gitlab.example/j/7"}, ("gitlab", "7")),
        (
            {"BUILDKITE": "true", "BUILDKITE_BUILD_ID": "b-1", "BUILDKITE_BUILD_URL": "https://bk/1"},
            ("buildkite", "b-1"),
        ),
        (
            {"JENKINS_URL": "https://j", "BUILD_TAG": "jenkins-x-3", "BUILD_URL": "https://j/3"},
            ("jenkins", "jenkins-x-3"),
        ),
        ({"CI": "true"}, None),
        ({}, None),
    ],
)
def test_ci_runs_of_each_provider_and_never_a_credential(env: dict[str, str], expected: tuple[str, str] | None) -> None:
    found = provenance.ci_run(env)
    assert (None if found is None else (found.provider, found.run_id)) == expected
    if found is not None and found.url:
        assert "@" not in found.url


def test_the_branch_comes_from_ci_variables_then_git(tmp_path: Path) -> None:
    assert provenance.git_branch({"GIT_BRANCH": "origin/release"}, None) == "release"
    assert provenance.git_branch({"CI_COMMIT_REF_NAME": "feature"}, None) == "feature"
    assert provenance.git_branch({}, tmp_path) is None  # not a git checkout


def test_times_parse_as_utc() -> None:
    assert records.parse_time("2026-10-01") == datetime(2026, 10, 1, tzinfo=timezone.utc)
    assert records.parse_time("2026-10-01T12:00:00Z") == datetime(2026, 10, 1, 12, tzinfo=timezone.utc)
    assert records.parse_time("2026-10-01T14:00:00+02:00") == datetime(2026, 10, 1, 12, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="yesterday"):
        records.parse_time("yesterday")


def test_a_baseline_entry_gives_its_sessions_dated_by_their_runs_its_earlier_epochs_too() -> None:
    old_fp = {**FINGERPRINT, "engine_version": "0.10.0"}
    entry = BaselineEntry(
        path=Path("baselines/h200x8-fp8/t.yaml"),
        test_name="test_a",
        schema_version=2,
        workload_hash="w1",
        fingerprint=Fingerprint.from_dict(FINGERPRINT),
        runs=(
            {"session": "s2", "recorded_at": "2026-10-02T10:00:00+00:00", "median_tpot_ms": 10.0, "n": 16},
            {"session": "s2", "recorded_at": "2026-10-02T10:01:00+00:00", "median_tpot_ms": 10.2, "n": 16},
            {"session": "s3", "recorded_at": "not a date", "median_tpot_ms": 10.2},
        ),
        workload=dict(WORKLOAD),
        epoch=2,
        previous_epochs=(
            {
                "epoch": 1,
                "ended_at": "2026-10-02",
                "reason": "engine_version",
                "fingerprint": old_fp,  # type: ignore[typeddict-item]
                "runs": [{"session": "s1", "recorded_at": "2026-10-01T09:00:00Z", "median_tpot_ms": 12.0}],
            },
        ),
    )
    found = records.sessions_of_entry(entry, test_id="t.py::test_a", pair="h200x8-fp8")
    by_id = {session.session_id: (session, runs) for session, runs in found}
    assert sorted(by_id) == ["s1", "s2"]  # s3 has no date: it cannot be placed in a series
    s1, (old_run,) = by_id["s1"]
    assert s1.started_at == datetime(2026, 10, 1, 9, tzinfo=timezone.utc)
    assert (old_run.engine_version, old_run.epoch_key) == ("0.10.0", records.epoch_key(old_fp))
    s2, new_runs = by_id["s2"]
    assert (s2.started_at, s2.ended_at) == (
        datetime(2026, 10, 2, 10, tzinfo=timezone.utc),
        datetime(2026, 10, 2, 10, 1, tzinfo=timezone.utc),
    )
    assert (s2.source, s2.git_commit) == ("import:baseline", "abc")
    assert [r.metrics["median_tpot_ms"] for r in new_runs] == [10.0, 10.2]
    assert all(r.valid for r in new_runs)
    assert all(r.verdict is None for r in new_runs)
    assert all(r.outcome is None for r in new_runs)
