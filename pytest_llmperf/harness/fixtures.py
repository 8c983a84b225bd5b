"""The fixtures users write tests with: ``llmperf_server`` and ``llmperf_compare_server`` (session) and
``llmperf`` (function).

``llmperf.run()`` is one path for both modes: against the stored baseline, or in A/B mode (``--llmperf-compare``)
interleaved blocks on A and B judged B vs A. What differs is isolated: how the runs are judged
(:meth:`LLMPerf._judge`) and what stands in for the baseline in the result (:func:`_ab_fields`). The fixture asks
the session's collaborators directly: the servers (prompts, measurement turns), the baseline book (views,
updates) and, for the runs themselves, :class:`~pytest_llmperf.harness.measuring.Measurements`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pytest

from pytest_llmperf.errors import LLMPerfError, LLMPerfInconclusive, LLMPerfLimitWarning, SpecError
from pytest_llmperf.harness.markers import build_spec, merge, scale_spec
from pytest_llmperf.harness.measuring import Measurements
from pytest_llmperf.harness.server_manager import Side
from pytest_llmperf.harness.session import RESULTS_KEY, LLMPerfSession
from pytest_llmperf.report.junit import properties
from pytest_llmperf.spec import Endpoint, redact_url
from pytest_llmperf.status import INCONCLUSIVE, REGRESSION

if TYPE_CHECKING:
    from pytest_llmperf.harness.judging import ABJudgement, BaselineView, Judgement
    from pytest_llmperf.harness.markers import PerfSpec
    from pytest_llmperf.harness.runner import Result
    from pytest_llmperf.judge.capacity_search import CapacitySearch
    from pytest_llmperf.results import RunDocument, RunSummary

SESSION_KEY = pytest.StashKey[LLMPerfSession]()


@pytest.fixture(scope="session")
def llmperf_server(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """The server under test: attached (``--llmperf-endpoint``), spawned from a profile
    (``--llmperf-server``), or the embedded llama.cpp default; stopped at the end if spawned here."""
    with _opened(request.config.stash[SESSION_KEY], "A") as endpoint:
        assert endpoint is not None  # A is attached or spawned; without a server the fixture skips
        yield endpoint


@pytest.fixture(scope="session")
def llmperf_compare_server(request: pytest.FixtureRequest, llmperf_server: Endpoint) -> Iterator[Endpoint | None]:
    """A/B mode's server B (``--llmperf-compare=URL|PROFILE``), opened once A is ready; None otherwise."""
    with _opened(request.config.stash[SESSION_KEY], "B") as endpoint:
        yield endpoint


