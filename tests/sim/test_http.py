"""The simulator over HTTP: endpoints, SSE format, usage, run-time config, intended timings."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import pytest

from pytest_llmperf import __version__
from pytest_llmperf.errors import ServerError
from pytest_llmperf.sim import SimConfig, parse_fault, run_in_thread
from pytest_llmperf.sim.model import Engine, Step

if TYPE_CHECKING:
    from conftest import Client


def test_health_version_models(sim: Client) -> None:
    assert sim.http.get("/health").json() == {"status": "ok"}
    assert sim.http.get("/version").json() == {"version": __version__, "engine": "pytest-llmperf-sim"}
    models = sim.http.get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "llmperf-sim"
    assert models["data"][0]["owned_by"] == "pytest-llmperf-sim"
    assert models["data"][0]["max_model_len"] == 32768


@pytest.mark.parametrize(
    ("body", "count"),
    [
        ({"prompt": "a b  c"}, 3),
        ({"content": "a b c d"}, 4),
        ({"prompt": [5, 6]}, 2),
        ({"messages": [{"role": "user", "content": "a b"}]}, 2 + 4 + 3),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}]}, 2 + 4 + 3),
    ],
)
def test_tokenize(sim: Client, body: dict[str, object], count: int) -> None:
    data = sim.http.post("/tokenize", json=body).json()
    assert data["count"] == count == len(data["tokens"])


def test_completions_stream_format(sim: Client) -> None:
    sse = sim.completion(max_tokens=3, stream_options={"include_usage": True})
    assert sse.status == 200
    assert sse.payloads[-1] == "[DONE]"
    rid = sse.chunks[0]["id"]
    assert rid.startswith("cmpl-")
    assert all(c["id"] == rid and c["object"] == "text_completion" for c in sse.chunks)
    assert [c["choices"][0]["text"] for c in sse.output] == [" tok0", " tok1", " tok2"]
    assert [c["choices"][0]["finish_reason"] for c in sse.output] == [None, None, "length"]
    usage_chunk = sse.chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 0},  # the prefix cache is on; 3 tokens fill no block
    }
    assert "usage" not in sse.output[0]
    record = sim.record(rid)
    assert record["chunk_tokens"] == [1, 1, 1]
    assert record["prompt_tokens"] == 3
    assert record["outcome"] == "ok"


def test_chat_stream_opens_with_a_role_chunk(sim: Client) -> None:
    sse = sim.chat(max_completion_tokens=2, max_tokens=50, stream_options={"include_usage": True})
    first = sse.chunks[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sse.text == " tok0 tok1"  # max_completion_tokens wins over max_tokens
    assert sse.chunks[-1]["usage"] == {
        "prompt_tokens": 3 + 4 + 3,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chat_prompt_tokens_match_tokenize(sim: Client) -> None:
    messages = [{"role": "system", "content": "short"}, {"role": "user", "content": "x y z w"}]
    count = sim.http.post("/tokenize", json={"messages": messages}).json()["count"]
    sse = sim.stream(
        "/v1/chat/completions",
        {"messages": messages, "stream": True, "max_tokens": 1, "stream_options": {"include_usage": True}},
    )
    assert sse.chunks[-1]["usage"]["prompt_tokens"] == count == 5 + 2 * 4 + 3


def test_token_id_prompts_count_one_token_per_id(sim: Client) -> None:
    sse = sim.completion(list(range(17)), max_tokens=1, stream_options={"include_usage": True})
    assert sse.chunks[-1]["usage"]["prompt_tokens"] == 17
    batch_of_one = sim.completion([[1, 2, 3, 4]], max_tokens=1, stream_options={"include_usage": True})
    assert batch_of_one.chunks[-1]["usage"]["prompt_tokens"] == 4


def test_continuous_usage_stats_are_cumulative(sim: Client) -> None:
    sim.configure(tokens_per_chunk=3)
    sse = sim.completion(max_tokens=8, stream_options={"include_usage": True, "continuous_usage_stats": True})
    cumulative = [c["usage"]["completion_tokens"] for c in sse.output]
    assert cumulative == [1, 4, 7, 8]
    words = [len(c["choices"][0]["text"].split()) for c in sse.output]
    assert words == [1, 3, 3, 1]
    counters = sim.http.get("/metrics").text
    assert "sim:spec_decode_num_draft_tokens_total" in counters


def test_chunks_per_write_sends_each_streams_chunks_in_bursts(sim: Client) -> None:
    sim.configure(chunks_per_write=4)
    before = generated_tokens(sim)
    sse = sim.completion(max_tokens=10, stream_options={"include_usage": True})
    assert generated_tokens(sim) - before == 10
    assert [c["choices"][0]["text"] for c in sse.output] == [f" tok{i}" for i in range(10)]
    assert sse.payloads[-1] == "[DONE]"
    record = sim.record(sse.chunks[0]["id"])
    intended, actual = record["intended_chunk_times_ms"], record["actual_chunk_times_ms"]
    assert len(intended) == len(actual) == 10
    assert len(set(intended)) == 10  # one intended time per decode step, as without bursts
    # The first chunk (it carries the TTFT) goes at once; then bursts of 4 steps, the last one cut short by
    # the final chunk: [0], [1..4], [5..8], [9].
    assert [len(set(actual[i:j])) for i, j in ((1, 5), (5, 9))] == [1, 1]
    assert actual[0] < actual[1] < actual[5] < actual[9]
    assert actual[4] >= intended[4] - 0.5  # a burst goes out once its last step is due, not before
    assert actual[1] >= intended[4] - 0.5


def generated_tokens(sim: Client) -> float:
    """The simulator's count of output tokens sent, from /metrics."""
    for line in sim.http.get("/metrics").text.splitlines():
        if line.startswith("sim:generation_tokens_total "):
            return float(line.split()[1])
    raise AssertionError("no sim:generation_tokens_total in /metrics")


