"""The session's baselines: the store of the pair ``<hardware>-<precision>``, each test's view of its entry, and
the runs ``--llmperf-update`` records.

Recording happens in two steps, because xdist workers run the tests but only the controller writes: a test's
result carries what it would record (:meth:`BaselineBook.update_fields`), and at the end the controller writes
every test's runs at once (:meth:`BaselineBook.apply_updates`). A hard-key change is refused in the first step,
when the test looks its entry up, before any load is spent (:meth:`BaselineBook.baseline_view`); the store checks
again as it writes, in case the entry changed meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.options import Settings
from pytest_llmperf.status import IMPROVEMENT, REGRESSION

if TYPE_CHECKING:
    from pytest_llmperf.harness.judging import BaselineView, Judgement
    from pytest_llmperf.harness.runner import Result
    from pytest_llmperf.harness.server_manager import ServerManager, Side
    from pytest_llmperf.judge.baseline import BaselineStore, Fingerprint
    from pytest_llmperf.judge.verdict import Verdict
    from pytest_llmperf.results import BaselineUpdate, RequestDetail, RunDocument
    from pytest_llmperf.spec import Endpoint, Workload


FORCE_HINT = "--llmperf-update=force"  # how messages say to replace runs across a hard-key change


class BaselineBook:
    def __init__(self, config: pytest.Config, settings: Settings, servers: ServerManager) -> None:
        self._config = config
        self._settings = settings
        self._servers = servers  # the spawned server's command is part of the fingerprint
        self._hardware_id: str | None = None
        self._store: BaselineStore | None = None
        self._git_commit: str | bool | None = False  # False: not asked yet
        self.update_lines: list[str] = []  # what apply_updates wrote (or could not), for the terminal summary

    @property
    def hardware_id(self) -> str:
        if self._hardware_id is None:
            from pytest_llmperf.harness.server_manager import server_cores
            from pytest_llmperf.servers.hardware import detect

            self._hardware_id = self._settings.hardware or detect(server_cores(self._settings)).id
        return self._hardware_id

    @property
    def precision(self) -> str:
        return self._settings.precision or "default"

    @property
    def pair(self) -> str:
        return f"{self.hardware_id}-{self.precision}"

    @property
    def store(self) -> BaselineStore:
        if self._store is None:
            from pytest_llmperf.judge.baseline import BaselineStore

            self._store = BaselineStore(self._settings.baselines, force_hint=FORCE_HINT)
        return self._store

    @property
    def git_commit(self) -> str | None:
        if self._git_commit is False:
            import subprocess

            try:
                done = subprocess.run(
                    ["git", "rev-parse", "HEAD"], cwd=self._config.rootpath, capture_output=True, text=True, timeout=10
                )
                self._git_commit = done.stdout.strip() if done.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                self._git_commit = None
        return self._git_commit if isinstance(self._git_commit, str) else None

    def fingerprint(self, workload: Workload, endpoint: Endpoint, side: Side = "A") -> Fingerprint:
        import datetime

        from pytest_llmperf import __version__
        from pytest_llmperf.judge.baseline import Fingerprint, command_hash, workload_hash

        argv, port = self._servers.spawned_command(side) or (None, None)
        return Fingerprint(
            hardware=self.hardware_id,
            precision=self.precision,
            model=endpoint.model,
            workload_hash=workload_hash(workload.as_dict()),
            engine=endpoint.engine,
            engine_version=endpoint.engine_version,
            server_command_hash=command_hash(argv, port) if argv else None,
            plugin_version=__version__,
            git_commit=self.git_commit,
            date=datetime.date.today().isoformat(),
        )

    def baseline_view(self, module_path: str, test_name: str, workload: Workload, endpoint: Endpoint) -> BaselineView:
        """This test's baseline entry as the verdict needs it. Raises BaselineError for an unreadable file (when
        updating, the update replaces it: the view is then empty) and, when updating without force, for an entry
        whose hard keys changed, before any load is spent (the store says the same at the write, should the
        entry change in between)."""
        from pytest_llmperf.harness.judging import BaselineView
        from pytest_llmperf.judge.baseline import hard_key_refusal

        updating = self._settings.update is not None
        try:
            view = self._view(module_path, test_name, workload, endpoint)
        except BaselineError:
            if updating:  # the update replaces the unreadable entry; it was of no use anyway
                return BaselineView()
            raise
        if updating and view.hard_diffs and self._settings.update != "force":
            raise BaselineError(hard_key_refusal(view.where, view.hard_diffs, len(view.runs), FORCE_HINT))
        return view

    def _view(self, module_path: str, test_name: str, workload: Workload, endpoint: Endpoint) -> BaselineView:
        from pytest_llmperf.harness.judging import BaselineView
        from pytest_llmperf.judge.baseline import compare_fingerprint

        entry = self.store.load_entry(self.hardware_id, self.precision, module_path, test_name)
        if entry is None:
            where = f"{self.store.path_for(self.hardware_id, self.precision, module_path)}::{test_name}"
            return BaselineView(where=self._relative(where))
        _, hard, soft = compare_fingerprint(entry, self.fingerprint(workload, endpoint), workload.as_dict())
        pooled: dict[str, list[float]] = {}
        for arrays in self.store.load_raw(entry).values():
            for name, values in arrays.items():
                pooled.setdefault(name, []).extend(values)
        return BaselineView(
            runs=entry.runs, where=self._relative(entry.where), hard_diffs=hard, soft_diffs=soft, raw=pooled
        )

    def update_fields(
        self, module_path: str, test_name: str, judgement: Judgement, workload: Workload, endpoint: Endpoint
    ) -> RunDocument:
        """What a test's result carries to :meth:`apply_updates` (nothing unless updating): ``update``, the runs
        to record, and ``update_refused``, why the others may not be recorded."""
        from pytest_llmperf.harness.runner import workload_dict
        from pytest_llmperf.judge import metrics
        from pytest_llmperf.judge.baseline import reduce_summary

        if self._settings.update is None:
            return {}
        fields: RunDocument = {}
        # Only runs that describe the test's work go into a baseline: no invalid (cached) or disturbed run.
        kept = [r for r in judgement.results if not _unfit_for_baseline(r)]
        refused = [f"run {i + 1}: {why}" for i, r in enumerate(judgement.results) if (why := _unfit_for_baseline(r))]
        if refused:
            fields["update_refused"] = refused
        if kept:
            fields["update"] = {
                "module_path": module_path,
                "test_name": test_name,
                "fingerprint": self.fingerprint(workload, endpoint).as_dict(),
                "runs": [reduce_summary(r.summary) for r in kept],
                "raw": [raw_arrays(metrics.detailed(r.run)) for r in kept],
                "workload": workload_dict(workload),
                # New runs that the verdict calls different from the stored ones start a new epoch.
                "differs": _differs(judgement.verdict),
            }
        return fields

    def apply_updates(self, results: Sequence[RunDocument]) -> bool:
        """Write the baseline runs the tests recorded (controller, once). False if any write failed."""
        from pytest_llmperf.judge.baseline import Fingerprint

        ok = True
        for result in results:
            refused = result.get("update_refused") or ()
            update = result.get("update")
            for why in refused:
                self.update_lines.append(self._relative(f"NOT RECORDED {result['nodeid']} {why}"))
            if refused and not update:
                ok = False  # nothing of this test could be recorded: the update it asked for did not happen
            if not update:
                continue
            try:
                change = self.store.update(
                    self.hardware_id,
                    self.precision,
                    update["module_path"],
                    update["test_name"],
                    fingerprint=Fingerprint.from_dict(update["fingerprint"]),
                    runs=update["runs"],
                    raw=update["raw"],
                    workload=update["workload"],
                    force=self._settings.update == "force",
                    differs=update.get("differs"),
                )
                self.update_lines.append(self._relative(change))
            except (BaselineError, ValueError) as exc:
                ok = False
                self.update_lines.append(self._relative(f"NOT WRITTEN: {exc}"))
            except OSError as exc:  # e.g. a read-only directory: say so, and let the reports still be written
                ok = False
                self.update_lines.append(self._relative(self._unwritten(update, exc)))
        return ok

    def _unwritten(self, update: BaselineUpdate, exc: OSError) -> str:
        path = exc.filename or self.store.path_for(self.hardware_id, self.precision, update["module_path"])
        return (
            f"NOT WRITTEN: {path}: {exc.strerror or exc}; the runs of {update['test_name']} were not recorded. "
            f"Make {self._settings.baselines} writable (or choose another directory with --llmperf-baselines=DIR) "
            "and rerun with --llmperf-update"
        )

    def _relative(self, text: str) -> str:
        """``text`` with paths under the rootdir shown relative to it, as users and reports know them."""
        return text.replace(f"{self._config.rootpath}{os.sep}", "")


def raw_arrays(detail: RequestDetail) -> dict[str, list[float]]:
    """The per-request arrays kept in a baseline's sidecar (flat numbers only; ITL lists stay out)."""
    return {
        "input_lens": [*detail["input_lens"]],
        "output_lens": [*detail["output_lens"]],
        "ttfts": detail["ttfts"],
        "latencies": detail["latencies"],
    }


def _unfit_for_baseline(result: Result) -> str:
    """Why a run may not be recorded into a baseline ("" when it may)."""
    reasons = list(result.summary.get("invalid_reasons") or ())
    disturbance = result.summary.get("disturbance") or {}
    if disturbance.get("disturbed"):
        reasons.append("environment disturbed: " + "; ".join(disturbance.get("reasons") or ()))
    return "; ".join(reasons)


def _differs(verdict: Verdict) -> str | None:
    """ "REGRESSION: median TPOT 1.30× ..." when the update's runs differ from the stored ones, else None."""
    if verdict.status not in (REGRESSION, IMPROVEMENT):
        return None
    changed = [m for m in verdict.gating if m.status == verdict.status and m.estimate is not None]
    figures = ", ".join(f"{m.label} {m.estimate:.3g}×" if m.scale == "ratio" else m.label for m in changed)
    return f"{verdict.status}: {figures}" if figures else str(verdict.status)