@contextlib.contextmanager
def _opened(session: LLMPerfSession, side: Side) -> Iterator[Endpoint | None]:
    """``side``'s server for the session's tests; closed at the end, and at once if it cannot be opened."""
    servers = session.servers
    try:
        endpoint = servers.open(side)
    except LLMPerfError as exc:
        servers.close(side)
        _fail(str(exc) if side == "A" else f"--llmperf-compare={redact_url(session.settings.compare or '')}: {exc}")
    try:
        yield endpoint
    finally:
        servers.close(side)


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
        self._session = session  # the session-wide judging defaults
        self._settings = session.settings
        self._servers = session.servers
        self._book = session.book
        self.endpoint = endpoint
        self.compare = compare
        self._marker_kwargs = merge(marker.kwargs for marker in item.iter_markers("perf"))
        self._calls = 0

    def _next_call(self) -> tuple[str, str]:
        """(module path, test name) of a new ``run()``/``capacity()`` call: ``#k`` names the k-th further one."""
        module_path, _, test_name = self._item.nodeid.partition("::")
        test_name += f"#{self._calls}" if self._calls else ""
        self._calls += 1
        return module_path, test_name

    def _measurements(self, sides: dict[str, Endpoint]) -> Measurements:
        """The measurements of the current call (see :meth:`_next_call`) on ``sides``."""
        return Measurements(
            self._item,
            self._calls - 1,
            sides,
            settings=self._settings,
            servers=self._servers,
            session_id=self._session.session_id,
            is_worker=self._session.role.is_worker,
            publish=self._publish,
            keep_partial=self._session.keep_partial,
            clients=self._session.clients,
        )

    def run(self, **overrides: Any) -> Result:
        """Run the marker's workload (``overrides`` win), check its SLOs and judge it against the baseline.

        Fails the test in the call phase on an SLO breach or a regression, with the tables in the message.
        Returns the last run's :class:`~pytest_llmperf.harness.runner.Result`; ``.runs`` holds every run,
        ``.verdict`` and ``.slo_results`` the decisions. In A/B mode these are B's runs and the B vs A verdict,
        and ``.ab_runs`` holds A's.
        """
        from pytest_llmperf.harness.judging import ABJudgement

        module_path, test_name = self._next_call()
        sides = {"A": self.endpoint} if self.compare is None else {"A": self.endpoint, "B": self.compare}
        measurements = self._measurements(sides)
        updating = self.compare is None and self._settings.update is not None  # never in A/B mode (a usage error)
        try:
            for endpoint in sides.values():
                measurements.check_server(endpoint, "before")
            spec = build_spec({"compat": self._settings.compat, **self._marker_kwargs}, overrides)
            spec = scale_spec(spec, self._session.scale)
            _check_limits(spec)
            baseline = None  # A/B mode: A's runs stand in for it
            if self.compare is None:
                baseline = self._book.baseline_view(module_path, test_name, spec.workload, self.endpoint)
            # A's calibration builds the prompts of both sides: the same prompts, seeds and lengths on A and B.
            context = self._servers.prompt_context(spec.workload, self.endpoint)
            measure = functools.partial(measurements.measure, spec, context)
            judgement = self._judge(spec, baseline, measure, updating, f"{module_path}::{test_name}")
        except LLMPerfError as exc:
            _fail(str(exc))
        result = judgement.results[-1]
        result.runs = judgement.results
        if isinstance(judgement, ABJudgement):
            result.ab_runs = judgement.a_results
        result.verdict = judgement.verdict
        result.slo_results = judgement.slo_results
        self._publish(self._document(module_path, test_name, spec, judgement, baseline))
        self._decide(judgement, updating)
        return result

    def capacity(
        self,
        slo: Mapping[str, float] | None = None,
        *,
        vary: str = "concurrency",
        low: float = 1,
        high: float = 64,
        capacity_min: float | None = None,
        max_probes: int | None = None,
        runs_per_probe: int | None = None,
        tolerance: float = 0.1,
        confidence: float = 0.9,
        prompts_per_user: float | None = 10.0,
        **overrides: Any,
    ) -> CapacitySearch:
        """Search for the largest concurrency (``vary="concurrency"``) or request rate (``"request_rate"``) in
        ``[low, high]`` whose runs of the marker's workload (``overrides`` win) meet ``slo``, by bisection.

        ``slo`` is one latency maximum or ``tok_s_per_user`` (``{"e2e_p50_ms": 15000}``); without it, the
        marker's one such SLO. Each probe is decided with a one-sided ``confidence`` interval of its runs' values
        and runs again while undecided, up to ``runs_per_probe`` runs (3); at most ``max_probes`` probes (8). A run
        that breaches the marker's ``error_rate`` (0 by default) counts as a breach. ``capacity_min`` (or the
        marker's) fails the test, with the probe table, when the capacity found is below it. Each probe of a
        concurrency search sends ``max(num_prompts, ceil(prompts_per_user × concurrency))`` requests per run
        (``capacity_search.PROMPTS_PER_USER``, 10); ``prompts_per_user=None`` keeps ``num_prompts`` at every probe.
        The search goes into the test's result document under ``capacity_search``; see
        :mod:`pytest_llmperf.judge.capacity_search`.
        """
        from pytest_llmperf.harness.runner import endpoint_dict
        from pytest_llmperf.judge import capacity_search
        from pytest_llmperf.judge.slo import check_slos, render_slo_table, summary_key

        module_path, test_name = self._next_call()
        measurements = self._measurements({"A": self.endpoint})
        runs: list[tuple[float, Result]] = []
        try:
            if self.compare is not None:
                raise SpecError("llmperf.capacity() measures one server; it does not run in A/B mode")
            if vary not in capacity_search.VARIES:
                raise SpecError(f"llmperf.capacity(vary={vary!r}): expected one of {', '.join(capacity_search.VARIES)}")
            base = {"compat": self._settings.compat, **self._marker_kwargs}
            name, base = _search_slo(slo, base)
            if prompts_per_user is not None and (
                isinstance(prompts_per_user, bool)
                or not isinstance(prompts_per_user, (int, float))
                or not 0 <= prompts_per_user < float("inf")
            ):
                raise SpecError(f"prompts_per_user={prompts_per_user!r}: expected a number >= 0, or None")
            measurements.check_server(self.endpoint, "before")

            def spec_at(at: float) -> PerfSpec:
                load = {**overrides, vary: int(at) if vary == "concurrency" else at}
                spec = build_spec(base, load)
                if spec.workload.trace is None:  # a trace's num_prompts takes its first lines: not a sample size
                    asked = spec.workload.num_prompts
                    prompts = capacity_search.probe_prompts(asked, at, vary=vary, prompts_per_user=prompts_per_user)
                    if prompts != asked:
                        spec = build_spec(base, {**load, "num_prompts": prompts})
                return scale_spec(spec, self._session.scale)

            first = spec_at(low)
            target = next(s for s in first.slos if s.name == name)  # its limit as scaled by --llmperf-scale
            gate = capacity_min if capacity_min is not None else first.capacity_min

            def measure(at: float) -> float | None:
                spec = spec_at(at)
                _check_limits(spec)
                context = self._servers.prompt_context(spec.workload, self.endpoint)
                result = measurements.measure(spec, context, "A")
                runs.append((at, result))
                checked = check_slos([target, *(s for s in spec.slos if s.name == "error_rate")], result.summary)
                return checked[0].measured if all(r.passed or r.name == name for r in checked) else None

            search = capacity_search.search_capacity(
                measure,
                slo=name,
                limit=target.limit,
                kind=target.kind,
                unit=target.unit,
                key=summary_key(name, first.workload.compat),
                vary=cast(capacity_search.Vary, vary),
                low=low,
                high=high,
                max_probes=max_probes or capacity_search.MAX_PROBES,
                max_runs=runs_per_probe or capacity_search.MAX_RUNS,
                tolerance=tolerance,
                confidence=confidence,
                gpu_count=self.endpoint.gpu_count,
                capacity_min=gate,
                prompts_at=lambda at: spec_at(at).workload.num_prompts,
                prompts_per_user=prompts_per_user,
            )
        except (LLMPerfError, ValueError) as exc:
            _fail(f"llmperf.capacity(): {exc}")
        at_capacity = [r for at, r in runs if at == search.capacity] or [runs[-1][1]]
        last = at_capacity[-1]
        slos = check_slos(first.slos, last.summary)
        self._publish(
            {
                **last.as_dict(),
                "endpoint": endpoint_dict(self.endpoint),
                "baseline_key": f"{module_path}::{test_name}",
                "runs": [r.summary for r in at_capacity],
                "slos": [r.as_dict() for r in slos],
                "slo_breached": False,  # a probe's breach is what the search looks for, not a failure
                "slo_gating": first.slo_gating,
                "scale": first.scale,
                "notes": [search.statement],
                "capacity_search": search.as_dict(),
            }
        )
        if search.gate_passed is False:
            pytest.fail(
                f"capacity below capacity_min={gate:g}: {search.statement}\n"
                + capacity_search.render_probe_table(search)
                + ("\n" + render_slo_table(slos) if not all(r.passed for r in slos) else ""),
                pytrace=False,
            )
        return search

    def _judge(
        self,
        spec: PerfSpec,
        baseline: BaselineView | None,
        measure: Callable[[str], Result],
        updating: bool,
        test_id: str,
    ) -> Judgement | ABJudgement:
        """Measure until the verdict is decided: against ``baseline``, or (None) B vs A in interleaved blocks."""
        from pytest_llmperf.harness import judging
        from pytest_llmperf.judge import verdict

        budget = spec.repeats or self._settings.repeats or verdict.BUDGET
        if baseline is None:
            return judging.run_ab_until_decided(
                spec,
                measure,
                budget=budget,
                order=self._settings.compare_order,
                global_tolerance=self._session.tolerance,
                family_size=self._session.family_size,
            )
        return judging.run_until_decided(
            spec,
            lambda: measure("A"),
            baseline,
            budget=budget,
            global_tolerance=self._session.tolerance,
            family_size=self._session.family_size,
            record_all=updating,
            session_prior=self._session.session_spread,
            history=self._earlier_sessions(test_id, spec, baseline),
        )

    def _earlier_sessions(
        self, test_id: str, spec: PerfSpec, baseline: BaselineView
    ) -> Mapping[str, list[list[float]]]:
        """The history's earlier sessions of this test, by summary key, while the baseline holds too few sessions
        to estimate the between-session spread itself (nothing to ask otherwise)."""
        from pytest_llmperf.judge.stats import MIN_SESSIONS
        from pytest_llmperf.judge.verdict import METRICS

        history = self._session.history
        sessions = {str(run.get("session")) for run in baseline.runs}
        if not history.enabled or not baseline.runs or len(sessions) >= MIN_SESSIONS:
            return {}
        keys = [d.key(spec.workload.compat) for d in METRICS.values() if d.scale == "ratio"]
        fingerprint = self._book.fingerprint(spec.workload, self.endpoint)
        return history.earlier_sessions(test_id, fingerprint, keys, self._session.session_id)

    def _document(
        self,
        module_path: str,
        test_name: str,
        spec: PerfSpec,
        judgement: Judgement | ABJudgement,
        baseline: BaselineView | None,
    ) -> RunDocument:
        """The test's entry in the results: its last run (B's in A/B mode), the verdict, and what it was judged
        against; when updating, the runs to record."""
        from pytest_llmperf.harness.judging import ABJudgement
        from pytest_llmperf.harness.runner import endpoint_dict
        from pytest_llmperf.judge import metrics

        last = judgement.results[-1]
        side: Side = "A" if self.compare is None else "B"
        measured = self.endpoint if self.compare is None else self.compare
        document: RunDocument = {
            **last.as_dict(),
            "endpoint": endpoint_dict(measured),
            "fingerprint": self._book.fingerprint(spec.workload, measured, side).as_dict(),
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
        }
        if isinstance(judgement, ABJudgement):
            assert self.compare is not None
            ab = _ab_fields(self.endpoint, self.compare, self._settings.compare_order, judgement)
            ab["ab"]["fingerprint_a"] = self._book.fingerprint(spec.workload, self.endpoint, "A").as_dict()
            return {**document, **ab}
        assert baseline is not None
        fields = self._book.update_fields(module_path, test_name, judgement, spec.workload, self.endpoint)
        return {**document, "baseline": baseline.as_dict(), **fields}

    def _publish(self, document: RunDocument) -> None:
        """Attach a run's entry to the test (its report carries it to the session), JUnit and the result hook."""
        self._item.stash.setdefault(RESULTS_KEY, []).append(document)
        prefix = f"call{self._calls - 1}." if self._calls > 1 else ""
        self._item.user_properties.extend(
            (name.replace("llmperf.", f"llmperf.{prefix}", 1), value) for name, value in properties(document)
        )
        self._item.config.hook.pytest_llmperf_result(item=self._item, result=document)

    def _decide(self, judgement: Judgement | ABJudgement, updating: bool) -> None:
        from pytest_llmperf.judge.slo import render_slo_table
        from pytest_llmperf.report.tables import render_verdict_table

        verdict = judgement.verdict
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
        if verdict.status == REGRESSION:
            pytest.fail("performance regression:\n" + render_verdict_table(verdict), pytrace=False)
        if verdict.status == INCONCLUSIVE:
            policy = self._settings.inconclusive
            message = "inconclusive verdict:\n" + render_verdict_table(verdict)
            if policy == "fail":
                pytest.fail(message, pytrace=False)
            if policy == "skip":
                pytest.skip(message.splitlines()[1])
            warnings.warn(LLMPerfInconclusive(message), stacklevel=3)