@pytest.mark.parametrize(("fault", "outcome"), [("disconnect", "disconnect"), ("hang:seconds=0.3", "hang")])
def test_chunks_per_write_sends_the_held_chunks_before_a_fault(sim: Client, fault: str, outcome: str) -> None:
    kind, _, seconds = fault.partition(":")
    sim.configure(chunks_per_write=4, faults=[f"{kind}:every=1,after=3" + (f",{seconds}" if seconds else "")])
    before = generated_tokens(sim)
    sse = sim.stream("/v1/completions", {"prompt": "a", "max_tokens": 10, "stream": True}, read_timeout=5)
    assert sse.error
    assert len(sse.output) == 3  # chunks 1 and 2 were held for a burst when the fault came
    record = sim.records()[-1]
    assert record["outcome"] == outcome
    assert len(record["actual_chunk_times_ms"]) == 3
    assert generated_tokens(sim) - before == 3


def test_chunks_per_write_counts_only_the_tokens_it_sent(sim: Client) -> None:
    sim.configure(chunks_per_write=100, decode_ms=5)
    before = generated_tokens(sim)
    sse = sim.stream("/v1/completions", {"prompt": "a", "max_tokens": 60, "stream": True}, read_timeout=0.1)
    assert sse.error == "ReadTimeout"  # the client gave up after the first chunk: the rest was held back
    assert len(sse.output) == 1
    deadline = time.monotonic() + 10
    while sim.records()[-1]["outcome"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.records()[-1]["outcome"] == "client_gone"
    assert generated_tokens(sim) - before == 1


def test_chunks_per_write_releases_held_chunks_when_lowered_mid_stream(sim: Client) -> None:
    sim.configure(chunks_per_write=8, decode_ms=50)
    lowered = threading.Timer(0.12, lambda: sim.configure(chunks_per_write=1))
    lowered.start()
    try:
        sse = sim.completion(max_tokens=12)
    finally:
        lowered.join()
    assert len(sse.output) == 12
    actual = sim.record(sse.chunks[0]["id"])["actual_chunk_times_ms"]
    assert len(actual) == 12
    # Chunks 1.. are held for a burst of 8, which would fill at about 450 ms; lowered at 120 ms, the held ones
    # go out together at the next step and the rest one write per step.
    assert len(set(actual[1:9])) > 1
    assert len(set(actual[-3:])) == 3


def test_chunks_per_write_must_be_a_positive_int(sim: Client) -> None:
    r = sim.http.post("/sim/config", json={"chunks_per_write": 0})
    assert r.status_code == 400
    assert "chunks_per_write" in r.text


def test_llamacpp_usage_style_puts_usage_in_the_last_choice_chunk(sim: Client) -> None:
    sim.configure(usage_style="llamacpp")
    sse = sim.completion(max_tokens=2, stream_options={"include_usage": True})
    assert sse.payloads[-1] == "[DONE]"
    last = sse.chunks[-1]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"]["completion_tokens"] == 2
    assert all(c["choices"] for c in sse.chunks)


def test_no_usage_unless_asked(sim: Client) -> None:
    sse = sim.completion(max_tokens=2)
    assert all("usage" not in c for c in sse.chunks)
    assert sse.payloads[-1] == "[DONE]"


def test_non_streaming_returns_one_json_body(sim: Client) -> None:
    r = sim.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " tok0 tok1 tok2"}
    assert body["usage"]["completion_tokens"] == 3


