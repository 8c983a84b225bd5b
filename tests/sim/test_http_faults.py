"""Each injected fault, as a client sees it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Client


@pytest.mark.parametrize("status", [500, 503, 429])
def test_http_errors(sim: Client, status: int) -> None:
    sim.configure(faults=[f"http_{status}:every=2"])
    first, second = sim.completion(max_tokens=1), sim.completion(max_tokens=1)
    assert first.status == 200
    assert second.status == status
    assert "simulated fault" in second.payloads[0]["error"]["message"]
    assert sim.records()[-1]["outcome"] == "fault"
    if status == 429:
        assert sim.http.post("/v1/completions", json={"prompt": "a", "stream": True}).status_code == 200
        r = sim.http.post("/v1/completions", json={"prompt": "a", "stream": True})
        assert r.headers["Retry-After"] == "1"
    assert f'sim:faults_injected_total{{kind="http_{status}"}}' in sim.http.get("/metrics").text


def test_disconnect_after_n_chunks(sim: Client) -> None:
    sim.configure(faults=["disconnect:every=1,after=2"])
    sse = sim.chat(max_tokens=5)
    assert sse.status == 200
    assert sse.error  # the body ended without its terminating chunk
    assert len(sse.output) == 2
    assert "[DONE]" not in sse.payloads
    record = sim.records()[-1]
    assert record["outcome"] == "disconnect"
    assert len(record["intended_chunk_times_ms"]) == len(record["actual_chunk_times_ms"]) == 2


def test_malformed_chunk(sim: Client) -> None:
    sim.configure(faults=["malformed:every=1,after=1"])
    sse = sim.completion(max_tokens=3)
    kinds = ["bad" if isinstance(p, str) and p != "[DONE]" else "ok" for p in sse.payloads]
    assert kinds == ["ok", "bad", "ok", "ok", "ok"]
    assert len(sse.output) == 3
    assert sse.payloads[-1] == "[DONE]"


def test_empty_stream(sim: Client) -> None:
    sim.configure(faults=["empty:every=1"])
    sse = sim.completion(max_tokens=3)
    assert sse.status == 200
    assert sse.payloads == ["[DONE]"]
    assert not sse.error


def test_truncated_stream(sim: Client) -> None:
    sim.configure(faults=["truncated:rate=1"])
    sse = sim.completion(max_tokens=3, stream_options={"include_usage": True})
    assert len(sse.output) == 3
    assert all("usage" not in c for c in sse.chunks)
    assert "[DONE]" not in sse.payloads
    assert sse.error
    assert sim.records()[-1]["outcome"] == "truncated"


def test_hang_until_the_client_gives_up(sim: Client) -> None:
    sim.configure(faults=["hang:every=1,after=1,seconds=60"])
    t0 = time.perf_counter()
    sse = sim.stream("/v1/completions", {"prompt": "a", "max_tokens": 5, "stream": True}, read_timeout=0.5)
    assert sse.error == "ReadTimeout"
    assert len(sse.output) == 1
    # The 0.5 s read timeout, not the client's default 10 s nor the 60 s hang; the rest is slack for a loaded
    # machine.
    assert time.perf_counter() - t0 < 8
    assert sim.records()[-1]["outcome"] == "hang"


def test_hang_ends_after_its_seconds(sim: Client) -> None:
    sim.configure(faults=["hang:every=1,seconds=0.3"])
    sse = sim.completion(max_tokens=5)
    assert sse.output == []
    assert sse.error


def test_faults_skip_non_streaming_requests_except_http_errors(sim: Client) -> None:
    sim.configure(faults=["disconnect:every=1"])
    r = sim.http.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
    assert r.json()["usage"]["completion_tokens"] == 2
    sim.configure(faults=["http_503:every=1"])
    assert sim.http.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 503


def test_fault_counting_restarts_when_faults_are_set(sim: Client) -> None:
    sim.completion(max_tokens=1)
    sim.configure(faults=["http_500:every=3"])
    statuses = [sim.completion(max_tokens=1).status for _ in range(6)]
    assert statuses == [200, 200, 500, 200, 200, 500]
