"""The fixtures users write tests with: ``llmperf_server`` (session) and ``llmperf`` (function)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pytest_llmperf.errors import BaselineError, LLMPerfError, RunInterrupted, ServerExitedError, SpecError
from pytest_llmperf.harness.markers import build_spec, merge, scale_spec
from pytest_llmperf.harness.session import IDLE_TIMEOUT_S, RESULTS_KEY, LLMPerfSession
from pytest_llmperf.report.junit import properties
from pytest_llmperf.report.progress import LiveProgress
from pytest_llmperf.spec import Endpoint, redact_url

if TYPE_CHECKING:
    from pytest_llmperf.harness.judging import ABJudgement, Judgement
    from pytest_llmperf.harness.markers import PerfSpec
    from pytest_llmperf.harness.runner import Result

SESSION_KEY = pytest.StashKey[LLMPerfSession]()


@pytest.fixture(scope="session")
def llmperf_server(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """The server under test: attached (``--llmperf-endpoint``), spawned from a profile
    (``--llmperf-server``), or the embedded llama.cpp default; stopped at the end if spawned here."""
    session = request.config.stash[SESSION_KEY]
    try:
        endpoint = session.open_server()
    except LLMPerfError as exc:
        session.close_server()
        _fail(str(exc))
    try:
        yield endpoint
    finally:
        session.close_server()


@pytest.fixture(scope="session")
def llmperf_compare_server(request: pytest.FixtureRequest, llmperf_server: Endpoint) -> Iterator[Endpoint | None]:
    """A/B mode's server B (``--llmperf-compare=URL|PROFILE``), opened once A is ready; None otherwise."""
    session = request.config.stash[SESSION_KEY]
    try:
        endpoint = session.open_compare_server()
    except LLMPerfError as exc:
        session.close_compare_server()
        _fail(f"--llmperf-compare={redact_url(session.settings.compare or '')}: {exc}")
    try:
        yield endpoint
    finally:
        session.close_compare_server()


def _fail(message: str) -> NoReturn:
    """Fail the test with ``message`` alone. Called inside an ``except`` block: without ``from None`` pytest would
    print the caught error and then this one, the same message twice."""
    raise pytest.fail.Exception(message, pytrace=False) from None