def test_default_max_tokens(sim: Client) -> None:
    assert len(sim.completion().output) == 16


def test_eos_stops_early_only_without_ignore_eos(sim: Client) -> None:
    sim.configure(eos_prob=0.5)
    stopped = [sim.completion(max_tokens=30).output[-1]["choices"][0]["finish_reason"] for _ in range(5)]
    assert "stop" in stopped
    full = sim.completion(max_tokens=30, ignore_eos=True).output
    assert len(full) == 30
    assert full[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/completions", b"[1, 2]", 400, "must be a JSON object"),
        ("/v1/completions", b'{"max_tokens": 2}', 400, "prompt is required"),
        ("/v1/completions", b'{"prompt": "a", "model": "other"}', 404, "`other` does not exist"),
        ("/v1/completions", b'{"prompt": [1, 32000]}', 400, "outside the vocabulary"),
        ("/v1/completions", b'{"prompt": [1, -1]}', 400, "outside the vocabulary"),
        ("/v1/completions", b'{"prompt": ""}', 400, "prompt is empty"),
        ("/v1/completions", b'{"prompt": ["a", "b"]}', 400, "one prompt per request"),
        ("/v1/completions", b'{"prompt": "a", "max_tokens": 0}', 400, "max_tokens must be an integer >= 1"),
        ("/v1/completions", b'{"prompt": "a", "max_tokens": 40000}', 400, "exceeds the context length"),
        ("/v1/completions", b'{"prompt": "a", "n": 2}', 400, "only n=1"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "messages must be a non-empty list"),
        ("/v1/chat/completions", b'{"messages": [{"content": "x"}]}', 400, "string role"),
        ("/tokenize", b'{"nothing": 1}', 400, "send {"),
        ("/sim/config", b'{"decode_msec": 1}', 400, "unknown simulator setting"),
        ("/sim/config", b'{"port": 1234}', 400, "only be set at start-up"),
        ("/sim/config", b'{"faults": ["bad"]}', 400, "invalid fault"),
    ],
)
def test_bad_input_gets_a_json_error(sim: Client, path: str, body: bytes, status: int, message: str) -> None:
    r = sim.http.post(path, content=body)
    assert r.status_code == status
    assert message in r.json()["error"]["message"]


def test_model_name_may_be_given_or_omitted(sim: Client) -> None:
    assert sim.completion(max_tokens=1, model="llmperf-sim").status == 200


