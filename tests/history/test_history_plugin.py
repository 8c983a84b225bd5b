"""``--llmperf-history`` and ``python -m pytest_llmperf.history`` as a user meets them, with the simulator."""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pytest_llmperf.history.__main__ import main as history_main
from pytest_llmperf.history.database import HistoryDatabase
from pytest_llmperf.history.model import RunRecord, SessionRecord

PERF_TEST = """
import pytest

@pytest.mark.perf(input_len=16, output_len=16, num_prompts=8, concurrency=2, repeats=2, e2e_p50_ms=60000)
def test_decode(llmperf):
    llmperf.run()
"""


def run(pytester: pytest.Pytester, sim_url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest(f"--llmperf-endpoint={sim_url}", *args)


def stored_runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT r.test_id, s.session_id FROM llmperf_runs r JOIN llmperf_sessions s ON s.id = r.session_ref "
            "ORDER BY r.id"
        ).fetchall()


def test_a_session_appends_its_runs_to_the_default_database(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    result = run(pytester, sim_url, "--llmperf-json=r.json", "--llmperf-history")
    result.assert_outcomes(passed=1)
    db = pytester.path / ".llmperf" / "history.db"
    result.stdout.fnmatch_lines(
        ["*llmperf history: * run(s) of 1 test(s) appended to sqlite:///*history.db (session *"]
    )
    document = json.loads((pytester.path / "r.json").read_text())
    runs = document["results"][0]["runs"]
    stored = stored_runs(db)
    assert len(stored) == len(runs)
    assert {test for test, _ in stored} == {"test_decode.py::test_decode"}
    assert {session for _, session in stored} == {runs[0]["session_id"]}
    # The summary's numbers are in the database, one row per metric.
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute(
            "SELECT value FROM llmperf_run_metrics WHERE name = 'median_tpot_ms' ORDER BY run_id LIMIT 1"
        ).fetchone()
    assert value == pytest.approx(runs[0]["median_tpot_ms"])
    # A second session adds its own runs.
    run(pytester, sim_url, "--llmperf-history").assert_outcomes(passed=1)
    assert len({session for _, session in stored_runs(db)}) == 2


def test_under_xdist_the_controller_writes_each_run_once(
    pytester: pytest.Pytester, sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # this test may itself run in an xdist worker
    pytester.makepyfile(test_decode=PERF_TEST + PERF_TEST.replace("test_decode(", "test_other(").split("\n", 2)[2])
    # Every opening of the database, by whom and how, in a file beside it.
    pytester.makeconftest(
        """
        import os
        from pytest_llmperf.history import database

        ORIGINAL = database.HistoryDatabase.open.__func__

        def recording(cls, url, *, write=True):
            with open("opened.txt", "a") as f:
                f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'controller')} {write}\\n")
            return ORIGINAL(cls, url, write=write)

        def pytest_configure(config):
            database.HistoryDatabase.open = classmethod(recording)

        def pytest_unconfigure(config):
            database.HistoryDatabase.open = classmethod(ORIGINAL)
        """
    )
    db = pytester.path / "h.db"
    result = pytester.runpytest_subprocess(
        f"--llmperf-endpoint={sim_url}", "-n", "2", "--llmperf-json=r.json", f"--llmperf-history=sqlite:///{db}"
    )
    result.assert_outcomes(passed=2)
    opened = (pytester.path / "opened.txt").read_text().split("\n")
    assert "controller True" in opened
    assert all(line.endswith("False") for line in opened if line.startswith("gw")), opened
    document = json.loads((pytester.path / "r.json").read_text())
    assert len(stored_runs(db)) == sum(len(r["runs"]) for r in document["results"])
    assert len({session for _, session in stored_runs(db)}) == 1


def test_an_unreachable_database_stops_the_session_before_any_load(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:9/db"
    result = run(pytester, sim_url, f"--llmperf-history={url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stderr.str() + result.stdout.str()
    assert "--llmperf-history" in text
    assert "127.0.0.1:9" in text
    assert "hunter2" not in text
    assert "passed" not in result.stdout.str()


def test_a_bad_history_option_says_the_forms_it_takes(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--llmperf-history=mysql://db")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmperf-history='mysql://db'*expected a database URL, sqlite:///*"])


def test_a_failed_write_keeps_every_other_output_and_fails_the_session(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    pytester.makeconftest(
        """
        from pytest_llmperf.errors import HistoryError
        from pytest_llmperf.history import database

        ORIGINAL = database.HistoryDatabase.append

        def refuse(self, session, runs):
            raise HistoryError("disk full (injected)")

        def pytest_configure(config):
            database.HistoryDatabase.append = refuse

        def pytest_unconfigure(config):  # the class is shared with the process running this test
            database.HistoryDatabase.append = ORIGINAL
        """
    )
    result = run(pytester, sim_url, "--llmperf-json=r.json", "--llmperf-history=sqlite:///h.db")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*llmperf history NOT written: disk full (injected)*"])
    assert json.loads((pytester.path / "r.json").read_text())["results"]


def test_import_loads_json_documents_and_baselines_once(pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    run(pytester, sim_url, "--llmperf-json=r.json", "--llmperf-update").assert_outcomes(passed=1)
    db = pytester.path / "imported.db"
    url = f"sqlite:///{db}"
    assert history_main(["import", "--db", url, str(pytester.path / "r.json")]) == 0
    first = stored_runs(db)
    assert len(first) == 2  # repeats=2 runs of one session
    # The baselines hold the same session's runs: already stored, nothing added; twice the JSON, nothing either.
    assert history_main(["import", "--db", url, str(pytester.path / "baselines"), str(pytester.path / "r.json")]) == 0
    assert stored_runs(db) == first
    # Into a fresh database, the baselines alone give the same test id and session.
    fresh = pytester.path / "fresh.db"
    assert history_main(["import", "--db", f"sqlite:///{fresh}", str(pytester.path / "baselines")]) == 0
    assert stored_runs(fresh) == first


def test_import_of_something_else_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text('{"not": "a session"}')
    assert history_main(["import", "--db", f"sqlite:///{tmp_path / 'h.db'}", str(tmp_path / "x.json")]) == 2
    assert "not a pytest-llmperf session document" in capsys.readouterr().err


# --- the history verdict feed -----------------------------------------------------------------------------------


def test_the_verdict_borrows_the_between_session_spread_from_the_history(
    pytester: pytest.Pytester, sim_url: str
) -> None:
    pytester.makepyfile(test_decode=PERF_TEST)
    history = f"--llmperf-history=sqlite:///{pytester.path / 'h.db'}"
    run(pytester, sim_url, "--llmperf-update", history).assert_outcomes(passed=1)  # a one-session baseline
    without = run(pytester, sim_url, "--llmperf-json=before.json").stdout.str()
    assert "estimated from" not in without
    for _ in range(3):  # three more sessions in the history (same test, pair, workload and epoch)
        run(pytester, sim_url, history)
    run(pytester, sim_url, history, "--llmperf-json=r.json")
    verdict = json.loads((pytester.path / "r.json").read_text())["results"][0]["verdict"]
    assert "the between-session spread is estimated from up to 4 earlier sessions in the history" in verdict["reason"]
    tpot = next(m for m in verdict["metrics"] if m["name"] == "tpot_p50")
    assert tpot["session_source"] == "history"
    assert tpot["sessions_history"] == 4
    before = json.loads((pytester.path / "before.json").read_text())["results"][0]["verdict"]
    assert next(m for m in before["metrics"] if m["name"] == "tpot_p50")["session_source"] == "prior"


# --- changes, ack and report over a known history -----------------------------------------------------------------


def _step_history(url: str, *, sessions: int = 60, step_at: int = 40, step: float = 1.05, first: int = 0) -> None:
    """A test whose median TPOT steps up 5 % (2 % noise) at session ``step_at``; the engine changes there too.
    Sessions ``first`` to ``sessions - 1`` (the same values whenever written)."""
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    with HistoryDatabase.open(url) as database:
        for i in range(first, sessions):
            rng = random.Random(i)
            at = start + timedelta(days=i)
            version = "0.11.0" if i < step_at else "0.12.0"
            tpot = 10.0 * (step if i >= step_at else 1.0) * math.exp(rng.gauss(0, 0.02))
            session = SessionRecord(f"s{i:03d}", at, at + timedelta(minutes=5), "h200x8-fp8", "0.1.0", f"c{i:03d}")
            record = RunRecord(
                session_id=session.session_id,
                test_id="t.py::test_decode",
                run_index=0,
                side="",
                started_at=at,
                ended_at=at + timedelta(minutes=1),
                pair="h200x8-fp8",
                hardware="h200x8",
                precision="fp8",
                model="m",
                workload_hash="w",
                workload={"concurrency": 8},
                engine="vllm",
                engine_version=version,
                server_command_hash=None,
                plugin_version="0.1.0",
                epoch_key=version,
                compat_mode="vllm",
                valid=True,
                outcome="passed",
                verdict_status="PASS",
                metrics={"median_tpot_ms": tpot, "output_throughput": 1000 / tpot},
            )
            database.append(session, [record])


def test_changes_finds_the_step_and_gates_until_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _step_history(url)
    assert history_main(["changes", "--db", url]) == 1
    out = capsys.readouterr()
    assert "t.py::test_decode" in out.out
    assert "median_tpot_ms" in out.out or "median TPOT" in out.out
    assert re.search(r"2026-10-1[0-2] 00:00 UTC: session s0(39|40|41)", out.out)  # the step at session 40 ± 1
    assert "engine 0.12.0" in out.out
    assert "unacknowledged change(s) in a gating metric for the worse" in out.err
    assert history_main(["changes", "--db", url, "--fail-on", "never"]) == 0
    capsys.readouterr()
    assert history_main(["ack", "--db", url, "--reason", "engine upgrade to 0.12.0", "--by", "ci"]) == 0
    assert "acknowledged 2 change(s)" in capsys.readouterr().out
    assert history_main(["changes", "--db", url]) == 0
    assert "acknowledged by ci on" in capsys.readouterr().out


def test_a_step_that_shows_after_the_acknowledgement_still_fails(tmp_path: Path) -> None:
    # 40 flat sessions and a +10 % step at 40: one night after the step nothing shows (3 sessions a side are
    # needed), someone acknowledges "everything so far"; once the step shows, it is new and fails the gate.
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _step_history(url, sessions=41, step=1.10)
    assert history_main(["changes", "--db", url]) == 0
    assert history_main(["ack", "--db", url, "--reason", "nothing to see"]) == 0
    _step_history(url, sessions=49, step=1.10, first=41)
    assert history_main(["changes", "--db", url]) == 1


def test_read_commands_refuse_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert history_main(["changes", "--db", str(tmp_path / "typo.db")]) == 2
    assert "no history database" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_changes_on_a_flat_history_finds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _step_history(url, step=1.0)
    assert history_main(["changes", "--db", url]) == 0
    assert ": 0 change(s)" in capsys.readouterr().out


def test_report_writes_a_self_contained_trend_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _step_history(url)
    out = tmp_path / "trend.html"
    assert history_main(["report", str(out), "--db", url]) == 0
    page = out.read_text()
    assert "t.py::test_decode" in page
    assert "<svg" in page
    assert "<script" not in page
    assert "http://" not in page.replace("http://www.w3.org/", "")  # SVG namespaces only: nothing fetched
    assert "2 series over 60 session(s): 2 change(s)" in capsys.readouterr().out  # TPOT up, throughput down


def test_a_bad_date_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        history_main(["changes", "--db", f"sqlite:///{tmp_path / 'h.db'}", "--since", "last week"])
    assert exited.value.code == 2
    assert "'last week' is not a date" in capsys.readouterr().err


def test_import_gathers_a_session_spread_over_many_baseline_files(tmp_path: Path) -> None:
    # The committed baselines of examples/: one --llmperf-update session wrote many files (a file per module).
    from pytest_llmperf.judge.baseline import read_entries

    root = Path(__file__).parents[2] / "baselines"
    entries = [entry for path in sorted(root.rglob("*.yaml")) for entry in read_entries(path)]
    dated = sum(
        1
        for entry in entries
        for runs in (entry.runs, *(e["runs"] for e in entry.previous_epochs))
        for run in runs
        if run.get("recorded_at")
    )
    sessions = {str(run.get("session")) for entry in entries for run in entry.runs}
    db = tmp_path / "h.db"
    assert history_main(["import", "--db", f"sqlite:///{db}", str(root)]) == 0
    stored = stored_runs(db)
    assert len(stored) == dated
    assert sessions <= {session for _, session in stored}
