"""The run-state object of one pytest session, kept in ``config.stash`` and registered as a plugin.

Workers attach each perf test's results to its report as builtins (``report.llmperf``); the controller
collects them from ``pytest_runtest_logreport``, so the same code path works with and without xdist.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.options import Settings

RESULTS_KEY = pytest.StashKey[list[dict[str, Any]]]()


class LLMPerfSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.results: list[dict[str, Any]] = []
        self.endpoint_info: dict[str, Any] | None = None
        # Prompt calibration per (endpoint, api, dataset): one /tokenize round per session, not per test.
        self.prompt_contexts: dict[tuple[str, str, str, str], Any] = {}

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.when == "call" and RESULTS_KEY in item.stash:
            report.llmperf = item.stash[RESULTS_KEY]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        results = getattr(report, "llmperf", None)
        if report.when == "call" and results:
            for result in results:
                self.results.append({"nodeid": report.nodeid, "outcome": report.outcome, **result})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.results:
            return
        tr = terminalreporter
        tr.write_sep("=", "llmperf results")
        header = f"{'test':<48} {'ok/fail':>8} {'TTFT p50':>9} {'TPOT p50':>9} {'E2E p50':>9} {'out tok/s':>10}"
        tr.write_line(header)
        for r in self.results:
            s = r.get("summary", {})
            tr.write_line(
                f"{_short(r['nodeid'], 48):<48} {_ok_fail(s):>8} {_ms(s.get('median_ttft_ms')):>9} "
                f"{_ms(s.get('median_tpot_ms')):>9} {_ms(s.get('median_e2el_ms')):>9} "
                f"{_num(s.get('output_throughput')):>10}"
            )
            client = s.get("client") or {}
            if client.get("client_bound"):
                tr.write_line(f"  warning: client-bound run: {'; '.join(client.get('reasons', []))}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or self.settings.json_path is None:
            return
        document = {"endpoint": self.endpoint_info, "results": self.results}
        write_json_atomic(self.settings.json_path, document)


def write_json_atomic(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(jsonable(document), handle, indent=1, allow_nan=False, default=str)
    os.replace(tmp, path)


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf"), since strict JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _ok_fail(summary: dict[str, Any]) -> str:
    return f"{summary.get('completed', 0)}/{summary.get('failed', 0)}"


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}ms"


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"