def test_config_changes_timing_at_run_time(sim: Client) -> None:
    before = sim.completion(max_tokens=5).chunks[0]["id"]
    new = sim.configure(decode_ms=25)
    assert new["decode_ms"] == 25.0
    assert sim.http.get("/sim/config").json()["decode_ms"] == 25.0
    after = sim.completion(max_tokens=3).chunks[0]["id"]
    gaps = sim.record(after)["intended_chunk_times_ms"]
    assert gaps[1] - gaps[0] == pytest.approx(25.0, rel=1e-6)
    # The earlier stream kept the old 2 ms step. Its smallest gap, not its first chunk: on a loaded machine
    # the simulator may restart a late schedule, which moves later intended times but never shortens a step.
    times = sim.record(before)["intended_chunk_times_ms"]
    assert min(b - a for a, b in itertools.pairwise(times)) == pytest.approx(2.0, rel=1e-6)
    assert sim.configure(reset=True)["decode_ms"] == 2.0


def test_actual_times_are_never_early_and_follow_the_intended_schedule(sim: Client) -> None:
    """What holds however busy the machine: a late loop may slip the schedule (steps start later, never
    shorter), and chunks go out late, never early."""
    sim.configure(decode_ms=20, ttft_add_ms=10)
    sse = sim.completion(max_tokens=5, stream_options={"include_usage": True})
    record = sim.record(sse.chunks[0]["id"])
    intended, actual = record["intended_chunk_times_ms"], record["actual_chunk_times_ms"]
    assert len(intended) == len(actual) == 5
    assert record["intended_ttft_ms"] == intended[0]
    assert intended[0] >= 30 - 0.01
    assert all(b - a >= 20 - 0.01 for a, b in itertools.pairwise(intended))
    assert all(a >= i for a, i in zip(actual, intended, strict=True))
    # The client, joined by id, never sees the first token before the simulator meant to send it; received_at
    # is on the client's perf_counter clock (same host).
    assert intended[0] <= (sse.times[0] - sse.sent_at) * 1000 + 1
    assert sse.sent_at - 0.05 < record["received_at"] < sse.times[0]


@pytest.mark.idle_machine
def test_intended_and_actual_times_agree_on_an_idle_machine(sim: Client) -> None:
    """The schedule kept to the millisecond: only an idle machine can promise that the simulator's thread and
    the client get a core when they need one, so a loaded machine fails this and says nothing about the code."""
    sim.configure(decode_ms=20, ttft_add_ms=10)
    sse = sim.completion(max_tokens=5, stream_options={"include_usage": True})
    record = sim.record(sse.chunks[0]["id"])
    intended, actual = record["intended_chunk_times_ms"], record["actual_chunk_times_ms"]
    assert intended == pytest.approx([30, 50, 70, 90, 110], abs=0.01)  # no slip
    assert len(actual) == 5
    # Never early; late by little.
    assert all(0 <= a - i < 30 for a, i in zip(actual, intended, strict=True))
    # The client, joined by id, sees the same TTFT up to connection overheads.
    client_ttft_ms = (sse.times[0] - sse.sent_at) * 1000
    assert intended[0] <= client_ttft_ms + 1 < intended[0] + 60


def send_at_once(url: str, count: int, body: dict[str, Any]) -> None:
    """``count`` streaming completions sent together, each read to its end."""

    async def send_all() -> None:
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with session.post(url + "/v1/completions", json=body) as r:
                    await r.read()

            await asyncio.gather(*(one() for _ in range(count)))

    asyncio.run(send_all())


def test_a_steps_chunks_go_out_in_a_different_order_each_step(sim: Client) -> None:
    """No stream is always written first (or last) in its step: the order is shuffled, seeded."""
    sim.configure(decode_ms=5, max_batch=8)
    sim.records(clear=True)

    # 60 tokens: under a loaded CI machine the 4 requests may be admitted a few steps apart.
    send_at_once(sim.url, 4, {"prompt": "a b", "max_tokens": 60, "stream": True, "ignore_eos": True})
    writes: dict[float, list[tuple[float, str]]] = {}  # step end -> (actual write time, stream id)
    for r in sim.records():
        for intended, actual in zip(r["intended_chunk_times_ms"], r["actual_chunk_times_ms"], strict=True):
            step_end = round(r["received_at"] + intended / 1000, 4)  # steps are 5 ms apart: 0.1 ms groups them
            writes.setdefault(step_end, []).append((r["received_at"] + actual / 1000, r["id"]))
    shared = [sorted(w) for w in writes.values() if len(w) == 4]
    assert len(shared) >= 10
    assert len({w[0][1] for w in shared}) > 1
    assert len({w[-1][1] for w in shared}) > 1


