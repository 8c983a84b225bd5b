"""The ``perf`` marker: parsed into a :class:`PerfSpec` (workload, SLOs, run budget, tolerance).

Markers on the module, class and function merge with the closest one winning; ``llmperf.run(**overrides)``
wins over all of them. An unknown or ill-typed kwarg fails that test (never the session) with the list of
valid names and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge.slo import SLO_NAMES, Slo, parse_slos
from pytest_llmperf.spec import Workload

WORKLOAD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Workload))
CONTROL_FIELDS: tuple[str, ...] = ("repeats", "tolerance", "slo_gating", "goodput", "capacity_min")
# The ``goodput`` keyword's keys (as vLLM's ``--goodput ttft:2000 tpot:50``, in ms) -> the metric they limit.
GOODPUT_KEYS: dict[str, str] = {"ttft_ms": "ttft", "tpot_ms": "tpot", "e2el_ms": "e2el", "e2e_ms": "e2el"}
VALID_NAMES: tuple[str, ...] = (*WORKLOAD_FIELDS, *CONTROL_FIELDS, *SLO_NAMES)

MARKER_HELP = (
    "perf(*, "
    + ", ".join(f"{name}=..." for name in (*WORKLOAD_FIELDS, *CONTROL_FIELDS))
    + ", <metric>_<stat>_ms=..., output_tok_s=..., total_tok_s=..., request_s=..., output_tok_s_per_gpu=..., "
    "input_tok_s_per_gpu=..., total_tok_s_per_gpu=..., tok_s_per_user=..., goodput_req_s=..., error_rate=...): "
    "an LLM-serving performance test. The workload that the llmperf fixture's run() sends, its SLOs (checked on "
    "every run), the most runs it may take (repeats), the tolerance of the baseline comparison and the per-request "
    'SLOs of goodput (goodput={"ttft_ms": 2000, "tpot_ms": 50}); see the pytest-llmperf README.'
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
    # The goodput keyword as metrics.summarize takes it ({"ttft": ms, "tpot": ms, "e2el": ms}); None: no goodput.
    goodput_slos_ms: dict[str, float] | None = None
    # The least capacity llmperf.capacity() must find (its gate); run() ignores it.
    capacity_min: float | None = None


def parse_goodput(value: object) -> dict[str, float]:
    """The ``goodput`` keyword (``{"ttft_ms": 2000, "tpot_ms": 50, "e2el_ms": ...}``) as ``summarize`` takes it.

    A request is good when it succeeded and meets every limit given (vLLM's ``--goodput``, DistServe's
    definition); ``request_goodput`` is good requests per second.
    """
    usage = 'expected a dict such as {"ttft_ms": 2000, "tpot_ms": 50} with keys ' + ", ".join(GOODPUT_KEYS)
    if not isinstance(value, Mapping) or not value:
        raise SpecError(f"goodput={value!r}: {usage}")
    out: dict[str, float] = {}
    for key, limit in value.items():
        if key not in GOODPUT_KEYS:
            close = difflib.get_close_matches(str(key), GOODPUT_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"goodput: unknown key {key!r}{hint}; {usage}")
        metric = GOODPUT_KEYS[key]
        if metric in out:
            raise SpecError("goodput: both 'e2e_ms' and 'e2el_ms' are given (the same metric; keep one)")
        number = isinstance(limit, (int, float)) and not isinstance(limit, bool)
        if not number or not 0 < limit < math.inf:
            raise SpecError(f"goodput: {key}={limit!r} (expected a finite number of milliseconds > 0)")
        out[metric] = float(limit)
    return out


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
    capacity_min = kwargs.pop("capacity_min", None)
    if capacity_min is not None and (
        isinstance(capacity_min, bool) or not isinstance(capacity_min, (int, float)) or not 0 < capacity_min < math.inf
    ):
        raise SpecError(
            f"capacity_min={capacity_min!r}: expected a number > 0 (the least capacity llmperf.capacity() may find)"
        )
    goodput = kwargs.pop("goodput", None)
    goodput_slos_ms = None if goodput is None else parse_goodput(goodput)
    slo_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in SLO_NAMES}
    if "goodput_req_s" in slo_kwargs and goodput_slos_ms is None:
        raise SpecError(
            "goodput_req_s needs the per-request SLOs that make a request good: add "
            'goodput={"ttft_ms": ..., "tpot_ms": ...} (keys ' + ", ".join(GOODPUT_KEYS) + ")"
        )
    if kwargs.get("trace") is not None and "num_prompts" not in kwargs:
        kwargs["num_prompts"] = None  # a trace replays all its lines unless num_prompts takes the first N
    try:
        workload = Workload(**kwargs)
    except TypeError as exc:
        raise SpecError(f"invalid workload arguments: {exc}") from exc
    return PerfSpec(
        workload=workload,
        slos=parse_slos(slo_kwargs),
        repeats=repeats,
        tolerance=tolerance,
        slo_gating=slo_gating,
        goodput_slos_ms=goodput_slos_ms,
        capacity_min=None if capacity_min is None else float(capacity_min),
    )


# Latency SLOs that grow with the sequence lengths; per-token ones (TPOT, ITL) do not and stay as written.
_LENGTH_BOUND_SLOS = ("ttft_", "e2e_")


def scale_spec(spec: PerfSpec, factor: float) -> PerfSpec:
    """``spec`` shrunk for a small engine: lengths and prompt counts × ``factor``, and the TTFT/E2E limits too.

    Prompt counts (conversations, for multi-turn workloads; ``turns`` is kept) keep at least two per concurrency
    slot, so a closed loop still reaches steady batching, and at least
    :data:`~pytest_llmperf.judge.verdict.MIN_REQUESTS_PER_RUN` requests, the fewest from which a run can support a
    regression (never more than the test asked for). Times (``duration_s``, the think time ``turn_gap_s``) are
    scaled too. Throughput, TPOT, ITL and error-rate SLOs are per token or per request and are not scaled.

    A dataset file's prompts (and, without ``dataset_output_len``, its replies' lengths) cannot be shortened;
    ``dataset_output_len`` and ``dataset_context_len`` are scaled (the output at least 4, SGLang's smallest), so
    a scaled context limit keeps the file's shorter conversations. Reports show the lengths the prompts asked for.
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
        turn_gap_s=w.turn_gap_s * factor,  # think time shrinks with the turns' lengths
        dataset_output_len=None
        if w.dataset_output_len is None
        else _scaled_dataset_output(w.dataset_output_len, factor),
        dataset_context_len=None if w.dataset_context_len is None else max(2, round(w.dataset_context_len * factor)),
    )
    slos = tuple(
        dataclasses.replace(slo, limit=slo.limit * factor) if slo.name.startswith(_LENGTH_BOUND_SLOS) else slo
        for slo in spec.slos
    )
    goodput = spec.goodput_slos_ms
    if goodput is not None:  # TTFT and E2E limits of goodput scale as those SLOs do; TPOT's does not
        goodput = {name: limit * factor if name in ("ttft", "e2el") else limit for name, limit in goodput.items()}
    return dataclasses.replace(spec, workload=workload, slos=slos, scale=factor, goodput_slos_ms=goodput)


def _scaled_dataset_output(asked: int, factor: float) -> int:
    return min(asked, max(4, round(asked * factor)))


def build_workload(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Workload:
    """The workload part of :func:`build_spec`."""
    return build_spec(base, overrides).workload