class LLMPerf:
    """Runs the test's workload against the server: ``llmperf.run(**overrides) -> Result``.

    In A/B mode (``compare`` is B's endpoint) every run is a series of interleaved blocks on A (``endpoint``)
    and B, judged B vs A instead of against the stored baseline.
    """

    def __init__(
        self, item: pytest.Item, session: LLMPerfSession, endpoint: Endpoint, compare: Endpoint | None = None
    ) -> None:
        self._item = item
        self._session = session
        self.endpoint = endpoint
        self.compare = compare
        self._marker_kwargs = merge(marker.kwargs for marker in item.iter_markers("perf"))
        self._calls = 0
        # Runs measured per server in the current run() call: the key of each run's prompt contents.
        self._runs_measured: dict[str, int] = {}
        self._measured: list[tuple[str, dict[str, Any]]] = []  # (label, summary) of each run of this run() call

    def run(self, **overrides: Any) -> Result:
        """Run the marker's workload (``overrides`` win), check its SLOs and judge it against the baseline.

        Fails the test in the call phase on an SLO breach or a regression, with the tables in the message.
        Returns the last run's :class:`~pytest_llmperf.harness.runner.Result`; ``.runs`` holds every run,
        ``.verdict`` and ``.slo_results`` the decisions. In A/B mode these are B's runs and the B vs A verdict,
        and ``.ab_runs`` holds A's.
        """
        from pytest_llmperf.harness import judging
        from pytest_llmperf.judge import verdict

        if self.compare is not None:
            return self._run_ab(self.compare, overrides)

        session = self._session
        module_path, _, test_name = self._item.nodeid.partition("::")
        test_name += f"#{self._calls}" if self._calls else ""
        self._calls += 1
        self._runs_measured, self._measured = {}, []
        try:
            self._check_server(self.endpoint, "before")
            spec = scale_spec(
                build_spec({"compat": session.settings.compat, **self._marker_kwargs}, overrides), session.scale
            )
            self._check_limits(spec)
            updating = session.settings.update is not None
            baseline = self._baseline(module_path, test_name, spec.workload, updating)
            context = session.prompt_context(spec.workload, self.endpoint)
            judgement = judging.run_until_decided(
                spec,
                lambda: self._measure(spec, context),
                baseline,
                budget=spec.repeats or session.settings.repeats or verdict.BUDGET,
                global_tolerance=session.tolerance,
                family_size=session.family_size,
                record_all=updating,
                session_prior=session.session_spread,
            )
        except LLMPerfError as exc:
            _fail(str(exc))
        result = judgement.results[-1]
        result.runs = judgement.results
        result.verdict = judgement.verdict.as_dict()
        result.slo_results = [[r.as_dict() for r in run] for run in judgement.slo_results]
        self._record(module_path, test_name, spec, judgement, baseline, updating)
        self._decide(judgement, updating)
        return result

    def _check_limits(self, spec: PerfSpec) -> None:
        """Refuse a workload this machine cannot hold (memory, sockets) before any load; warn of one it may not."""
        from pytest_llmperf.client import limits
        from pytest_llmperf.harness import runner

        found = limits.check(spec.workload, runner.planned_prompts(spec.workload), limits.machine_limits())
        scaled = f" (the workload as scaled ×{spec.scale:g} by --llmperf-scale)" if spec.scale != 1 else ""
        if found.refusals:
            raise SpecError("workload too large for this machine" + scaled + ": " + "; ".join(found.refusals))
        for message in found.warnings:
            warnings.warn(LLMPerfLimitWarning(message + scaled), stacklevel=3)

    def _baseline(self, module_path: str, test_name: str, workload: Any, updating: bool) -> Any:
        from pytest_llmperf.harness.judging import BaselineView

        try:
            view = self._session.baseline_view(module_path, test_name, workload, self.endpoint)
        except BaselineError:
            if updating:  # the update replaces the unreadable entry; it was of no use anyway
                return BaselineView()
            raise
        if updating and view.hard_diffs and self._session.settings.update != "force":
            raise BaselineError(
                f"{view.where}: refusing to update across a hard-key change ({'; '.join(view.hard_diffs)}); "
                "rerun with --llmperf-update=force to replace the old runs"
            )
        return view

    def _run_ab(self, compare: Endpoint, overrides: dict[str, Any]) -> Result:
        """A/B mode: interleaved blocks on A and B with the same prompts, judged B vs A."""
        from pytest_llmperf.harness import judging
        from pytest_llmperf.judge import verdict

        session = self._session
        module_path, _, test_name = self._item.nodeid.partition("::")
        test_name += f"#{self._calls}" if self._calls else ""
        self._calls += 1
        servers = {"A": self.endpoint, "B": compare}
        self._runs_measured, self._measured = {}, []

        try:
            for server in servers.values():
                self._check_server(server, "before")
            spec = scale_spec(
                build_spec({"compat": session.settings.compat, **self._marker_kwargs}, overrides), session.scale
            )
            self._check_limits(spec)
            # A's calibration builds the prompts of both sides: the same prompts, seeds and lengths on A and B.
            context = session.prompt_context(spec.workload, self.endpoint)
            judgement = judging.run_ab_until_decided(
                spec,
                lambda server: self._measure(
                    spec, context, servers[server], label=server, other=servers["B" if server == "A" else "A"]
                ),
                budget=spec.repeats or session.settings.repeats or verdict.BUDGET,
                order=session.settings.compare_order,
                global_tolerance=session.tolerance,
                family_size=session.family_size,
            )
        except LLMPerfError as exc:
            _fail(str(exc))
        result = judgement.b_results[-1]
        result.runs = judgement.b_results
        result.ab_runs = judgement.a_results
        result.verdict = judgement.verdict.as_dict()
        result.slo_results = [[r.as_dict() for r in run] for run in judgement.slo_results]
        self._record_ab(module_path, test_name, spec, judgement, compare)
        self._decide(judgement, updating=False)
        return result

    def _record_ab(
        self,
        module_path: str,
        test_name: str,
        spec: PerfSpec,
        judgement: ABJudgement,
        compare: Endpoint,
    ) -> None:
        from pytest_llmperf.judge import metrics

        last_b, last_a = judgement.b_results[-1], judgement.a_results[-1] if judgement.a_results else None
        a_raw = [_raw_arrays(metrics.detailed(r.run)) for r in judgement.a_results]
        document = {
            **last_b.as_dict(),
            "endpoint": compare.public_dict(),
            "baseline_key": f"{module_path}::{test_name}",
            "runs": [r.summary for r in judgement.b_results],
            "verdict": judgement.verdict.as_dict(),
            "slos": [r.as_dict() for r in judgement.slo_results[-1]],
            "slo_breached": bool(judgement.breaches),
            "slo_gating": spec.slo_gating,
            "scale": spec.scale,
            "notes": judgement.notes,
            "detail": metrics.detailed(last_b.run),
            # A plays the baseline's part in every report: its runs and pooled per-request arrays.
            "baseline": {
                "where": f"A: {self.endpoint.public_dict()['url']}",
                "runs": [r.summary for r in judgement.a_results],
                "raw": {key: [v for raw in a_raw for v in raw[key]] for key in (a_raw[0] if a_raw else {})},
            },
            "ab": {
                "a": self.endpoint.public_dict(),
                "b": compare.public_dict(),
                "order": self._session.settings.compare_order,
                "blocks": judgement.orders,
                "runs_a": [r.summary for r in judgement.a_results],
                "runs_b": [r.summary for r in judgement.b_results],
                "detail_a": metrics.detailed(last_a.run) if last_a is not None else {},
            },
        }
        self._publish(document)

    def _publish(self, document: dict[str, Any]) -> None:
        """Attach a run's entry to the test (its report carries it to the session), JUnit and the result hook."""
        self._item.stash.setdefault(RESULTS_KEY, []).append(document)
        prefix = f"call{self._calls - 1}." if self._calls > 1 else ""
        self._item.user_properties.extend(
            (name.replace("llmperf.", f"llmperf.{prefix}", 1), value) for name, value in properties(document)
        )
        self._item.config.hook.pytest_llmperf_result(item=self._item, result=document)

    def _measure(
        self,
        spec: Any,
        context: Any,
        endpoint: Endpoint | None = None,
        *,
        label: str = "",
        other: Endpoint | None = None,
    ) -> Result:
        """One run on ``endpoint`` (default: A). ``other``: A/B mode's other server, settled before the run."""
        from pytest_llmperf.harness import runner
        from pytest_llmperf.servers import engine_metrics

        endpoint = endpoint or self.endpoint
        # New prompt contents every run (A and B of one block share theirs), so no prefix cache serves a repeat.
        number = self._runs_measured.get(label, 0)
        self._runs_measured[label] = number + 1
        contents = f"{self._session.prompt_nonce}/{self._item.nodeid}#{self._calls - 1}/run{number}"
        with self._session.measurement_slot() as slot:
            self._check_server(endpoint, "before")
            settled = self._session.settle(endpoint, other) if other is not None else {}
            before = engine_metrics.scrape(endpoint)
            progress = self._progress(label)
            monitor = self._disturbance_monitor(endpoint)
            try:
                result = runner.measure(
                    spec.workload,
                    endpoint,
                    context,
                    progress=progress,
                    busy_poll=self._session.settings.busy_poll,
                    contents=contents,
                )
            except RunInterrupted as interrupted:
                # Ctrl-C skips the call report, so hand the partial result to the session directly.
                partial = runner.summarize(interrupted.partial, endpoint)
                reason = partial.run.notes[-1] if partial.run.notes else "interrupted"
                document = {**self._partial_document(partial, endpoint, label, reason), "interruption": reason}
                self._session.keep_partial({"nodeid": self._item.nodeid, "outcome": "interrupted", **document})
                raise
            finally:
                if progress is not None:
                    progress.close()
            # Failed requests may mean the server died: checked inside the slot, so that under xdist the message
            # names this test before another worker's run can find the server gone.
            failed = bool(result.summary.get("failed"))
            exited = self._session.server_exited(endpoint, f"during test {self._item.nodeid}") if failed else None
            after = engine_metrics.scrape(endpoint) if before is not None else None
            deltas = engine_metrics.deltas(before, after) if before is not None and after is not None else None
            if monitor is not None:
                result.summary["disturbance"] = _stop_monitor(monitor, result, deltas)
        result.summary["measurement_lock_wait_s"] = slot["wait_s"]
        result.summary["session_id"] = self._session.session_id
        result.summary.update(settled)
        if (settled.get("ab_idle_wait_s") or 0.0) >= IDLE_TIMEOUT_S:
            result.summary.setdefault("validity", {}).setdefault("warnings", []).append(
                f"the other A/B server still reported busy requests after {IDLE_TIMEOUT_S:g} s: this run may "
                "overlap its tail"
            )
        if deltas is not None:
            result.summary["server_metrics"] = deltas
        _account_prompt_cache(result, deltas)
        if exited is not None:  # keep what was measured, then fail the test with the server's fate
            self._publish({**self._partial_document(result, endpoint, label, exited), "server_exited": exited})
            raise ServerExitedError(exited)
        self._measured.append((label, result.summary))
        return result

    def _check_server(self, endpoint: Endpoint, when: str) -> None:
        """Fail at once, sending no load, when the spawned server of ``endpoint`` has died (in this test or before)."""
        exited = self._session.server_exited(endpoint, f"{when} test {self._item.nodeid}")
        if exited is not None:
            raise ServerExitedError(exited)

    def _partial_document(self, result: Result, endpoint: Endpoint, label: str, reason: str) -> dict[str, Any]:
        """The entry of a run that ended its test early (an interrupt, its server's death): the run as measured,
        with its per-request arrays, every run of this ``llmperf.run()`` call so far, and why it ended."""
        from pytest_llmperf.judge import metrics

        earlier = [summary for side, summary in self._measured if side == label]
        return {
            **self._document(result, endpoint),
            "runs": [*earlier, result.summary],
            "detail": metrics.detailed(result.run),
            "notes": [reason],
        }

    def _disturbance_monitor(self, endpoint: Endpoint) -> Any:
        """A started monitor of what else uses the server's resources during the run (None when switched off)."""
        if not self._session.settings.environment_guard:
            return None
        from pytest_llmperf.servers.disturbance import DisturbanceMonitor

        pid, cores, gpus = self._session.server_watch(endpoint)
        monitor = DisturbanceMonitor(server_pid=pid, server_cpus=cores, gpu_indices=gpus)
        monitor.start()
        return monitor

    def _progress(self, label: str = "") -> LiveProgress | None:
        """Live progress on a terminal (never on xdist workers, whose output goes to the controller)."""
        setting = self._session.settings.progress
        config = self._item.config
        terminal = config.pluginmanager.getplugin("terminalreporter")
        capture = config.pluginmanager.getplugin("capturemanager")
        if setting == "off" or self._session.is_worker or terminal is None or capture is None:
            return None
        if setting == "auto" and not terminal.isatty:
            return None
        return LiveProgress(terminal, capture, f"{self._item.name} {label}".rstrip())

    def _document(self, result: Result, endpoint: Endpoint | None = None) -> dict[str, Any]:
        return {**result.as_dict(), "endpoint": (endpoint or self.endpoint).public_dict()}

    def _record(
        self, module_path: str, test_name: str, spec: Any, judgement: Any, baseline: Any, updating: bool
    ) -> None:
        from pytest_llmperf.judge import metrics
        from pytest_llmperf.judge.baseline import reduce_summary

        last = judgement.results[-1]
        document = {
            **self._document(last),
            "baseline_key": f"{module_path}::{test_name}",
            "runs": [r.summary for r in judgement.results],
            "verdict": judgement.verdict.as_dict(),
            "slos": [r.as_dict() for r in judgement.slo_results[-1]],
            "slo_breached": bool(judgement.breaches),
            "slo_gating": spec.slo_gating,
            "scale": spec.scale,
            "notes": judgement.notes,
            # Per-request arrays of the last run, in the shape of `vllm bench serve --save-detailed`.
            "detail": metrics.detailed(last.run),
            "baseline": baseline.as_dict(),
        }
        if updating:
            # Only runs that describe the test's work go into a baseline: no invalid (cached) or disturbed run.
            kept = [r for r in judgement.results if not _unfit_for_baseline(r)]
            refused = [
                f"run {i + 1}: {why}" for i, r in enumerate(judgement.results) if (why := _unfit_for_baseline(r))
            ]
            if refused:
                document["update_refused"] = refused
            if kept:
                document["update"] = {
                    "module_path": module_path,
                    "test_name": test_name,
                    "fingerprint": self._session.fingerprint(spec.workload, self.endpoint).as_dict(),
                    "runs": [reduce_summary(r.summary) for r in kept],
                    "raw": [_raw_arrays(metrics.detailed(r.run)) for r in kept],
                    "workload": spec.workload.as_dict(),
                    # New runs that the verdict calls different from the stored ones start a new epoch.
                    "differs": _differs(judgement.verdict),
                }
        self._publish(document)

    def _decide(self, judgement: Judgement | ABJudgement, updating: bool) -> None:
        from pytest_llmperf.judge.slo import render_slo_table
        from pytest_llmperf.report.tables import render_verdict_table

        verdict = judgement.verdict.as_dict()
        if judgement.breaches and judgement.slo_gating:
            run_index = judgement.breaches[0][0]
            pytest.fail(
                f"SLO breached in run {run_index + 1} of {len(judgement.results)}:\n"
                + render_slo_table(judgement.slo_results[run_index])
                + _failed_requests(judgement.results[run_index].summary)
                + "\n\n"
                + render_verdict_table(verdict),
                pytrace=False,
            )
        if updating:
            return
        if verdict["status"] == "REGRESSION":
            pytest.fail("performance regression:\n" + render_verdict_table(verdict), pytrace=False)
        if verdict["status"] == "INCONCLUSIVE":
            policy = self._session.settings.inconclusive
            message = "inconclusive verdict:\n" + render_verdict_table(verdict)
            if policy == "fail":
                pytest.fail(message, pytrace=False)
            if policy == "skip":
                pytest.skip(message.splitlines()[1])
            warnings.warn(LLMPerfInconclusive(message), stacklevel=3)


