"""Unit tests of pytest_llmperf.judge.metrics: every formula checked against arithmetic done by hand.

Times are chosen as binary fractions (0.25, 0.125, ...) where possible so that most expectations are exact;
``approx`` is used where a division (e.g. 1/3) cannot be.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from pytest_llmperf.errors import SpecError
from pytest_llmperf.judge.metrics import RequestMetrics, detailed, per_request, stat_key, summarize
from pytest_llmperf.spec import ClientCheck, RequestRecord, RunRecords, Workload


def rec(
    index: int = 0,
    *,
    start: float = 10.0,
    events: Sequence[float] = (),
    cums: Sequence[int] = (),
    has_text: Sequence[bool] | None = None,
    arrival: float | None = None,
    input_len: int = 8,
    output_len: int = 4,
    status: int | None = 200,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    last_line: float | None = None,
    finish: str | None = "length",
    error: str = "",
    error_kind: str = "",
) -> RequestRecord:
    return RequestRecord(
        index=index,
        arrival_s=start if arrival is None else arrival,
        input_len=input_len,
        output_len=output_len,
        start_s=start,
        status=status,
        event_times_s=list(events),
        event_cum_tokens=list(cums),
        event_has_text=[True] * len(events) if has_text is None else list(has_text),
        last_line_s=last_line,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish,
        error=error,
        error_kind=error_kind,
    )


def run_of(
    *records: RequestRecord,
    start: float = 10.0,
    end: float = 12.0,
    workload: Workload | None = None,
    **kw: Any,
) -> RunRecords:
    wl = workload if workload is not None else Workload(input_len=8, output_len=4)
    return RunRecords(workload=wl, records=list(records), bench_start_s=start, bench_end_s=end, **kw)


def single() -> RequestRecord:
    # st = 10.0, events 10.5, 10.75, 11.0, 11.5; usage: 8 prompt, 4 completion tokens; queued 0.25 s.
    return rec(
        start=10.0,
        arrival=9.75,
        events=[10.5, 10.75, 11.0, 11.5],
        prompt_tokens=8,
        completion_tokens=4,
    )


# --- per request --------------------------------------------------------------------------------------------


def test_per_request_single_request() -> None:
    m = per_request(single(), "vllm")
    assert isinstance(m, RequestMetrics)
    assert m.ok
    assert m.error == ""
    assert m.ttft_s == 0.5  # 10.5 - 10.0
    assert m.e2e_s == 1.5  # 11.5 - 10.0
    assert m.tpot_s == pytest.approx(1 / 3)  # (1.5 - 0.5) / (4 - 1)
    assert m.itl_chunk_s == [0.25, 0.25, 0.5]  # consecutive gaps
    assert m.itl_token_s is None  # no per-event counts
    assert "continuous usage" in m.itl_token_reason
    assert (m.n_in, m.n_out, m.n_out_source) == (8, 4, "usage")
    assert m.tokens_per_chunk == 1.0  # 4 tokens / 4 chunks


def test_per_token_itl_splits_multi_token_chunks() -> None:
    # Cumulative counts 1, 3, 3, 6: chunk 2 adds 2 tokens, chunk 3 none, chunk 4 adds 3.
    r = rec(start=100.0, events=[100.25, 100.75, 100.875, 101.25], cums=[1, 3, 3, 6])
    m = per_request(r)
    assert (m.n_out, m.n_out_source) == (6, "continuous_usage")  # last cumulative count
    assert m.ttft_s == 0.25
    assert m.e2e_s == 1.25
    assert m.tpot_s == pytest.approx(0.2)  # (1.25 - 0.25) / 5
    assert m.itl_chunk_s == [0.5, 0.125, 0.375]  # one gap per chunk, as vLLM
    # Chunk 2: 0.5 s over 2 tokens -> 0.25, 0.25. Chunk 3 adds nothing: its 0.125 s is folded into chunk 4,
    # whose span from chunk 2 is 101.25 - 100.75 = 0.5 s over 3 tokens -> 1/6 each.
    assert m.itl_token_s == pytest.approx([0.25, 0.25, 1 / 6, 1 / 6, 1 / 6])
    assert m.itl_token_s is not None
    # The split conserves time: mean per-token ITL == TPOT when the first chunk has one token.
    assert sum(m.itl_token_s) / len(m.itl_token_s) == pytest.approx(m.tpot_s)
    assert m.tokens_per_chunk == 1.5  # 6 tokens / 4 chunks


def test_per_token_itl_drops_trailing_zero_token_chunk_and_handles_empty_first_chunk() -> None:
    # Trailing finish-only chunk at 101.5 adds no token: no token to charge its 0.25 s gap to.
    r = rec(start=100.0, events=[100.25, 100.75, 101.25, 101.5], cums=[1, 3, 6, 6])
    m = per_request(r)
    assert m.itl_token_s == pytest.approx([0.25, 0.25, 1 / 6, 1 / 6, 1 / 6])
    assert m.itl_chunk_s == [0.5, 0.5, 0.25]
    assert m.tpot_s == pytest.approx(0.25)  # (1.5 - 0.25) / 5: E2E still ends at the last event
    # First event carries no token (cum 0): the 2 tokens of the next chunk share the gap from it.
    m = per_request(rec(start=0.0, events=[0.5, 1.0, 1.5], cums=[0, 2, 3]))
    assert m.itl_token_s == [0.25, 0.25, 0.5]  # 0.5/2, 0.5/2, 0.5/1
    assert m.tpot_s == 0.5  # (1.5 - 0.5) / (3 - 1)


def test_per_token_itl_unusable_counts() -> None:
    decreasing = per_request(rec(start=0.0, events=[0.5, 1.0, 1.5], cums=[1, 3, 2]))
    assert decreasing.itl_token_s is None
    assert "decrease" in decreasing.itl_token_reason
    misaligned = per_request(rec(start=0.0, events=[0.5, 1.0, 1.5], cums=[1, 3]))
    assert misaligned.itl_token_s is None
    assert "2 per-event token counts for 3 output events" in misaligned.itl_token_reason
    # The last cumulative count is still a valid output count.
    assert (misaligned.n_out, misaligned.n_out_source) == (3, "continuous_usage")


def test_usage_missing_falls_back_to_events_in_vllm_and_requested_in_sglang() -> None:
    r = rec(start=0.0, events=[0.5, 0.75, 1.0], output_len=5)
    v = per_request(r, "vllm")
    assert (v.n_out, v.n_out_source) == (3, "events")  # one token per event
    assert v.tpot_s == 0.25  # (1.0 - 0.5) / (3 - 1)
    s = per_request(r, "sglang")
    assert (s.n_out, s.n_out_source) == (5, "requested")  # requested output_len
    assert s.tpot_s == 0.125  # (1.0 - 0.5) / (5 - 1)
    # A reported 0 completion count is treated as missing, as vLLM does.
    assert per_request(rec(start=0.0, events=[0.5], completion_tokens=0)).n_out_source == "events"


def test_n_in_prefers_server_count_in_vllm_mode_only() -> None:
    r = rec(events=[10.5], prompt_tokens=11, input_len=8)
    assert per_request(r, "vllm").n_in == 11
    assert per_request(r, "sglang").n_in == 8
    assert per_request(rec(events=[10.5], prompt_tokens=None, input_len=8)).n_in == 8


def test_failed_request_metrics_are_zero_with_error_text() -> None:
    m = per_request(rec(status=503, events=[], input_len=8))
    assert not m.ok
    assert (m.ttft_s, m.e2e_s, m.tpot_s, m.itl_chunk_s, m.itl_token_s) == (0.0, 0.0, None, [], None)
    assert (m.n_in, m.n_out, m.n_out_source) == (8, 0, "none")
    assert m.error == "HTTP status 503"
    assert per_request(rec(events=[])).error.startswith("no output event")
    # Events seen before a mid-stream error do not make it a success.
    cut = per_request(rec(events=[10.5, 11.0], error="connection reset", error_kind="read"))
    assert not cut.ok
    assert cut.error == "connection reset"


def test_sglang_ttft_at_first_text_event_and_e2e_at_done_line() -> None:
    # Event 1 at 10.25 has empty text; [DONE] is read at 11.25, after the last event at 11.0.
    r = rec(
        start=10.0,
        events=[10.25, 10.5, 10.75, 11.0],
        has_text=[False, True, True, True],
        last_line=11.25,
        completion_tokens=3,
    )
    v = per_request(r, "vllm")
    assert v.ttft_s == 0.25  # first event, text may be empty
    assert v.e2e_s == 1.0  # last event
    assert v.itl_chunk_s == [0.25, 0.25, 0.25]
    s = per_request(r, "sglang")
    assert s.ttft_s == 0.5  # first event with text
    assert s.e2e_s == 1.25  # [DONE] line
    assert s.itl_chunk_s == [0.25, 0.25]  # empty-text chunk ignored
    assert s.tpot_s == 0.375  # (1.25 - 0.5) / (3 - 1)
    # If no event had text we keep them all rather than report a TTFT of 0.
    none = per_request(rec(start=10.0, events=[10.25, 10.5], has_text=[False, False]), "sglang")
    assert none.ttft_s == 0.25


# --- summary ------------------------------------------------------------------------------------------------


def test_summary_single_request() -> None:
    s = summarize(run_of(single(), start=10.0, end=12.0))
    assert s["compat_mode"] == "vllm"
    assert s["percentile_method"] == "linear"
    assert "ttft_event" in s
    assert "e2e_end" in s
    assert s["duration"] == 2.0  # 12.0 - 10.0
    assert (s["completed"], s["failed"], s["error_rate"]) == (1, 0, 0.0)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (8, 4)
    assert s["request_throughput"] == 0.5  # 1 / 2
    assert s["output_throughput"] == 2.0  # 4 / 2
    assert s["total_token_throughput"] == 6.0  # (8 + 4) / 2
    assert s["mean_ttft_ms"] == 500.0
    assert s["std_ttft_ms"] == 0.0
    assert s["mean_e2el_ms"] == s["p99_e2el_ms"] == 1500.0
    assert s["mean_tpot_ms"] == pytest.approx(1000 / 3)
    # ITL values 250, 250, 500 ms: mean 1000/3; median 250; population std 250·sqrt(2)/3
    # (deviations -1/3, -1/3, 2/3 of 250 -> variance (1+1+4)/27 = 2/9 of 250²);
    # linear p99 at rank 0.99·2 = 1.98 -> 250 + 0.98·250 = 495; p90 at 1.8 -> 450; p50 at 1 -> 250.
    assert s["mean_itl_ms"] == pytest.approx(1000 / 3)
    assert s["median_itl_ms"] == 250.0
    assert s["std_itl_ms"] == pytest.approx(250 * math.sqrt(2) / 3)
    assert s["p99_itl_ms"] == pytest.approx(495.0)
    assert s["p95_itl_ms"] == pytest.approx(475.0)
    assert s["p90_itl_ms"] == pytest.approx(450.0)
    assert s["p50_itl_ms"] == 250.0
    assert s["interactivity"] == pytest.approx(3.0)  # 1000 / (1000/3) tok/s/user
    assert s["mean_tokens_per_chunk"] == 1.0
    assert s["output_tokens_source"] == {"usage": 1}
    assert s["mean_client_queue_ms"] == 250.0  # 10.0 - 9.75
    # Events at 10.5, 10.75 fall in bin 0 and 11.0, 11.5 in bin 1 (bins from the start at 10.0).
    assert s["max_output_tokens_per_s"] == 2.0
    assert s["max_concurrent_requests"] == 1
    assert s["per_token_itl_source"].startswith("unavailable: 1/1")
    assert "mean_itl_token_ms" not in s
    assert "output_throughput_per_gpu" not in s  # GPU count unknown: omitted, never 0
    assert "request_goodput" not in s
    assert "client_bound" not in s
    assert s["errors"] == {}
    assert s["interrupted"] is False
    assert s["notes"] == []


def test_summary_per_token_itl_with_continuous_usage() -> None:
    a = rec(0, start=100.0, events=[100.25, 100.75, 100.875, 101.25], cums=[1, 3, 3, 6])
    b = rec(1, start=100.0, events=[100.5, 101.0], cums=[1, 2])  # one token per chunk: ITL 0.5
    s = summarize(run_of(a, b, start=100.0, end=102.0))
    assert s["per_token_itl_source"] == "continuous_usage"
    # Pooled per-token ITL: 250, 250, 166.7×3 (request a) and 500 (request b) ms.
    pooled = [250.0, 250.0, 1000 / 6, 1000 / 6, 1000 / 6, 500.0]
    assert s["mean_itl_token_ms"] == pytest.approx(np.mean(pooled))
    # Sorted 166.7, 166.7, 166.7, 250, 250, 500: median = (166.7 + 250) / 2 = 208.3.
    assert s["median_itl_token_ms"] == pytest.approx((1000 / 6 + 250) / 2)
    assert s["p99_itl_token_ms"] == pytest.approx(np.percentile(pooled, 99))
    # Per chunk: 500, 125, 375 (a) and 500 (b).
    assert s["mean_itl_ms"] == 375.0  # 1500 / 4
    assert s["mean_tokens_per_chunk"] == pytest.approx(8 / 6)  # (6 + 2) tokens / (4 + 2) chunks
    assert s["output_tokens_source"] == {"continuous_usage": 2}


def test_summary_tokens_per_chunk_is_pooled() -> None:
    a = rec(0, start=0.0, events=[0.5, 1.0], completion_tokens=6)  # 3 tokens per chunk
    b = rec(1, start=0.0, events=[0.5, 0.75, 1.0, 1.25], completion_tokens=4)  # 1 per chunk
    s = summarize(run_of(a, b, start=0.0, end=2.0))
    assert s["mean_tokens_per_chunk"] == pytest.approx(10 / 6)  # (6 + 4) / (2 + 4), not (3 + 1) / 2


def test_summary_per_token_itl_absent_when_any_request_lacks_counts() -> None:
    a = rec(0, start=100.0, events=[100.25, 100.75], cums=[1, 3])
    b = rec(1, start=100.0, events=[100.5, 101.0], completion_tokens=2)
    s = summarize(run_of(a, b, start=100.0, end=102.0))
    assert s["per_token_itl_source"].startswith("unavailable: 1/2 successful requests")
    assert not any(key.endswith("_itl_token_ms") for key in s)


def test_tpot_excludes_single_token_requests() -> None:
    a = rec(0, start=0.0, events=[0.25, 0.5, 0.75], completion_tokens=3)  # tpot (0.75-0.25)/2 = 0.25
    one = rec(1, start=0.0, events=[0.5], completion_tokens=1)  # n_out 1: no TPOT
    assert per_request(one).tpot_s is None
    s = summarize(run_of(a, one, start=0.0, end=1.0))
    assert s["mean_tpot_ms"] == 250.0  # not (250 + 0) / 2
    assert s["mean_ttft_ms"] == 375.0  # both count for TTFT: (250 + 500) / 2
    only_one = summarize(run_of(one, start=0.0, end=1.0))
    assert only_one["mean_tpot_ms"] is None
    assert only_one["p99_tpot_ms"] is None
    assert only_one["interactivity"] is None
    assert only_one["mean_itl_ms"] is None  # a single event has no gap


def test_failed_requests_excluded_from_latency_but_counted() -> None:
    good = rec(0, start=10.0, events=[10.5, 11.0], completion_tokens=2, prompt_tokens=8)
    http = rec(1, status=500, error="server said no", error_kind="http_error")
    empty = rec(2, status=200, events=[])  # 200 but nothing streamed
    cut = rec(3, events=[10.1, 10.2], completion_tokens=9, error="reset", error_kind="read_error")
    s = summarize(run_of(good, http, empty, cut, start=10.0, end=12.0))
    assert (s["completed"], s["failed"]) == (1, 3)
    assert s["error_rate"] == 0.75  # 3 / (1 + 3)
    assert s["errors"] == {"http_error": 1, "no_output": 1, "read_error": 1}
    assert s["error_examples"]["http_error"] == "server said no"
    assert s["mean_ttft_ms"] == 500.0  # the good request only
    assert s["mean_itl_ms"] == 500.0
    assert s["total_output_tokens"] == 2  # failed requests contribute nothing
    assert s["output_throughput"] == 1.0  # 2 / 2
    d = detailed(run_of(good, http, empty, cut))
    assert d["errors"][:2] == ["", "server said no"]
    assert d["errors"][2].startswith("no output event received")
    assert d["errors"][3] == "reset"
    assert d["ttfts"] == [0.5, 0.0, 0.0, 0.0]
    assert d["itls"] == [[0.5], [], [], []]
    assert d["latencies"] == [1.0, 0.0, 0.0, 0.0]
    assert d["output_lens"] == [2, 0, 0, 0]
    assert d["output_tokens_source"] == ["usage", "none", "none", "none"]


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_all_failed_run_gives_none_stats(compat: str) -> None:
    s = summarize(
        run_of(rec(0, status=500), rec(1, status=None, error="timeout", error_kind="timeout")),
        compat=compat,
        gpu_count=2,
        goodput_slos_ms={"ttft": 100},
    )
    assert (s["completed"], s["failed"], s["error_rate"]) == (0, 2, 1.0)
    assert s["errors"] == {"http_500": 1, "timeout": 1}
    stats = [k for k in s if k.endswith("_ms") and k != "goodput_slos_ms"]
    assert "mean_ttft_ms" in stats
    assert all(s[k] is None for k in stats), {k: s[k] for k in stats}
    assert s["max_output_tokens_per_s"] is None
    assert s["max_concurrent_requests"] is None
    assert s["interactivity"] is None
    assert s["mean_tokens_per_chunk"] is None
    # Nothing completed in a 2-s window is a measured zero throughput, not an unknown.
    assert s["request_throughput"] == 0.0
    assert s["output_throughput_per_gpu"] == 0.0
    assert s["request_goodput"] == 0.0
    assert s["per_token_itl_source"] == "unavailable: no successful request"


def test_empty_run_does_not_raise() -> None:
    s = summarize(run_of())
    assert (s["completed"], s["failed"], s["error_rate"]) == (0, 0, None)
    assert s["mean_e2el_ms"] is None
    assert detailed(run_of())["ttfts"] == []


def test_goodput() -> None:
    # a: ttft 0.5 (== SLO, passes: metric <= SLO), tpot (1.5-0.5)/4 = 0.25, e2e 1.5 -> good
    a = rec(0, start=0.0, events=[0.5, 1.0, 1.5], completion_tokens=5)
    # b: ttft 0.75 > 0.5 -> not good
    b = rec(1, start=0.0, events=[0.75, 1.0], completion_tokens=2)
    # c: one token, TPOT counts as 0 for goodput -> good
    c = rec(2, start=0.0, events=[0.25], completion_tokens=1)
    # d: tpot (2.5-0.25)/2 = 1.125 > 0.3 -> not good
    d = rec(3, start=0.0, events=[0.25, 2.5], completion_tokens=3)
    failed = rec(4, status=500)
    slos = {"ttft": 500, "tpot": 300}
    s = summarize(run_of(a, b, c, d, failed, start=0.0, end=4.0), goodput_slos_ms=slos)
    assert s["good_requests"] == 2
    assert s["request_goodput"] == 0.5  # 2 good / 4 s
    assert s["goodput_slos_ms"] == {"ttft": 500.0, "tpot": 300.0}
    assert "slo_attainment" not in s
    sg = summarize(run_of(a, b, c, d, failed, start=0.0, end=4.0), goodput_slos_ms=slos, compat="sglang")
    assert sg["slo_attainment"] == 0.4  # 2 good / 5 sent (the failed one counts against it)
    e2e = summarize(run_of(a, b, c, d, start=0.0, end=4.0), goodput_slos_ms={"e2e": 1000})
    assert e2e["good_requests"] == 2  # b (1.0) and c (0.25); a 1.5 and d 2.5 are over
    with pytest.raises(SpecError, match="expected one of ttft, tpot, e2el"):
        summarize(run_of(a), goodput_slos_ms={"itl": 10})
    with pytest.raises(SpecError, match="milliseconds"):
        summarize(run_of(a), goodput_slos_ms={"ttft": -1})
    with pytest.raises(SpecError, match="same metric"):
        summarize(run_of(a), goodput_slos_ms={"e2e": 1, "e2el": 2})


def test_per_gpu_present_only_when_known() -> None:
    s = summarize(run_of(single(), start=10.0, end=12.0), gpu_count=4)
    assert s["gpu_count"] == 4
    assert s["output_throughput_per_gpu"] == 0.5  # 2 tok/s / 4
    assert s["total_token_throughput_per_gpu"] == 1.5  # 6 tok/s / 4
    unknown = summarize(run_of(single()))
    assert "output_throughput_per_gpu" not in unknown
    assert "total_token_throughput_per_gpu" not in unknown
    assert "gpu_count" not in unknown
    with pytest.raises(SpecError, match="gpu_count=0"):
        summarize(run_of(single()), gpu_count=0)


def test_one_second_bin_peaks() -> None:
    # Bins from the earliest start (100.0): [100,101) -> 0, [101,102) -> 1, [102,103) -> 2.
    a = rec(0, start=100.0, events=[100.2, 100.5, 100.9, 101.1])  # bin0: 3 chunks, bin1: 1; active 0..1
    b = rec(1, start=100.5, events=[101.2, 101.3, 101.4, 101.6])  # bin1: 4 chunks; active 0..1
    c = rec(2, start=102.5, events=[102.7])  # bin2: 1 chunk; active 2 only
    # Chunks per bin: 3, 5, 1 -> peak 5. Active requests per bin: 2, 2, 1 -> peak 2.
    s = summarize(run_of(a, b, c, start=100.0, end=103.0))
    assert s["max_output_tokens_per_s"] == 5.0
    assert s["max_concurrent_requests"] == 2


def test_peak_counts_chunks_not_tokens() -> None:
    # One chunk carrying 4 tokens counts once in vLLM's peak figure.
    r = rec(start=0.0, events=[0.5], completion_tokens=4)
    assert summarize(run_of(r, start=0.0, end=1.0))["max_output_tokens_per_s"] == 1.0


def test_sglang_mode_keys_and_formulas() -> None:
    a = rec(
        0,
        start=10.0,
        events=[10.25, 10.5, 10.75, 11.0],
        has_text=[False, True, True, True],
        last_line=11.25,
        completion_tokens=3,
        prompt_tokens=11,
        input_len=8,
    )
    b = rec(1, start=10.0, events=[10.5, 11.5], last_line=11.75, completion_tokens=2, input_len=8)
    run = run_of(a, b, start=10.0, end=12.0)
    s = summarize(run, compat="sglang")
    assert s["compat_mode"] == "sglang"
    assert "[DONE]" in s["e2e_end"]
    assert "mean_e2el_ms" not in s
    assert "total_token_throughput" not in s
    # E2E: a 1.25 ([DONE] at 11.25), b 1.75 -> mean 1500 ms.
    assert s["mean_e2e_latency_ms"] == 1500.0
    assert s["p99_e2e_latency_ms"] == pytest.approx(1745.0)  # 1250 + 0.99·500
    # TTFT: a 0.5 (first text event), b 0.5.
    assert s["mean_ttft_ms"] == 500.0
    # ITL: a 250, 250 (text events only); b 1000 -> max 1000.
    assert s["max_itl_ms"] == 1000.0
    assert s["total_input_tokens"] == 16  # dataset lengths, not usage (11)
    assert s["input_throughput"] == 8.0  # 16 / 2
    assert s["output_throughput"] == 2.5  # (3 + 2) / 2
    assert s["total_throughput"] == 10.5  # (16 + 5) / 2
    assert s["concurrency"] == 1.5  # Little's law: (1.25 + 1.75) / 2
    v = summarize(run)  # default compat is the workload's (vllm)
    assert v["mean_e2el_ms"] == 1250.0  # a 1.0 and b 1.5: last events
    assert v["total_input_tokens"] == 19  # 11 (usage) + 8
    assert "max_itl_ms" not in v
    assert "concurrency" not in v
    sg_default = summarize(run_of(a, workload=Workload(input_len=8, output_len=4, compat="sglang")))
    assert sg_default["compat_mode"] == "sglang"


def test_sglang_per_gpu_key_follows_total_throughput_name() -> None:
    s = summarize(run_of(single(), start=10.0, end=12.0), compat="sglang", gpu_count=2)
    assert s["total_throughput_per_gpu"] == 3.0  # (8 + 4) / 2 s / 2 GPUs
    assert s["output_throughput_per_gpu"] == 1.0


def test_validity_checks_and_warnings() -> None:
    wl = Workload(input_len=8, output_len=4, ignore_eos=True)
    full = rec(0, events=[10.5, 10.75], prompt_tokens=8, completion_tokens=4)
    short1 = rec(1, events=[10.5], prompt_tokens=9, completion_tokens=3, finish="stop")
    short2 = rec(2, events=[10.5], prompt_tokens=8, completion_tokens=2, finish="stop")
    no_usage = rec(3, events=[10.5, 10.75], finish=None)  # counted from events: not checked
    s = summarize(run_of(full, short1, short2, no_usage, workload=wl))
    v = s["validity"]
    assert (v["input_len_checked"], v["input_len_mismatch"]) == (3, 1)
    assert (v["output_len_checked"], v["output_len_short"], v["output_len_long"]) == (3, 2, 0)
    assert v["output_len_mismatch"] == 2
    assert v["finish_reasons"] == {"length": 1, "stop": 2, "unreported": 1}
    text = "\n".join(v["warnings"])
    assert "2/3 requests returned fewer output tokens than requested although ignore_eos was set" in text
    assert "1/3 requests had a server-counted prompt length" in text
    assert "2/4 requests finished with finish_reason 'stop'" in text
    assert "1/4 requests reported no usage" in text
    relaxed = summarize(run_of(full, short1, workload=wl.replace(ignore_eos=False)))["validity"]
    assert relaxed["output_len_checked"] is None
    assert relaxed["output_len_short"] is None
    assert not any("fewer output tokens" in w for w in relaxed["warnings"])


def test_client_info_interrupted_and_notes() -> None:
    client = ClientCheck(
        loop_lag_p50_ms=0.5,
        loop_lag_p99_ms=40.0,
        loop_lag_max_ms=90.0,
        client_cpu_s=1.8,
        wall_s=2.0,
        dispatch_lag_p99_ms=12.0,
        client_bound=True,
        reasons=("event-loop lag p99 40 ms",),
    )
    s = summarize(run_of(single(), client=client, interrupted=True, notes=["ctrl-c"]))
    assert s["client_bound"] is True
    assert s["client_loop_lag_p99_ms"] == 40.0
    assert s["client_cpu_fraction"] == 0.9  # 1.8 / 2.0
    assert s["client_reasons"] == ["event-loop lag p99 40 ms"]
    assert s["interrupted"] is True
    assert s["notes"] == ["ctrl-c"]
    text = "\n".join(s["validity"]["warnings"])
    assert "bottleneck" in text
    assert "interrupted" in text


def test_bad_window_gives_unknown_throughput() -> None:
    s = summarize(run_of(single(), start=12.0, end=12.0))
    assert s["request_throughput"] is None
    assert s["output_throughput"] is None
    assert any("measured window" in w for w in s["validity"]["warnings"])


def test_percentile_selection_and_validation() -> None:
    s = summarize(run_of(single()), percentiles=(99.9, 75))
    assert "p99.9_ttft_ms" in s
    assert "p75_ttft_ms" in s
    assert "p99_ttft_ms" not in s
    assert "median_ttft_ms" in s  # median is always reported, as vLLM
    with pytest.raises(SpecError, match="between 0 and 100"):
        summarize(run_of(single()), percentiles=(101,))
    with pytest.raises(SpecError, match="compat='tgi'"):
        summarize(run_of(single()), compat="tgi")


def test_stat_key() -> None:
    assert stat_key("e2e", "p50") == "p50_e2el_ms"
    assert stat_key("e2e", "p50", "sglang") == "p50_e2e_latency_ms"
    assert stat_key("ttft", "mean", "sglang") == "mean_ttft_ms"
    s = summarize(run_of(single()))
    assert stat_key("tpot", "p99") in s
    assert stat_key("itl", "median") in s


def test_detailed_matches_vllm_shape_in_index_order() -> None:
    late = rec(1, start=10.0, events=[10.25, 10.5], completion_tokens=2, finish="stop")
    d = detailed(run_of(late, single()))
    assert list(d) == [
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "latencies",
        "start_times",
        "queue_times",
        "errors",
        "output_tokens_source",
        "finish_reasons",
    ]
    assert d["ttfts"] == [0.5, 0.25]  # sorted by index: single() has index 0
    assert d["itls"] == [[0.25, 0.25, 0.5], [0.25]]
    assert d["latencies"] == [1.5, 0.5]
    assert d["output_lens"] == [4, 2]
    assert d["input_lens"] == [8, 8]
    assert d["start_times"] == [10.0, 10.0]
    assert d["queue_times"] == [0.25, 0.0]  # single() queued 0.25 s for its slot; late arrived as it was sent
    assert d["errors"] == ["", ""]
    assert d["finish_reasons"] == ["length", "stop"]


# --- builtins only (execnet) --------------------------------------------------------------------------------

_BUILTINS = (str, int, float, bool, type(None))


def _assert_builtins(value: Any, path: str = "$") -> None:
    # execnet checks the exact type: numpy.float64 is a float subclass and is still rejected.
    if isinstance(value, dict):
        assert type(value) is dict, path
        for k, v in value.items():
            assert type(k) is str, f"{path} key {k!r}"
            _assert_builtins(v, f"{path}.{k}")
    elif isinstance(value, list):
        assert type(value) is list, path
        for i, v in enumerate(value):
            _assert_builtins(v, f"{path}[{i}]")
    else:
        assert type(value) in _BUILTINS, f"{path}: {type(value).__name__}"
        if type(value) is float:
            assert math.isfinite(value), f"{path}: {value}"


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_summary_and_detailed_are_builtins_only(compat: str) -> None:
    client = ClientCheck(
        loop_lag_p50_ms=np.float64(0.5),  # numpy in, builtins out
        loop_lag_p99_ms=1.0,
        loop_lag_max_ms=2.0,
        client_cpu_s=0.1,
        wall_s=2.0,
        dispatch_lag_p99_ms=0.2,
        client_bound=False,
    )
    run = run_of(
        rec(0, events=[10.25, 10.75, 11.0], cums=[1, 3, 4], prompt_tokens=8, last_line=11.1),
        rec(1, events=[10.5], completion_tokens=1, finish=None),
        rec(2, status=500, error="x", error_kind="http"),
        client=client,
        notes=["n"],
    )
    s = summarize(run, compat=compat, gpu_count=8, goodput_slos_ms={"ttft": 300, "tpot": 50, "e2el": 2000})
    _assert_builtins(s)
    json.dumps(s, allow_nan=False)
    execnet = pytest.importorskip("execnet")  # the real channel check, where xdist is installed
    assert execnet.loads(execnet.dumps(s)) == s
    _assert_builtins(detailed(run, compat=compat))
    _assert_builtins(summarize(run_of(rec(status=500)), compat=compat))


# --- cross-check against an independent re-implementation of vLLM's calculate_metrics ---------------------


def _random_run(seed: int) -> RunRecords:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(60):
        start = 50.0 + float(rng.uniform(0, 5))
        t = start + float(rng.exponential(0.3))
        times = [t]
        for _ in range(int(rng.integers(0, 40))):
            t += float(rng.exponential(0.02))
            times.append(t)
        tokens = len(times) * int(rng.integers(1, 3)) if rng.random() > 0.1 else None
        failed = rng.random() < 0.05
        records.append(
            rec(
                i,
                start=start,
                events=times,
                prompt_tokens=int(rng.integers(100, 200)),
                completion_tokens=tokens,
                status=500 if failed else 200,
                error="boom" if failed else "",
            )
        )
    return run_of(*records, start=50.0, end=max(r.event_times_s[-1] for r in records) + 0.01)


def _reference_vllm(run: RunRecords) -> dict[str, float]:
    """vLLM's aggregate rules written out plainly, request by request (independent of metrics.py)."""
    ttfts: list[float] = []
    tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    out_total = in_total = completed = 0
    for r in run.records:
        if r.status != 200 or r.error or not r.event_times_s:
            continue
        completed += 1
        ttft = r.event_times_s[0] - r.start_s
        latency = r.event_times_s[-1] - r.start_s
        n_out = r.completion_tokens if r.completion_tokens else len(r.event_times_s)
        in_total += r.prompt_tokens if r.prompt_tokens else r.input_len
        out_total += n_out
        ttfts.append(ttft)
        e2els.append(latency)
        if n_out > 1:
            tpots.append((latency - ttft) / (n_out - 1))
        previous = r.event_times_s[0]
        for ts in r.event_times_s[1:]:
            itls.append(ts - previous)
            previous = ts
    # Peak figures: rebuild chunk times as start + ttft + running sum of ITLs, 1-s bins from the earliest
    # start (of successful requests: the documented difference from vLLM, which also counts failed ones).
    ok = [r for r in run.records if r.status == 200 and not r.error and r.event_times_s]
    t0 = min(r.start_s for r in ok)
    n_bins = math.ceil(max(r.event_times_s[-1] for r in ok) - t0) + 1
    chunks = [0] * n_bins
    active = [0] * n_bins
    for r in ok:
        t = r.event_times_s[0]
        chunks[int(t - t0)] += 1
        for gap in np.diff(r.event_times_s):
            t += gap
            chunks[int(t - t0)] += 1
        for second in range(int(r.start_s - t0), int(r.event_times_s[-1] - t0) + 1):
            active[second] += 1
    dur = run.bench_end_s - run.bench_start_s
    ref = {
        "max_output_tokens_per_s": max(chunks),
        "max_concurrent_requests": max(active),
        "completed": completed,
        "request_throughput": completed / dur,
        "output_throughput": out_total / dur,
        "total_token_throughput": (in_total + out_total) / dur,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        ref[f"mean_{name}_ms"] = np.mean(values) * 1000
        ref[f"median_{name}_ms"] = np.median(values) * 1000
        ref[f"std_{name}_ms"] = np.std(values) * 1000
        ref[f"p99_{name}_ms"] = np.percentile(values, 99) * 1000
    return ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_vllm_formulas_on_random_data(seed: int) -> None:
    run = _random_run(seed)
    s = summarize(run)
    ref = _reference_vllm(run)
    assert s["failed"] > 0 or seed != 0  # seed 0 exercises failed requests
    for key, expected in ref.items():
        assert s[key] == pytest.approx(float(expected), rel=1e-12, abs=1e-12), key