def test_requests_history_clears(sim: Client) -> None:
    sim.completion(max_tokens=1)
    assert sim.records(clear=True)
    assert sim.records() == []


def test_queueing_beyond_max_batch(sim: Client) -> None:
    sim.configure(max_batch=2, decode_ms=10)
    sim.records(clear=True)

    send_at_once(sim.url, 4, {"prompt": "a", "max_tokens": 4, "stream": True})
    starts = sorted(r["received_at"] + r["intended_ttft_ms"] / 1000 for r in sim.records())
    ends = sorted(r["received_at"] + r["intended_chunk_times_ms"][-1] / 1000 for r in sim.records())
    # Two requests run at once; the other two wait for their slots.
    assert starts[2] >= ends[0] + 0.009
    assert starts[3] >= ends[1] + 0.009
    metrics = sim.http.get("/metrics").text
    assert "sim:num_requests_running 0" in metrics
    assert "sim:num_requests_waiting 0" in metrics


def test_bursty_mode_with_zero_decode_time(sim: Client) -> None:
    sim.configure(decode_ms=0, decode_ms_per_seq=0)
    sse = sim.completion(max_tokens=200)
    assert len(sse.output) == 200
    assert sse.payloads[-1] == "[DONE]"


def test_metrics_exposition(sim: Client) -> None:
    sim.completion(max_tokens=2)
    text = sim.http.get("/metrics").text
    for name in (
        "sim:requests_total",
        "sim:prompt_tokens_total",
        "sim:generation_tokens_total",
        "sim:preemptions_total 0",
        "sim:spec_decode_num_draft_tokens_total",
        "sim:spec_decode_num_accepted_tokens_total",
        "sim:num_requests_running",
        "sim:num_requests_waiting",
        'sim:engine_step_lateness_seconds{quantile="0.99"}',
        "sim:engine_step_lateness_seconds_count",
    ):
        assert name in text
    values = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert values["sim:generation_tokens_total"] >= 2
    stats = sim.http.get("/sim/stats").json()
    assert stats["steps"] >= 2
    assert stats["lateness_ms"]["max"] >= 0


def test_run_in_thread_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match="failed to start"), run_in_thread(SimConfig(port=port)):
            pass


def test_run_in_thread_stops_cleanly_with_streams_in_flight() -> None:
    errors: list[str] = []
    started = threading.Barrier(3, timeout=5)

    def read(url: str, body: dict[str, object]) -> None:
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=10) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n == 0:
                        started.wait()
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)

    config = SimConfig(decode_ms=20, faults=(parse_fault("hang:every=2,after=1,seconds=60"),))
    with run_in_thread(config) as url:
        readers = [
            threading.Thread(target=read, args=(url, {"prompt": "a", "max_tokens": 1000, "stream": True}))
            for _ in range(2)
        ]
        for reader in readers:
            reader.start()
        started.wait()
        t0 = time.perf_counter()
    for reader in readers:
        reader.join(10)
    # Cut by the shutdown, not by the readers' 10 s read timeout (that would be a ReadTimeout) nor the 60 s
    # hang; below 10 s, with seconds of slack for a loaded machine.
    assert time.perf_counter() - t0 < 9
    assert errors == ["RemoteProtocolError", "RemoteProtocolError"]


def test_a_crashed_engine_loop_fails_requests_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch, make_client: Callable[[str], Client]
) -> None:
    def broken_step(self: Engine, start: float) -> Step:
        raise RuntimeError("boom")

    with run_in_thread(SimConfig(decode_ms=1)) as url:
        monkeypatch.setattr(Engine, "step", broken_step)
        client = make_client(url)
        first = client.completion(max_tokens=3)
        assert first.output == []
        assert first.error
        assert client.record("cmpl-1")["outcome"] == "engine_error"
        second = client.completion(max_tokens=3)
        assert second.status == 500
        assert "engine loop has stopped" in second.payloads[0]["error"]["message"]