class LLMPerfInconclusive(UserWarning):
    """A perf test whose verdict stayed open within its run budget (``--llmperf-inconclusive=warn``)."""


class LLMPerfLimitWarning(UserWarning):
    """A workload that may exceed this machine's limits (e.g. more requests in flight than open files allowed)."""


def _stop_monitor(monitor: Any, result: Result, deltas: dict[str, Any] | None) -> dict[str, Any]:
    """The run's disturbance figures, with what this run sent so the server's counters can show foreign load."""
    sent = [r for r in (*result.run.warmup_records, *result.run.records) if r.status is not None]
    prompt_tokens = sum(r.prompt_tokens if r.prompt_tokens else r.input_len for r in sent)
    found = monitor.stop(
        counter_deltas=deltas["counters"] if deltas else None, sent_requests=len(sent), sent_prompt_tokens=prompt_tokens
    )
    data: dict[str, Any] = found.as_dict()
    return data


def _account_prompt_cache(result: Result, deltas: dict[str, Any] | None) -> None:
    """Cached prompt tokens of the run into its summary; an unrequested cache hit makes the run invalid."""
    from pytest_llmperf.judge import prefixcache

    use = prefixcache.measure(
        result.run.records, deltas["counters"] if deltas else None, metrics_known=deltas is not None
    )
    result.summary.update(prefixcache.summary_fields(use))
    reason = prefixcache.invalid_reason(use, sharing_asked=bool(result.summary.get("prefix_sharing")))
    if reason:
        result.summary.setdefault("invalid_reasons", []).append(reason)


