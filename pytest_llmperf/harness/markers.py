"""The ``perf`` marker: parsed into a :class:`PerfSpec` (workload, SLOs, run budget, tolerance).

Markers on the module, class and function merge with the closest one winning; ``llmperf.run(**overrides)``
wins over all of them. An unknown or ill-typed kwarg fails that test (never the session) with the list of
valid names and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge.slo import SLO_NAMES, Slo, parse_slos
from pytest_llmperf.spec import Workload

WORKLOAD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Workload))
CONTROL_FIELDS: tuple[str, ...] = ("repeats", "tolerance", "slo_gating")
VALID_NAMES: tuple[str, ...] = (*WORKLOAD_FIELDS, *CONTROL_FIELDS, *SLO_NAMES)

MARKER_HELP = (
    "perf(*, "
    + ", ".join(f"{name}=..." for name in (*WORKLOAD_FIELDS, *CONTROL_FIELDS))
    + ", <metric>_<stat>_ms=..., output_tok_s=..., total_tok_s=..., request_s=..., output_tok_s_per_gpu=..., "
    "tok_s_per_user=..., error_rate=...): an LLM-serving performance test. The workload that the llmperf "
    "fixture's run() sends, its SLOs (checked on every run), the most runs it may take (repeats) and the "
    "tolerance of the baseline comparison; see the pytest-llmperf README."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class PerfSpec:
    """Everything a perf test declares, validated."""

    workload: Workload
    slos: tuple[Slo, ...]
    repeats: int | None = None
    tolerance: float | dict[str, float] | None = None
    # False: SLOs are checked and reported (capacity sweeps) but a breach does not fail the test.
    slo_gating: bool = True
    scale: float = 1.0


def merge(kwargs_closest_first: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge marker kwargs so that the closest marker wins."""
    merged: dict[str, Any] = {}
    for kwargs in reversed(list(kwargs_closest_first)):
        merged.update(kwargs)
    return merged


def check_names(kwargs: Mapping[str, Any], where: str) -> None:
    for name in kwargs:
        if name not in VALID_NAMES:
            close = difflib.get_close_matches(name, VALID_NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{where}: unknown argument {name!r}.{hint} Valid names: {', '.join(VALID_NAMES)}")


def build_spec(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> PerfSpec:
    """A validated :class:`PerfSpec` from marker kwargs and run() overrides."""
    check_names(base, "@pytest.mark.perf")
    check_names(overrides, "llmperf.run()")
    kwargs = {**base, **overrides}
    repeats = kwargs.pop("repeats", None)
    if repeats is not None and (type(repeats) is not int or repeats < 1):
        raise SpecError(f"repeats={repeats!r}: expected an int >= 1 (the most runs this test may take)")
    tolerance = kwargs.pop("tolerance", None)
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, dict))):
        raise SpecError(f"tolerance={tolerance!r}: expected a number such as 0.05, or a dict of metric: number")
    slo_gating = kwargs.pop("slo_gating", True)
    if type(slo_gating) is not bool:
        raise SpecError(f"slo_gating={slo_gating!r}: expected True or False")
    slo_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in SLO_NAMES}
    try:
        workload = Workload(**kwargs)
    except TypeError as exc:
        raise SpecError(f"invalid workload arguments: {exc}") from exc
    return PerfSpec(
        workload=workload, slos=parse_slos(slo_kwargs), repeats=repeats, tolerance=tolerance, slo_gating=slo_gating
    )


# Latency SLOs that grow with the sequence lengths; per-token ones (TPOT, ITL) do not and stay as written.
_LENGTH_BOUND_SLOS = ("ttft_", "e2e_")


def scale_spec(spec: PerfSpec, factor: float) -> PerfSpec:
    """``spec`` shrunk for a small engine: lengths and prompt counts × ``factor``, and the TTFT/E2E limits too.

    Prompt counts keep at least two requests per concurrency slot, so a closed loop still reaches steady
    batching, and at least :data:`~pytest_llmperf.judge.verdict.MIN_REQUESTS_PER_RUN` requests, the fewest from
    which a run can support a regression (never more than the test asked for). Throughput, TPOT, ITL and
    error-rate SLOs are per token or per request and are not scaled.
    """
    from pytest_llmperf.judge.verdict import MIN_REQUESTS_PER_RUN

    if factor == 1.0:
        return spec
    w = spec.workload
    slots = w.concurrency or 1

    def prompts(asked: int) -> int:
        return min(asked, max(MIN_REQUESTS_PER_RUN, 2 * slots, round(asked * factor)))

    workload = w.replace(
        input_len=max(1, round(w.input_len * factor)),
        output_len=max(2, round(w.output_len * factor)),
        prefix_len=round(w.prefix_len * factor),
        num_prompts=None if w.num_prompts is None else prompts(w.num_prompts),
        duration_s=None if w.duration_s is None else w.duration_s * factor,
    )
    slos = tuple(
        dataclasses.replace(slo, limit=slo.limit * factor) if slo.name.startswith(_LENGTH_BOUND_SLOS) else slo
        for slo in spec.slos
    )
    return dataclasses.replace(spec, workload=workload, slos=slos, scale=factor)


def build_workload(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Workload:
    """The workload part of :func:`build_spec`."""
    return build_spec(base, overrides).workload