def _search_slo(slo: Mapping[str, float] | None, base: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The SLO a capacity search looks for, and the marker's keywords with it in place of the marker's own."""
    from pytest_llmperf.judge.slo import LATENCY_METRICS, LATENCY_STATS, SLO_NAMES

    capacity_like = [f"{m}_{s}_ms" for m in LATENCY_METRICS for s in LATENCY_STATS] + ["tok_s_per_user"]
    if slo is None:
        slo = {k: v for k, v in base.items() if k in capacity_like}
    usage = 'expected one SLO such as slo={"e2e_p50_ms": 15000}: a latency maximum or tok_s_per_user'
    if not isinstance(slo, Mapping) or len(slo) != 1:
        raise SpecError(f"llmperf.capacity(slo={slo!r}): {usage}")
    ((name, limit),) = slo.items()
    if name not in capacity_like:
        raise SpecError(f"llmperf.capacity(): SLO {name!r} cannot bound a capacity; {usage}")
    kept = {k: v for k, v in base.items() if k not in SLO_NAMES or k == "error_rate"}
    return name, {**kept, name: limit}


def _check_limits(spec: PerfSpec) -> None:
    """Refuse a workload this machine cannot hold (memory, sockets) before any load; warn of one it may not."""
    from pytest_llmperf.client import limits
    from pytest_llmperf.harness import runner

    found = limits.check(spec.workload, runner.planned_prompts(spec.workload), limits.machine_limits())
    scaled = f" (the workload as scaled ×{spec.scale:g} by --llmperf-scale)" if spec.scale != 1 else ""
    if found.refusals:
        raise SpecError("workload too large for this machine" + scaled + ": " + "; ".join(found.refusals))
    for message in found.warnings:
        warnings.warn(LLMPerfLimitWarning(message + scaled), stacklevel=3)


def _ab_fields(a: Endpoint, b: Endpoint, order: str, judgement: ABJudgement) -> RunDocument:
    """A/B mode's part of the entry: A plays the baseline's part in every report (its runs and pooled
    per-request arrays), and ``ab`` holds both sides."""
    from pytest_llmperf.harness.baseline_book import raw_arrays
    from pytest_llmperf.harness.judging import BaselineView
    from pytest_llmperf.harness.runner import endpoint_dict
    from pytest_llmperf.judge import metrics

    last_a = judgement.a_results[-1] if judgement.a_results else None
    a_raw = [raw_arrays(metrics.detailed(r.run)) for r in judgement.a_results]
    a_as_baseline = BaselineView(
        where=f"A: {endpoint_dict(a)['url']}",
        runs=[r.summary for r in judgement.a_results],
        raw={key: [v for raw in a_raw for v in raw[key]] for key in (a_raw[0] if a_raw else {})},
    )
    return {
        "baseline": a_as_baseline.as_dict(),
        "ab": {
            "a": endpoint_dict(a),
            "b": endpoint_dict(b),
            "order": order,
            "blocks": judgement.orders,
            "runs_a": [r.summary for r in judgement.a_results],
            "runs_b": [r.summary for r in judgement.b_results],
            "detail_a": metrics.detailed(last_a.run) if last_a is not None else {},
        },
    }


def _failed_requests(summary: RunSummary) -> str:
    """Failed requests by kind, with the first message of each, so a breach says what went wrong."""
    errors = summary.get("errors") or {}
    examples = summary.get("error_examples") or {}
    lines = [f"  {kind}: {count} (first: {examples.get(kind, '')})" for kind, count in sorted(errors.items())]
    return "\nfailed requests:\n" + "\n".join(lines) if lines else ""


@pytest.fixture
def llmperf(
    request: pytest.FixtureRequest, llmperf_server: Endpoint, llmperf_compare_server: Endpoint | None
) -> LLMPerf:
    """Measure the server under test with the workload of this test's ``perf`` marker (A/B mode: against B too)."""
    return LLMPerf(request.node, request.config.stash[SESSION_KEY], llmperf_server, llmperf_compare_server)