def _failed_requests(summary: dict[str, Any]) -> str:
    """Failed requests by kind, with the first message of each, so a breach says what went wrong."""
    errors = summary.get("errors") or {}
    examples = summary.get("error_examples") or {}
    lines = [f"  {kind}: {count} (first: {examples.get(kind, '')})" for kind, count in sorted(errors.items())]
    return "\nfailed requests:\n" + "\n".join(lines) if lines else ""


def _differs(verdict: Any) -> str | None:
    """ "REGRESSION: median TPOT 1.30× ..." when the update's runs differ from the stored ones, else None."""
    if verdict.status not in ("REGRESSION", "IMPROVEMENT"):
        return None
    changed = [m for m in verdict.gating if m.status == verdict.status and m.estimate is not None]
    figures = ", ".join(f"{m.label} {m.estimate:.3g}×" if m.scale == "ratio" else m.label for m in changed)
    return f"{verdict.status}: {figures}" if figures else str(verdict.status)


def _unfit_for_baseline(result: Result) -> str:
    """Why a run may not be recorded into a baseline ("" when it may)."""
    reasons = list(result.summary.get("invalid_reasons") or ())
    disturbance = result.summary.get("disturbance") or {}
    if disturbance.get("disturbed"):
        reasons.append("environment disturbed: " + "; ".join(disturbance.get("reasons") or ()))
    return "; ".join(reasons)


def _raw_arrays(detail: dict[str, Any]) -> dict[str, Any]:
    """The per-request arrays kept in a baseline's sidecar (flat numbers only; ITL lists stay out)."""
    return {key: detail[key] for key in ("input_lens", "output_lens", "ttfts", "latencies") if key in detail}


@pytest.fixture
def llmperf(
    request: pytest.FixtureRequest, llmperf_server: Endpoint, llmperf_compare_server: Endpoint | None
) -> LLMPerf:
    """Measure the server under test with the workload of this test's ``perf`` marker (A/B mode: against B too)."""
    return LLMPerf(request.node, request.config.stash[SESSION_KEY], llmperf_server, llmperf_compare_server)
