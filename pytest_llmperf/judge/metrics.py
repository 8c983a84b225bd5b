"""Turn one run's request records into the figures ``vllm bench serve`` or ``sglang.bench_serving`` report.

Pure: no I/O and no pytest. numpy is imported at module level because the orchestrators import this module
lazily. Everything returned is made of builtins (``float``, ``int``, ``str``, ``bool``, ``None``, ``list``,
``dict``) so it can cross pytest-xdist's execnet channel, which rejects numpy scalars by exact type.

Two compatibility modes (``--llmperf-compat``; README, "What is measured") read the same records differently;
``sglang`` differs from the default ``vllm`` only in:

- output events: only events with non-empty text count (all of them if none has text), so TTFT starts at
  the first non-empty text and empty-text chunks yield no ITL;
- E2E ends at the last SSE line read, ``[DONE]`` included, instead of the last output event;
- N_out falls back to the requested ``output_len`` (not the event count) when the server sent no usage;
- N_in is always the dataset length (vLLM prefers ``usage.prompt_tokens``);
- keys: ``*_e2e_latency_ms`` for ``*_e2el_ms``, ``total_throughput`` for ``total_token_throughput``, plus
  ``concurrency`` (Little's law), ``max_itl_ms`` and, with SLOs, ``slo_attainment``.

Both modes also write ``input_throughput`` (SGLang's key; vLLM prints no such figure), per-GPU throughputs when
the GPU count is known (``input_throughput_per_gpu``, ``output_throughput_per_gpu`` and the total under the
mode's key + ``_per_gpu``, as InferenceX divides them) and, when the price of a GPU-hour is known too, the cost
of a million tokens (:func:`cost_figures`).

Success is ours in both modes: HTTP 200 and at least one output event (``RequestRecord.ok``); SGLang's
empty 200 responses that enter its statistics with TTFT 0 are not reproduced.

Conventions of the summary dict: a value of ``None`` means the metric applies but there was no data for it
(e.g. no successful request, or no request with more than one output token), so a report shows "—"; an
absent key means the metric does not apply to this run (GPU count unknown, no per-event token counts, no
goodput SLOs, no client check). Nothing is ever NaN, and nothing unknown is reported as 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypedDict, cast

import numpy as np
import numpy.typing as npt

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge import turns
from pytest_llmperf.results import RequestDetail, RunSummary, Validity
from pytest_llmperf.spec import COMPAT_MODES, CompatMode, RequestRecord, RunRecords

__all__ = [
    "DEFAULT_PERCENTILES",
    "GOODPUT_METRICS",
    "RequestMetrics",
    "cost_figures",
    "detailed",
    "per_gpu_figures",
    "per_request",
    "stat_key",
    "summarize",
]

FloatArray = npt.NDArray[np.float64]
TokenSource = Literal["usage", "continuous_usage", "requested", "events", "none"]

DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
# SLO names accepted by goodput, as vLLM's ``--goodput`` spells them ("e2e" is accepted as an alias).
GOODPUT_METRICS: tuple[str, ...] = ("ttft", "tpot", "e2el")
PERCENTILE_METHOD: Literal["linear"] = "linear"

_E2E_NAME = {"vllm": "e2el", "sglang": "e2e_latency"}


class _Semantics(TypedDict):
    ttft_event: str
    e2e_end: str
    output_tokens_rule: str
    input_tokens_rule: str


_SEMANTICS: dict[str, _Semantics] = {
    "vllm": {
        "ttft_event": "first output event (completions: non-empty choices, text may be empty; "
        "chat: first delta with content, reasoning or tool calls)",
        "e2e_end": "last output event (usage-only chunk and [DONE] excluded)",
        "output_tokens_rule": "usage.completion_tokens, else last continuous-usage count, else output event count",
        "input_tokens_rule": "usage.prompt_tokens, else dataset input_len",
    },
    "sglang": {
        "ttft_event": "first output event with non-empty text",
        "e2e_end": "last SSE line read, including [DONE]",
        "output_tokens_rule": "usage.completion_tokens, else last continuous-usage count, else requested output_len",
        "input_tokens_rule": "dataset input_len",
    },
}
_NO_COUNTS = "no per-event token counts (the server sent no continuous usage stats)"


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """One request as the chosen compatibility mode sees it (seconds; token counts as ints).

    A failed request has ``ok=False``, zero times, no ITL and ``n_out=0`` (``n_out_source="none"``), which is
    how ``vllm bench serve --save-detailed`` writes it.
    """

    ttft_s: float
    e2e_s: float
    # None when n_out <= 1: such a request has no decode phase to divide (vLLM drops it from TPOT).
    tpot_s: float | None
    itl_chunk_s: list[float]
    # None when the per-token split is impossible; ``itl_token_reason`` says why.
    itl_token_s: list[float] | None
    n_in: int
    n_out: int
    n_out_source: TokenSource
    tokens_per_chunk: float | None
    ok: bool
    error: str
    itl_token_reason: str = ""


class _Measured(NamedTuple):
    """``RequestMetrics`` with numpy arrays, so summarize() never builds per-gap Python floats."""

    ok: bool
    error: str
    ttft_s: float
    e2e_s: float
    tpot_s: float | None
    events_s: FloatArray  # output event times in this mode, for the 1-s peak bins
    itl_chunk_s: FloatArray
    itl_token_s: FloatArray | None
    itl_token_reason: str
    n_in: int
    n_out: int
    n_out_source: TokenSource


_EMPTY = np.zeros(0, dtype=np.float64)


def _floats(values: npt.NDArray[np.float64]) -> list[float]:
    """A 1-D array as a list of floats (numpy's stubs type ``tolist`` by dimension, differently by version)."""
    return cast("list[float]", values.tolist())


def per_request(record: RequestRecord, compat: str = "vllm") -> RequestMetrics:
    """The per-request metrics of ``record`` under ``compat`` (``"vllm"`` or ``"sglang"``)."""
    m = _measure(record, _check_compat(compat))
    return RequestMetrics(
        ttft_s=m.ttft_s,
        e2e_s=m.e2e_s,
        tpot_s=m.tpot_s,
        itl_chunk_s=_floats(m.itl_chunk_s),
        itl_token_s=None if m.itl_token_s is None else _floats(m.itl_token_s),
        n_in=m.n_in,
        n_out=m.n_out,
        n_out_source=m.n_out_source,
        tokens_per_chunk=m.n_out / m.events_s.size if m.ok else None,
        ok=m.ok,
        error=m.error,
        itl_token_reason=m.itl_token_reason,
    )


def _measure(record: RequestRecord, compat: str) -> _Measured:
    # A zero prompt count is as useless as a missing one (vLLM treats a 0 completion count the same way).
    n_in = record.input_len
    if compat == "vllm" and record.prompt_tokens is not None and record.prompt_tokens > 0:
        n_in = record.prompt_tokens
    if not record.ok:
        error = _error_text(record)
        return _Measured(False, error, 0.0, 0.0, None, _EMPTY, _EMPTY, None, "failed request", n_in, 0, "none")

    # A copy, not a view: a view of the record's packed array would stop it from growing while the view lives.
    # From an array it is one memcpy (~7x faster than from a list of floats).
    times = np.array(record.event_times_s, dtype=np.float64)
    cums: npt.NDArray[np.int64] | None = None
    reason = ""
    if not record.event_cum_tokens:
        reason = _NO_COUNTS
    elif len(record.event_cum_tokens) != times.size:
        reason = (
            f"{len(record.event_cum_tokens)} per-event token counts for {times.size} output events "
            "(cannot tell which chunk carried which tokens)"
        )
    else:
        cums = np.array(record.event_cum_tokens, dtype=np.int64)
    if compat == "sglang" and len(record.event_has_text) == times.size and any(record.event_has_text):
        # SGLang ignores empty-text chunks entirely; cumulative counts stay correct after the filter because
        # a dropped chunk's tokens are simply credited to the next kept one. If no event carried text we keep
        # them all rather than reproduce SGLang's TTFT of 0.
        keep = np.asarray(record.event_has_text, dtype=bool)
        times = times[keep]
        if cums is not None:
            cums = cums[keep]

    st = record.start_s
    ttft = float(times[0] - st)
    end = float(times[-1])
    if compat == "sglang" and record.last_line_s is not None:
        end = max(end, record.last_line_s)
    e2e = end - st

    n_out: int
    source: TokenSource
    if record.completion_tokens is not None and record.completion_tokens > 0:
        n_out, source = record.completion_tokens, "usage"
    elif record.event_cum_tokens and record.event_cum_tokens[-1] > 0:
        n_out, source = record.event_cum_tokens[-1], "continuous_usage"
    elif compat == "sglang":
        n_out, source = record.output_len, "requested"
    else:
        n_out, source = len(record.event_times_s), "events"

    tpot = (e2e - ttft) / (n_out - 1) if n_out > 1 else None
    itl_token: FloatArray | None = None
    if cums is not None:
        itl_token = _split_gaps(times, cums)
        if itl_token is None:
            reason = "per-event token counts decrease (not cumulative)"
    return _Measured(True, "", ttft, e2e, tpot, times, np.diff(times), itl_token, reason, n_in, n_out, source)


def _split_gaps(times: FloatArray, cums: npt.NDArray[np.int64]) -> FloatArray | None:
    """Per-token ITL: each chunk gap divided evenly over the k tokens the chunk added.

    The first event is the reference, so its own tokens (arriving with TTFT) yield no ITL. A chunk that adds
    no token (k == 0, e.g. an empty-text or finish-only chunk) is skipped: its gap is folded into the gap of
    the next chunk that adds tokens, because those tokens were being produced during it. Zero-token chunks
    after the last token-bearing one have no token to attribute their gap to and are dropped. When the first
    event carries one token and the last one adds tokens, the gaps sum to ``e2e − ttft`` over ``n_out − 1``
    tokens, so their mean equals TPOT.
    """
    deltas = np.diff(cums)
    if np.any(deltas < 0):
        return None
    chain = np.concatenate(([0], 1 + np.flatnonzero(deltas > 0)))
    k = np.diff(cums[chain])
    return np.repeat(np.diff(times[chain]) / k, k)


def _error_text(r: RequestRecord) -> str:
    if r.error:
        return r.error
    if r.status is None:
        return "no HTTP response"
    if r.status != 200:
        return f"HTTP status {r.status}"
    return "no output event received (HTTP 200 with an empty stream)"


def _error_kind(r: RequestRecord) -> str:
    if r.error_kind:
        return r.error_kind
    if r.status is not None and r.status != 200:
        return f"http_{r.status}"
    if r.error:
        return "other"
    return "no_response" if r.status is None else "no_output"


def detailed(run: RunRecords, *, compat: str | None = None) -> RequestDetail:
    """Per-request arrays in the shape of ``vllm bench serve --save-detailed``, in dispatch (index) order.

    Seconds, as vLLM writes them; ``start_times`` are the raw ``perf_counter`` stamps, ``queue_times`` each
    request's wait on the client (for a concurrency slot) between its arrival and its send. Failed requests
    appear with 0 / ``[]`` and their error text. ``output_tokens_source`` and ``finish_reasons`` are ours.
    """
    mode = _check_compat(run.workload.compat if compat is None else compat)
    out: RequestDetail = {
        "input_lens": [],
        "output_lens": [],
        "ttfts": [],
        "itls": [],
        "latencies": [],
        "start_times": [],
        "queue_times": [],
        "errors": [],
        "output_tokens_source": [],
        "finish_reasons": [],
    }
    for r in sorted(run.records, key=lambda rec: rec.index):
        m = _measure(r, mode)
        out["input_lens"].append(m.n_in)
        out["output_lens"].append(m.n_out)
        out["ttfts"].append(m.ttft_s)
        out["itls"].append(_floats(m.itl_chunk_s))
        out["latencies"].append(m.e2e_s)
        out["start_times"].append(float(r.start_s))
        out["queue_times"].append(float(r.start_s - r.arrival_s))  # vLLM's: the wait for a concurrency slot
        out["errors"].append(m.error)
        out["output_tokens_source"].append(m.n_out_source)
        out["finish_reasons"].append(r.finish_reason)
    return out


def stat_key(metric: str, stat: str, compat: str = "vllm") -> str:
    """The summary key holding ``stat`` of ``metric`` in ``compat`` mode.

    ``metric``: ``ttft``, ``tpot``, ``itl``, ``e2e`` (also ``e2el``), ``itl_token``, ``client_queue``;
    ``stat``: ``mean``, ``median``, ``std``, ``max`` (sglang ITL only) or ``p<P>`` — e.g.
    ``stat_key("e2e", "p50") == "p50_e2el_ms"`` and ``"p50_e2e_latency_ms"`` in sglang mode.
    """
    mode = _check_compat(compat)
    name = _E2E_NAME[mode] if metric in ("e2e", "e2el", "e2e_latency") else metric
    return f"{stat}_{name}_ms"


def summarize(
    run: RunRecords,
    *,
    compat: str | None = None,
    gpu_count: int | None = None,
    goodput_slos_ms: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    gpu_cost_per_hour: float | None = None,
) -> RunSummary:
    """The run summary: vLLM-compatible keys (or SGLang's with ``compat="sglang"``), builtins only.

    Latency statistics are over successful requests: ``np.mean``, ``np.median``, population ``np.std`` and
    linear ``np.percentile``, in ms. ``percentiles`` picks the ``p<P>_*`` keys. ``goodput_slos_ms`` maps
    ``ttft``/``tpot``/``e2el`` to a maximum in ms. Per-GPU throughputs appear only when ``gpu_count`` is
    given, and the cost keys only when ``gpu_cost_per_hour`` (USD per GPU-hour) is given as well.
    Invalid arguments raise :class:`SpecError`; the records are never modified.
    """
    mode = _check_compat(run.workload.compat if compat is None else compat)
    pcts = _check_percentiles(percentiles)
    slos = _check_slos(goodput_slos_ms)
    bad_gpus = isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1
    if gpu_count is not None and bad_gpus:
        raise SpecError(f"gpu_count={gpu_count!r} (expected an int >= 1, or None when unknown)")
    _check_price(gpu_cost_per_hour)

    records = run.records
    measured = [_measure(r, mode) for r in records]
    good = [(r, m) for r, m in zip(records, measured, strict=True) if m.ok]
    completed = len(good)
    failed = len(records) - completed
    dur = run.duration_s
    e2e_name = _E2E_NAME[mode]

    s: RunSummary = {"compat_mode": mode, "percentile_method": PERCENTILE_METHOD}
    semantics = _SEMANTICS[mode]
    s["ttft_event"] = semantics["ttft_event"]
    s["e2e_end"] = semantics["e2e_end"]
    s["output_tokens_rule"] = semantics["output_tokens_rule"]
    s["input_tokens_rule"] = semantics["input_tokens_rule"]
    s["itl_unit"] = "chunk"
    s["duration"] = float(dur)
    s["completed"] = completed
    s["failed"] = failed
    s["error_rate"] = failed / len(records) if records else None
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for r, m in zip(records, measured, strict=True):
        if not m.ok:
            kind = _error_kind(r)
            errors[kind] += 1
            # Bounded: an error text can be a whole HTML error page.
            examples.setdefault(kind, m.error[:300])
    s["errors"] = dict(errors)
    s["error_examples"] = examples
    s["warmup_requests"] = len(run.warmup_records)
    # Attempts that never reached the server (closed keep-alive connections), retried on a fresh one.
    s["connection_retries"] = sum(r.connection_retries for r in run.records)

    n_in = [m.n_in for _, m in good]
    n_out = [m.n_out for _, m in good]
    total_in, total_out = int(sum(n_in)), int(sum(n_out))
    s["total_input_tokens"] = total_in
    s["total_output_tokens"] = total_out

    # Throughput with zero completions in a positive window is a real 0; only a broken window is unknown.
    def rate(x: float) -> float | None:
        return x / dur if dur > 0 else None

    s["request_throughput"] = rate(completed)
    # SGLang's key, written in vLLM mode too (prefill throughput); N_in as the mode counts it.
    s["input_throughput"] = rate(total_in)
    out_tp, total_tp = rate(total_out), rate(total_in + total_out)
    s["output_throughput"] = out_tp
    if mode == "sglang":
        s["total_throughput"] = total_tp
        # Little's law, as sglang.bench_serving reports it.
        s["concurrency"] = rate(sum(m.e2e_s for _, m in good))
    else:
        s["total_token_throughput"] = total_tp

    if slos is not None:
        n_good = sum(_meets_slos(m, slos) for _, m in good)
        s["goodput_slos_ms"] = dict(slos)
        s["good_requests"] = n_good
        s["request_goodput"] = rate(n_good)
        if mode == "sglang":
            s["slo_attainment"] = n_good / len(records) if records else None

    peak_tokens, peak_requests = _peaks([r.start_s for r, _ in good], [m for _, m in good])
    s["max_output_tokens_per_s"] = peak_tokens
    s["max_concurrent_requests"] = peak_requests

    if gpu_count is not None:
        s["gpu_count"] = gpu_count
        # Keys that follow the mode (the total's): written through a plain-dict view, as in _add_stats.
        figures = cast("dict[str, object]", s)
        figures.update(per_gpu_figures(s, gpu_count))
        if gpu_cost_per_hour is not None:
            s["gpu_cost_per_hour"] = float(gpu_cost_per_hour)
            figures.update(cost_figures(s, gpu_count, gpu_cost_per_hour))

    ms = [m for _, m in good]
    _add_stats(s, "ttft", np.array([m.ttft_s for m in ms], dtype=np.float64), pcts)
    tpots = np.array([m.tpot_s for m in ms if m.tpot_s is not None], dtype=np.float64)
    _add_stats(s, "tpot", tpots, pcts)
    itls = np.concatenate([m.itl_chunk_s for m in ms]) if ms else _EMPTY
    _add_stats(s, "itl", itls, pcts)
    if mode == "sglang":
        s["max_itl_ms"] = float(np.max(itls) * 1000) if itls.size else None
    _add_stats(s, e2e_name, np.array([m.e2e_s for m in ms], dtype=np.float64), pcts)
    if turns.is_multi_turn(records):  # TTFT of first turns apart from later ones, whose prefix may be cached
        s["conversations"] = len({r.conversation for r in records})
        s["ttft_by_turn"] = turns.by_turn([(r, m.ttft_s, m.n_in) for r, m in good])
        for name, wanted in (("ttft_turn1", True), ("ttft_later_turns", False)):
            picked = [m.ttft_s for r, m in good if (r.turn == 1) == wanted]
            _add_stats(s, name, np.array(picked, dtype=np.float64), pcts)

    # Per-token ITL is pooled only when every successful request has it: a subset would be biased towards
    # whichever requests happened to carry counts.
    missing = [m for m in ms if m.itl_token_s is None]
    if not ms:
        s["per_token_itl_source"] = "unavailable: no successful request"
    elif missing:
        s["per_token_itl_source"] = (
            f"unavailable: {len(missing)}/{completed} successful requests lack usable per-event token "
            f"counts: {missing[0].itl_token_reason}"
        )
    else:
        s["per_token_itl_source"] = "continuous_usage"
        per_token = [m.itl_token_s for m in ms if m.itl_token_s is not None]
        _add_stats(s, "itl_token", np.concatenate(per_token), pcts)

    median_tpot = s["median_tpot_ms"]
    s["interactivity"] = 1000.0 / median_tpot if median_tpot else None
    n_chunks = sum(m.events_s.size for m in ms)
    # Pooled over chunks (Σ tokens / Σ chunks), like a speculative decoder's acceptance length, so long
    # requests weigh in proportion to their chunks.
    s["mean_tokens_per_chunk"] = total_out / n_chunks if n_chunks else None
    s["output_tokens_source"] = dict(Counter(m.n_out_source for m in ms))
    queue = np.array([r.start_s - r.arrival_s for r, _ in good], dtype=np.float64)
    _add_stats(s, "client_queue", queue, pcts)

    s["validity"] = _validity(run, good, dur)
    if run.client is not None:
        c = run.client
        s["client_bound"] = bool(c.client_bound)
        s["client_loop_lag_p50_ms"] = float(c.loop_lag_p50_ms)
        s["client_loop_lag_p99_ms"] = float(c.loop_lag_p99_ms)
        s["client_loop_lag_max_ms"] = float(c.loop_lag_max_ms)
        s["client_dispatch_lag_p99_ms"] = float(c.dispatch_lag_p99_ms)
        # How long streamed bytes waited unread in the socket buffers (None: not sampled).
        s["client_unread_wait_mean_ms"] = c.unread_wait_mean_ms
        s["client_unread_p99_kib"] = c.unread_p99_kib
        s["client_cpu_s"] = float(c.client_cpu_s)
        s["client_cpu_fraction"] = float(c.client_cpu_fraction)
        s["client_reasons"] = list(c.reasons)
        s["client_busy_poll"] = bool(c.busy_poll)
        s["client_processes"] = int(c.processes)  # > 1: the figures above are the worst shard's, CPU summed
        if c.per_process:
            s["client_per_process"] = [
                {
                    "client_bound": bool(p.client_bound),
                    "cpu_fraction": float(p.client_cpu_fraction),
                    "loop_lag_p99_ms": float(p.loop_lag_p99_ms),
                    "unread_wait_mean_ms": p.unread_wait_mean_ms,
                }
                for p in c.per_process
            ]
    s["interrupted"] = bool(run.interrupted)
    s["notes"] = list(run.notes)
    return s


_TOTAL_KEYS = ("total_token_throughput", "total_throughput")  # vLLM's key, SGLang's


def _figure(summary: Mapping[str, object], *keys: str) -> float | None:
    """The first of ``keys`` that holds a number in ``summary`` (a bool is not one)."""
    for key in keys:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def per_gpu_figures(summary: Mapping[str, object], gpu_count: int) -> dict[str, float | None]:
    """Throughputs per GPU of a summary (either mode), as InferenceX's ``process_result.py`` divides them.

    ``input_throughput_per_gpu`` (prefill, e.g. GB300's 7,360 tok/s/GPU), ``output_throughput_per_gpu`` and the
    total under the summary's own key + ``_per_gpu`` (``total_token_throughput_per_gpu`` in vLLM mode,
    ``total_throughput_per_gpu`` in sglang mode). A throughput the summary lacks is ``None`` (its per-GPU figure
    applies but is unknown); the input throughput of an older vLLM-mode summary is total − output.
    """
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise SpecError(f"gpu_count={gpu_count!r} (expected an int >= 1)")
    out_tp, total_tp = _figure(summary, "output_throughput"), _figure(summary, *_TOTAL_KEYS)
    in_tp = _figure(summary, "input_throughput")
    if in_tp is None and total_tp is not None and out_tp is not None:
        in_tp = total_tp - out_tp
    total_key = "total_throughput" if summary.get("compat_mode") == "sglang" else "total_token_throughput"

    def per_gpu(value: float | None) -> float | None:
        return None if value is None else value / gpu_count

    return {
        "input_throughput_per_gpu": per_gpu(in_tp),
        "output_throughput_per_gpu": per_gpu(out_tp),
        f"{total_key}_per_gpu": per_gpu(total_tp),
    }


def cost_figures(
    summary: Mapping[str, object], gpu_count: int | None, gpu_cost_per_hour: float | None
) -> dict[str, float | None]:
    """What a summary's tokens cost, as InferenceX prices them: ``gpu_cost_per_hour × gpu_count`` dollars buy
    an hour of throughput (tokens/s × 3600).

    Keys: ``cost_per_million_output_tokens``, ``cost_per_million_total_tokens`` (USD) and
    ``output_tokens_per_dollar``, ``total_tokens_per_dollar``. Empty (no key at all, never 0) when the price or
    the GPU count is unknown. A throughput the summary lacks gives ``None``; a throughput of 0 costs ``None``
    per million tokens (no token was bought) and buys 0 tokens per dollar. E.g. 1,000 output tok/s on 8 GPUs
    at $2 per GPU-hour: $16/h for 3.6 M tok/h, $4.444 per million output tokens.
    """
    if gpu_count is None or gpu_cost_per_hour is None:
        return {}
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise SpecError(f"gpu_count={gpu_count!r} (expected an int >= 1, or None when unknown)")
    _check_price(gpu_cost_per_hour)
    dollars_per_hour = float(gpu_cost_per_hour) * gpu_count
    out: dict[str, float | None] = {}
    for name, value in (("output", _figure(summary, "output_throughput")), ("total", _figure(summary, *_TOTAL_KEYS))):
        tokens_per_hour = None if value is None else value * 3600.0
        out[f"cost_per_million_{name}_tokens"] = dollars_per_hour / tokens_per_hour * 1e6 if tokens_per_hour else None
        out[f"{name}_tokens_per_dollar"] = None if tokens_per_hour is None else tokens_per_hour / dollars_per_hour
    return out


def _check_price(price: float | None) -> None:
    number = isinstance(price, (int, float)) and not isinstance(price, bool)
    if price is not None and not (number and math.isfinite(price) and price > 0):
        raise SpecError(f"gpu_cost_per_hour={price!r} (expected a finite price in USD > 0, or None when unknown)")


def _meets_slos(m: _Measured, slos: Mapping[str, float]) -> bool:
    # Compared in seconds against ms/1000, as vLLM does, so boundary cases agree with it bit for bit.
    values = {"ttft": m.ttft_s, "tpot": m.tpot_s or 0.0, "e2el": m.e2e_s}
    return all(values[name] <= limit / 1000 for name, limit in slos.items())


def _peaks(starts: list[float], ms: list[_Measured]) -> tuple[float | None, int | None]:
    """vLLM's peak figures: 1-s bins from the earliest start; output events (chunks) and active requests.

    vLLM anchors the bins on every request's start; we anchor on successful ones so that a failed request
    without a start stamp cannot stretch them. Both agree whenever the first request succeeded.
    """
    if not ms:
        return None, None
    start = np.asarray(starts, dtype=np.float64)
    end = start + np.array([m.e2e_s for m in ms], dtype=np.float64)
    t0 = float(start.min())
    n_bins = math.ceil(float(end.max()) - t0) + 1
    bins = np.floor(np.concatenate([m.events_s for m in ms]) - t0).astype(np.int64)
    bins = bins[(bins >= 0) & (bins < n_bins)]
    per_bin_chunks = np.bincount(bins, minlength=n_bins)
    # A request counts as active in every bin from its start bin to its end bin inclusive.
    edges = np.zeros(n_bins + 1, dtype=np.int64)
    np.add.at(edges, np.floor(start - t0).astype(np.int64), 1)
    np.add.at(edges, np.minimum(np.floor(end - t0).astype(np.int64), n_bins - 1) + 1, -1)
    active = np.cumsum(edges[:-1])
    return float(per_bin_chunks.max()), int(active.max())


def _add_stats(summary: RunSummary, name: str, values: FloatArray, pcts: list[tuple[str, float]]) -> None:
    # The keys depend on the percentiles asked for (p<P>, any P): written through a plain-dict view, as
    # RunSummary can only name the default ones.
    s = cast("dict[str, float | None]", summary)
    # Statistic in seconds then ×1000, the order vLLM uses, so the floats match its JSON exactly.
    if values.size == 0:
        for stat in ("mean", "median", "std", *(f"p{label}" for label, _ in pcts)):
            s[f"{stat}_{name}_ms"] = None
        return
    s[f"mean_{name}_ms"] = float(np.mean(values) * 1000)
    s[f"median_{name}_ms"] = float(np.median(values) * 1000)
    s[f"std_{name}_ms"] = float(np.std(values) * 1000)
    for label, p in pcts:
        s[f"p{label}_{name}_ms"] = float(np.percentile(values, p, method=PERCENTILE_METHOD) * 1000)


def _validity(run: RunRecords, good: list[tuple[RequestRecord, _Measured]], dur: float) -> Validity:
    """Did the server do what was asked? Counts over successful requests, plus readable warnings."""
    w = run.workload
    total = len(good)
    warnings: list[str] = []

    reported_in = [r for r, _ in good if r.prompt_tokens is not None and r.prompt_tokens > 0]
    in_mismatch = sum(r.prompt_tokens != r.input_len for r in reported_in)
    if in_mismatch:
        warnings.append(
            f"{in_mismatch}/{len(reported_in)} requests had a server-counted prompt length different from "
            "the requested input_len (chat template or BOS tokens, or a tokenizer mismatch)"
        )

    checked_out: int | None = None
    short: int | None = None
    long: int | None = None
    if w.ignore_eos:
        # Only server counts can be trusted for this: an event count assumes one token per chunk and the
        # sglang fallback is the requested length itself.
        counted = [(r, m) for r, m in good if m.n_out_source in ("usage", "continuous_usage")]
        checked_out = len(counted)
        short = sum(m.n_out < r.output_len for r, m in counted)
        long = sum(m.n_out > r.output_len for r, m in counted)
        if short:
            warnings.append(
                f"{short}/{checked_out} requests returned fewer output tokens than requested although "
                "ignore_eos was set"
            )
        if long:
            warnings.append(f"{long}/{checked_out} requests returned more output tokens than requested")
        stopped = sum(r.finish_reason == "stop" for r, _ in good)
        if stopped:
            warnings.append(
                f"{stopped}/{total} requests finished with finish_reason 'stop' although ignore_eos was set "
                "(does the server honour ignore_eos?)"
            )

    sources = Counter(m.n_out_source for _, m in good)
    if sources["events"]:
        warnings.append(
            f"{sources['events']}/{total} requests reported no usage: output tokens were counted as output "
            "events (one token per chunk assumed); request stream_options.include_usage"
        )
    if sources["requested"]:
        warnings.append(
            f"{sources['requested']}/{total} requests reported no usage: output tokens were assumed to equal "
            "the requested output_len (sglang.bench_serving's rule)"
        )
    if dur <= 0:
        warnings.append(f"the measured window is {dur!r} s (bench_end_s <= bench_start_s); throughputs are unknown")
    if run.client is not None and run.client.client_bound:
        why = "; ".join(run.client.reasons) or "no reason recorded"
        warnings.append(f"the load generator was the bottleneck, latencies include client delay: {why}")
    if run.interrupted:
        warnings.append("the run was interrupted: figures cover only the requests that finished")

    finish = Counter("unreported" if r.finish_reason is None else r.finish_reason for r, _ in good)
    return {
        "input_len_checked": len(reported_in),
        "input_len_mismatch": in_mismatch,
        "output_len_checked": checked_out,
        "output_len_mismatch": None if short is None or long is None else short + long,
        "output_len_short": short,
        "output_len_long": long,
        "finish_reasons": dict(finish),
        "warnings": warnings,
    }


def _check_compat(compat: str) -> CompatMode:
    if compat == "vllm":
        return "vllm"
    if compat == "sglang":
        return "sglang"
    raise SpecError(f"compat={compat!r} (expected one of {', '.join(COMPAT_MODES)})")


def _check_percentiles(percentiles: Sequence[float]) -> list[tuple[str, float]]:
    """Validated (label, value) pairs; labels as vLLM prints them (99 → "99", 99.9 → "99.9")."""
    out: dict[str, float] = {}
    for p in percentiles:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            raise SpecError(f"percentile {p!r} (expected a number between 0 and 100, e.g. 99 or 99.9)")
        value = float(p)
        out[str(int(value)) if value.is_integer() else str(value)] = value
    return list(out.items())


def _check_slos(slos: Mapping[str, float] | None) -> dict[str, float] | None:
    if slos is None:
        return None
    out: dict[str, float] = {}
    for name, limit in slos.items():
        key = "e2el" if name == "e2e" else name
        if key not in GOODPUT_METRICS:
            raise SpecError(f"goodput SLO {name!r} (expected one of {', '.join(GOODPUT_METRICS)})")
        if key in out:
            raise SpecError("goodput SLOs give both 'e2e' and 'e2el' (they are the same metric; keep one)")
        number = isinstance(limit, (int, float)) and not isinstance(limit, bool)
        if not number or not 0 <= limit < math.inf:
            raise SpecError(f"goodput SLO {name}={limit!r} (expected a finite number of milliseconds >= 0)")
        out[key] = float(limit)
    return out
