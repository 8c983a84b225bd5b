"""The simulator's HTTP side: aiohttp.web handlers and the engine loop that runs :mod:`.model` in real time.

How chunks reach the wire: a streaming handler sends the response headers (chunked transfer encoding), then
parks on a future. The engine loop plans a step, encodes every chunk of that step *before* the step's
deadline, and at the deadline writes them straight into each connection's transport with HTTP/1.1 chunk
framing — no task wake-up per token, and a small spread of send times within a step. When a request ends the
loop wakes its handler once, which closes the body with aiohttp's ``write_eof``. A client that stops reading
must not stall the engine: the transport buffers its bytes up to ``SLOW_CLIENT_BYTES``, then it is dropped.

Non-streaming requests run through the engine too and get one JSON body when their last token is due; of the
faults, only the HTTP ones apply to them.

Prefix cache (see :mod:`.model`): the engine looks a request up when it admits it, so every ``usage`` sent from
its first token on carries ``prompt_tokens_details.cached_tokens``, as vLLM's does; the chat role chunk, sent
at receipt, cannot know it yet, and with the cache off no usage has ``prompt_tokens_details`` (unknown, not 0).
``GET /sim/requests`` records ``cached_tokens`` (null when off); ``sim:prefix_cache_queries_total`` and
``sim:prefix_cache_hits_total`` count prompt tokens looked up and found, like vLLM's counters.

Steps keep to the model's absolute schedule; only when the loop falls more than ``max_lag_ms`` behind it
(CPU-bound, or ``decode_ms=0`` bursts) does the next step start at "now" instead (``sim:engine_slips_total``).
The intended times kept for ``GET /sim/requests`` are always the schedule actually used.

Keeping to the schedule precisely: the loop's timers fire up to a millisecond late, so the last ``spin_ms``
before a deadline are waited by yielding to the loop; one send per connection takes ~13 µs here, so a step of
n chunks starts writing (n − 1)/2 sends early, centring its writes on the step's end, in a seeded random
order. A request's clock (``received_at``) starts when its last byte arrived, noted by :class:`_ArrivalClock`
in front of aiohttp's protocol, not when its handler ran.

Clock: ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, so a client on the same host can compare its own
timestamps with ``received_at``). Loop lateness = when the loop began a step's writes − when it meant to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from pytest_llmperf import __version__
from pytest_llmperf.client.timing import poll_until, sleep_until
from pytest_llmperf.errors import ServerError, ServerStartTimeout, SpecError
from pytest_llmperf.sim.faults import HTTP_FAULTS, FaultSpec, pick_fault
from pytest_llmperf.sim.model import (
    STARTUP_ONLY,
    VOCAB_SIZE,
    Engine,
    Sequence,
    SimConfig,
    Step,
    chat_token_ids,
    output_text,
    text_token_ids,
)

log = logging.getLogger("pytest_llmperf.sim")

SLOW_CLIENT_BYTES = 8 * 1024 * 1024
# Spinning costs the simulator's core: never more than this share of a step (2 ms steps spin 0.3 ms).
SPIN_SHARE = 0.15
ENGINE_NAME = "pytest-llmperf-sim"
READY_PREFIX = "LLMPERF_SIM_READY"

# What the engine loop does with a planned chunk.
_SKIP, _WRITE, _FINAL, _WRITE_CLOSE, _CLOSE, _HANG = range(6)
_DONE = "data: [DONE]\n\n"


class ApiError(Exception):
    """Turned into an OpenAI-style JSON error response by the middleware."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error_response(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


def _frame(text: str) -> bytes:
    data = text.encode()
    return b"%x\r\n%b\r\n" % (len(data), data)


class Stream:
    """One generation request: how to encode its chunks, where to write them, and what happened."""

    __slots__ = (
        "_close",
        "_head",
        "_usage_head",
        "_usage_prompt",
        "_usage_tail",
        "actual",
        "api",
        "continuous",
        "done",
        "fault",
        "include_usage",
        "max_tokens",
        "number",
        "outcome",
        "pending",
        "pending_tokens",
        "prompt_tokens",
        "received_at",
        "rid",
        "seq",
        "transport",
        "usage_in_last",
    )

    def __init__(
        self,
        *,
        number: int,
        api: str,
        model: str,
        created: int,
        received_at: float,
        prompt_tokens: int,
        max_tokens: int,
        fault: FaultSpec | None,
    ) -> None:
        self.number, self.api, self.fault = number, api, fault
        self.received_at, self.prompt_tokens, self.max_tokens = received_at, prompt_tokens, max_tokens
        self.rid = f"cmpl-{number}" if api == "completions" else f"chatcmpl-{number}"
        self.seq: Sequence | None = None
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.outcome = "running"
        self.actual: array[float] = array("d")
        self.pending: list[bytes] = []  # framed chunks held back for one write (chunks_per_write > 1)
        self.pending_tokens = 0  # the tokens they carry: counted as generated once written
        self.include_usage = self.continuous = self.usage_in_last = False
        obj = "text_completion" if api == "completions" else "chat.completion.chunk"
        common = f'data: {{"id":"{self.rid}","object":"{obj}","created":{created},"model":{json.dumps(model)}'
        if api == "completions":
            self._head = common + ',"choices":[{"index":0,"text":"'
            self._close = '","logprobs":null,"finish_reason":'
        else:
            self._head = common + ',"choices":[{"index":0,"delta":{"content":"'
            self._close = '"},"logprobs":null,"finish_reason":'
        self._usage_head = common + ',"choices":[],"usage":'
        self._usage_prompt = f'{{"prompt_tokens":{prompt_tokens},"total_tokens":'
        # Until admission the cached tokens are unknown (so a chat role chunk's usage has no details), and they
        # stay so with the prefix cache off: no prompt_tokens_details then, never a made-up 0.
        self._usage_tail = "}"

    def admitted(self, cached_tokens: int) -> None:
        """The engine admitted the request and found ``cached_tokens`` in its prefix cache."""
        self._usage_tail = f',"prompt_tokens_details":{{"cached_tokens":{cached_tokens}}}}}'

    def usage(self, completion_tokens: int) -> str:
        total = self.prompt_tokens + completion_tokens
        return f'{self._usage_prompt}{total},"completion_tokens":{completion_tokens}{self._usage_tail}'

    def role_chunk(self) -> str:
        usage = f',"usage":{self.usage(0)}' if self.continuous else ""
        head = self._head.replace('"delta":{"content":"', '"delta":{"role":"assistant","content":"')
        return f"{head}{self._close}null}}]{usage}}}\n\n"

    def plan(self, seq: Sequence, n: int) -> tuple[bytes, int]:
        """Encode the chunk carrying ``seq``'s latest ``n`` tokens; return the bytes and what to do."""
        index = len(seq.chunk_times) - 1
        fault = self.fault
        if fault is not None and fault.after == index and fault.kind in ("disconnect", "hang"):
            # The chunk will never be sent: drop it from the intended schedule too.
            seq.chunk_times.pop()
            seq.chunk_tokens.pop()
            seq.generated -= n
            seq.finish_reason = None
            return b"", _CLOSE if fault.kind == "disconnect" else _HANG
        final = seq.finish_reason is not None
        if self.transport is None:
            return b"", _FINAL if final else _SKIP
        cum = seq.generated
        reason = f'"{seq.finish_reason}"' if final else "null"
        with_usage = self.continuous or (final and self.usage_in_last)
        usage = f',"usage":{self.usage(cum)}' if with_usage else ""
        text = f"{self._head}{output_text(cum - n, n)}{self._close}{reason}}}]{usage}}}\n\n"
        if fault is not None and fault.kind == "malformed" and fault.after == index:
            text = f'data: {{"id":"{self.rid}","choices":[{{"index":0,"text":\n\n' + text
        if not final:
            return _frame(text), _WRITE
        if fault is not None and fault.kind == "truncated":
            return _frame(text), _WRITE_CLOSE
        if self.include_usage and not self.usage_in_last:
            text += f"{self._usage_head}{self.usage(cum)}}}\n\n"
        return _frame(text + _DONE), _FINAL

    def record(self) -> dict[str, Any]:
        seq, t0 = self.seq, self.received_at
        intended = [round((t - t0) * 1000.0, 4) for t in seq.chunk_times] if seq else []
        tokens = seq.chunk_tokens.tolist() if seq else []
        return {
            "id": self.rid,
            "number": self.number,
            "api": self.api,
            "received_at": t0,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": seq.cached_tokens if seq else None,
            "max_tokens": self.max_tokens,
            "completion_tokens": sum(tokens),
            "finish_reason": seq.finish_reason if seq else None,
            "fault": str(self.fault) if self.fault else None,
            "outcome": self.outcome,
            "intended_ttft_ms": intended[0] if intended else None,
            "intended_chunk_times_ms": intended,
            "chunk_tokens": tokens,
            "actual_chunk_times_ms": [round((t - t0) * 1000.0, 4) for t in self.actual],
        }


class _Lateness:
    """Lateness of the engine loop's steps: all-time count/sum/max and the last 1024 for quantiles."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=1024)
        self.count, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        values = sorted(self.recent)
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


class Sim:
    """Run-time state: config, engine, counters, request history, and the engine loop task."""

    def __init__(self, config: SimConfig) -> None:
        self.startup_config = self.config = config
        self.engine = Engine(config)
        self.history: deque[Stream] = deque(maxlen=config.history)
        self.active: dict[int, Stream] = {}
        self.requests = 0
        self.fault_base = 0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "prompt_tokens",
                "generation_tokens",
                "prefix_cache_queries",
                "prefix_cache_hits",
                "spec_decode_num_drafts",
                "spec_decode_num_draft_tokens",
                "spec_decode_num_accepted_tokens",
                "engine_steps",
                "engine_slips",
                "aborted_requests",
            ),
            0,
        )
        self.faults_injected: dict[str, int] = {}
        # Accepted drafts by position in the draft (vLLM's spec_decode_num_accepted_tokens_per_pos); grows with
        # tokens_per_chunk, which may change at run time.
        self.accepted_per_pos: list[int] = []
        self.lateness = _Lateness()
        # Writing a step's chunks takes time (a send per connection, ~13 µs each here): the loop starts that
        # much early so that the writes are centred on the step's end, in a seeded random order so that no
        # request (say, the newly admitted ones at the batch's end) is always written last.
        self.write_s = 0.0  # moving average of one chunk's write
        self.order = random.Random(config.seed)
        self.wake = asyncio.Event()
        self.closing = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="llmperf-sim-engine")
        self.task.add_done_callback(self._engine_stopped)

    async def shutdown(self) -> None:
        self.closing.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for stream in list(self.active.values()):
            self.abort(stream, "shutdown")

    def _engine_stopped(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("simulator engine loop failed", exc_info=task.exception())
        for stream in list(self.active.values()):
            self.abort(stream, "engine_error")

    # --- requests --------------------------------------------------------------------------------------

    def new_stream(self, api: str, received_at: float, prompt_tokens: int, max_tokens: int) -> Stream:
        self.requests += 1
        number = self.requests
        fault = pick_fault(self.config.faults, number - self.fault_base, seed=self.config.seed)
        stream = Stream(
            number=number,
            api=api,
            model=self.config.model,
            created=int(time.time()),
            received_at=received_at,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            fault=fault,
        )
        self.counters["requests"] += 1
        if fault is not None:
            self.faults_injected[fault.kind] = self.faults_injected.get(fault.kind, 0) + 1
        self.history.append(stream)
        return stream

    def submit(self, stream: Stream, token_ids: list[int], *, ignore_eos: bool) -> asyncio.Future[None]:
        seq = Sequence(
            number=stream.number,
            received_at=stream.received_at,
            prompt_tokens=stream.prompt_tokens,
            max_tokens=stream.max_tokens,
            ignore_eos=ignore_eos,
            token_ids=token_ids,
        )
        stream.seq = seq
        stream.done = asyncio.get_running_loop().create_future()
        self.active[stream.number] = stream
        self.counters["prompt_tokens"] += stream.prompt_tokens
        self.engine.add(seq)
        self.wake.set()
        return stream.done

    def abort(self, stream: Stream, outcome: str) -> None:
        if stream.seq is not None:
            self.engine.abort(stream.seq)
        if outcome in ("client_gone", "slow_client"):
            self.counters["aborted_requests"] += 1
        if outcome in ("shutdown", "engine_error") and stream.transport is not None:
            stream.transport.close()
        self._finish(stream, outcome)

    def _finish(self, stream: Stream, outcome: str) -> None:
        stream.outcome = outcome
        stream.pending.clear()  # never sent; the history keeps the stream, not its bytes
        stream.pending_tokens = 0
        self.active.pop(stream.number, None)
        if stream.done is not None and not stream.done.done():
            stream.done.set_result(None)

    # --- the engine loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        engine = self.engine
        while True:
            start = engine.next_start()
            if start is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = perf_counter()
            if start > now:
                # Waiting for ttft_add_ms to pass; an arrival or a config change re-plans.
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), start - now)
                continue
            if now - start > self.config.max_lag_ms / 1000.0:
                # Too late to keep the schedule (CPU-bound, or decode_ms=0): restart it from now.
                start = now
                self.counters["engine_slips"] += 1
            step = engine.step(start)
            self._admitted(step)
            batch = self._plan(step)
            spin_s = min(self.config.spin_ms / 1000.0, SPIN_SHARE * (step.end - start))
            write_from = step.end - self.write_s * (len(batch) - 1) / 2
            await sleep_until(write_from, spin_s)
            self.lateness.add(perf_counter() - write_from)
            self._deliver(batch)
            counters = self.counters
            counters["engine_steps"] += 1
            counters["spec_decode_num_drafts"] += step.drafts
            counters["spec_decode_num_draft_tokens"] += step.draft_tokens
            counters["spec_decode_num_accepted_tokens"] += step.accepted_tokens
            per_pos = self.accepted_per_pos
            per_pos.extend([0] * (len(step.accepted_per_pos) - len(per_pos)))
            for position, count in enumerate(step.accepted_per_pos):
                per_pos[position] += count

    def _admitted(self, step: Step) -> None:
        counters, active = self.counters, self.active
        for seq in step.admitted:
            cached = seq.cached_tokens
            if cached is not None:  # None: the prefix cache is off
                counters["prefix_cache_queries"] += seq.prompt_tokens
                counters["prefix_cache_hits"] += cached
                active[seq.number].admitted(cached)

    def _plan(self, step: Step) -> list[tuple[Stream, bytes, int, int]]:
        active = self.active
        batch = []
        for seq, n in step.emitted:
            stream = active[seq.number]
            data, action = stream.plan(seq, n)
            batch.append((stream, data, action, n))
        self.order.shuffle(batch)
        return batch

    def _deliver(self, batch: list[tuple[Stream, bytes, int, int]]) -> None:
        tokens = writes = 0
        burst = self.config.chunks_per_write
        began = perf_counter()
        for stream, data, action, n in batch:
            if stream.outcome != "running":
                continue  # ended (e.g. client gone) while the step was in flight
            transport = stream.transport
            if action == _SKIP:
                tokens += n
            elif transport is None and action == _FINAL:  # non-streaming: the handler sends the body
                tokens += n
                self._finish(stream, "ok")
            elif transport is None or transport.is_closing():
                self.abort(stream, "client_gone")
            elif action in (_CLOSE, _HANG):
                if stream.pending and self._write(stream, transport, b"".join(stream.pending), len(stream.pending)):
                    tokens += stream.pending_tokens  # what earlier steps made still goes out before the fault
                if action == _CLOSE:
                    transport.close()
                self.abort(stream, "disconnect" if action == _CLOSE else "hang")
            else:
                chunks, pending = 1, stream.pending
                # After the first chunk (TTFT goes at once), chunks_per_write steps go out in one write.
                if pending or (action == _WRITE and burst > 1 and stream.actual):
                    pending.append(data)
                    stream.pending_tokens += n
                    if action == _WRITE and len(pending) < burst:
                        continue
                    data, chunks, n = b"".join(pending), len(pending), stream.pending_tokens
                    pending.clear()
                    stream.pending_tokens = 0
                if not self._write(stream, transport, data, chunks):
                    self.abort(stream, "client_gone")  # one broken connection must not stop the engine
                    continue
                tokens += n
                writes += 1
                if transport.get_write_buffer_size() > SLOW_CLIENT_BYTES:
                    transport.abort()
                    self.abort(stream, "slow_client")
                elif action == _WRITE_CLOSE:
                    transport.close()
                    self.abort(stream, "truncated")
                elif action == _FINAL:
                    self._finish(stream, "ok")
        self.counters["generation_tokens"] += tokens
        if writes > 1:
            self.write_s += 0.2 * ((perf_counter() - began) / writes - self.write_s)

    @staticmethod
    def _write(stream: Stream, transport: asyncio.Transport, data: bytes, chunks: int) -> bool:
        """Send ``chunks`` framed chunks in one write and note when; False when the connection is broken."""
        try:
            transport.write(data)
        except (OSError, RuntimeError):
            return False
        written = perf_counter()
        if chunks == 1:
            stream.actual.append(written)
        else:
            stream.actual.extend([written] * chunks)
        return True

    # --- run-time reconfiguration ----------------------------------------------------------------------

    def reconfigure(self, changes: dict[str, Any]) -> SimConfig:
        reset = changes.pop("reset", False)
        if not isinstance(reset, bool):
            raise SpecError(f"reset={reset!r} must be true or false")
        base = self.startup_config if reset else self.config
        new = base.updated(changes)
        fixed = [name for name in STARTUP_ONLY if getattr(new, name) != getattr(self.config, name)]
        if fixed:
            raise SpecError(f"{', '.join(fixed)} can only be set at start-up")
        if "faults" in changes or new.faults != self.config.faults:
            self.fault_base = self.requests
        if new.history != self.config.history:
            self.history = deque(self.history, maxlen=new.history)
        self.config = new
        self.engine.config = new
        self.wake.set()
        return new


# --- request parsing -------------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _prompt_ids(value: Any) -> list[int]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        return text_token_ids(value)
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        bad = next((i for i in value if not 0 <= i < VOCAB_SIZE), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary [0, {VOCAB_SIZE})")
        return list(value)
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request)")


def _messages(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects")
    out: list[tuple[str, str]] = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "each message must be an object with a string role")
        content = message.get("content")
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise ApiError(400, "only text content parts are simulated")
            content = " ".join(str(p) for p in parts)
        if not isinstance(content, str):
            raise ApiError(400, "message content must be a string or a list of text parts")
        out.append((message["role"], content))
    return out


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_model(body: dict[str, Any], served: str) -> None:
    model = body.get("model")
    if model is not None and model != served:
        raise ApiError(404, f"The model `{model}` does not exist; this server serves `{served}`.", "NotFoundError")


# --- handlers --------------------------------------------------------------------------------------------


class Handlers:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__, "engine": ENGINE_NAME})

    async def models(self, request: web.Request) -> web.Response:
        cfg = self.sim.config
        card = {"id": cfg.model, "object": "model", "owned_by": ENGINE_NAME, "max_model_len": cfg.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        _check_model(body, self.sim.config.model)
        if "messages" in body:
            ids = chat_token_ids(_messages(body["messages"]))
        elif "prompt" in body:
            ids = _prompt_ids(body["prompt"])
        elif isinstance(body.get("content"), str):
            ids = text_token_ids(body["content"])
        else:
            raise ApiError(400, 'send {"prompt": str}, {"content": str} or {"messages": [...]}')
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": self.sim.config.max_model_len})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _generate(self, request: web.Request, api: str) -> web.StreamResponse:
        received_at = _received_at(request)
        sim, cfg = self.sim, self.sim.config
        body = await _json_body(request)
        _check_model(body, cfg.model)
        if api == "completions":
            if "prompt" not in body:
                raise ApiError(400, "prompt is required")
            prompt_ids = _prompt_ids(body["prompt"])
            max_tokens = _int_field(body, "max_tokens")
        else:
            prompt_ids = chat_token_ids(_messages(body.get("messages")))
            max_tokens = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
        prompt_tokens = len(prompt_ids)
        if prompt_tokens == 0:
            raise ApiError(400, "the prompt is empty; send at least one token")
        max_tokens = max_tokens or cfg.default_max_tokens
        if prompt_tokens + max_tokens > cfg.max_model_len:
            raise ApiError(
                400,
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the context length "
                f"{cfg.max_model_len}; ask for fewer tokens",
            )
        if body.get("n", 1) != 1:
            raise ApiError(400, "only n=1 is simulated")
        stream_flag = body.get("stream", False)
        options = body.get("stream_options") or {}
        if not isinstance(stream_flag, bool) or not isinstance(options, dict):
            raise ApiError(400, "stream must be a boolean and stream_options an object")
        ignore_eos = body.get("ignore_eos", False) is True

        if sim.task is None or sim.task.done():
            raise ApiError(500, "the simulator's engine loop has stopped; see the server log", "InternalServerError")
        stream = sim.new_stream(api, received_at, prompt_tokens, max_tokens)
        fault = stream.fault
        if fault is not None and fault.kind in HTTP_FAULTS:
            stream.outcome = "fault"
            status = HTTP_FAULTS[fault.kind]
            response = _error_response(status, f"simulated fault {fault}", "SimulatedFault")
            if status == 429:
                response.headers["Retry-After"] = "1"
            return response
        if not stream_flag:
            stream.fault = None  # stream faults do not apply to a single JSON body
            await self._wait(stream, prompt_ids, ignore_eos)
            return self._full_body(stream, api)
        return await self._stream(request, stream, options, prompt_ids, ignore_eos)

    async def _stream(
        self, request: web.Request, stream: Stream, options: dict[str, Any], prompt_ids: list[int], ignore_eos: bool
    ) -> web.StreamResponse:
        sim = self.sim
        # vLLM sends per-chunk usage only when include_usage is also set; the same here.
        stream.include_usage = options.get("include_usage") is True
        stream.continuous = stream.include_usage and options.get("continuous_usage_stats") is True
        stream.usage_in_last = stream.include_usage and sim.config.usage_style == "llamacpp"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response.enable_chunked_encoding()
        writer = await response.prepare(request)
        if writer is not None:
            writer.send_headers()  # chunks are written to the transport directly: headers must go first
        transport = request.transport
        if transport is None or transport.is_closing():
            stream.outcome = "client_gone"
            return response
        if stream.fault is not None and stream.fault.kind == "empty":
            stream.outcome = "empty"
            await response.write(_DONE.encode())
            await response.write_eof()
            return response
        stream.transport = transport
        if stream.api == "chat":
            transport.write(_frame(stream.role_chunk()))
        await self._wait(stream, prompt_ids, ignore_eos)
        if stream.outcome == "hang":
            assert stream.fault is not None
            await self._hang(transport, stream.fault.seconds)
            transport.close()
        if stream.outcome == "ok":
            await response.write_eof()
        return response

    async def _wait(self, stream: Stream, prompt_ids: list[int], ignore_eos: bool) -> None:
        done = self.sim.submit(stream, prompt_ids, ignore_eos=ignore_eos)
        try:
            await done
        finally:
            if not done.done():  # cancelled: the client went away or the server is stopping
                self.sim.abort(stream, "client_gone")

    async def _hang(self, transport: asyncio.Transport, seconds: float) -> None:
        deadline = perf_counter() + seconds
        while not (transport.is_closing() or self.sim.closing.is_set()):
            remaining = deadline - perf_counter()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.05, remaining))

    def _full_body(self, stream: Stream, api: str) -> web.Response:
        seq = stream.seq
        assert seq is not None
        text = output_text(0, seq.generated)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": seq.finish_reason}
        if api == "completions":
            choice["text"] = text
        else:
            choice["message"] = {"role": "assistant", "content": text}
        body = {
            "id": stream.rid,
            "object": "text_completion" if api == "completions" else "chat.completion",
            "created": int(time.time()),
            "model": self.sim.config.model,
            "choices": [choice],
            "usage": json.loads(stream.usage(seq.generated)),
        }
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=render_metrics(self.sim), content_type="text/plain", charset="utf-8")

    async def sim_requests(self, request: web.Request) -> web.Response:
        records = [s.record() for s in self.sim.history]
        if request.query.get("clear") in ("1", "true"):
            self.sim.history.clear()
        return web.json_response({"requests": records})

    async def sim_stats(self, request: web.Request) -> web.Response:
        lat = self.sim.lateness
        return web.json_response(
            {
                "steps": lat.count,
                "slips": self.sim.counters["engine_slips"],
                "lateness_ms": {
                    "mean": lat.total / lat.count * 1000.0 if lat.count else 0.0,
                    "p50_recent": lat.quantile(0.5) * 1000.0,
                    "p99_recent": lat.quantile(0.99) * 1000.0,
                    "max": lat.max * 1000.0,
                },
                "running": len(self.sim.engine.running),
                "waiting": len(self.sim.engine.waiting),
            }
        )

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.config.as_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            new = self.sim.reconfigure(body)
        except SpecError as exc:
            raise ApiError(400, str(exc)) from None
        return web.json_response(new.as_dict())


_COUNTER_HELP = {
    "requests": "Generation requests accepted (including those given a fault)",
    "prompt_tokens": "Prompt tokens of requests that entered the engine",
    "generation_tokens": "Output tokens sent",
    "prefix_cache_queries": "Prompt tokens looked up in the prefix cache (requests admitted while it is on)",
    "prefix_cache_hits": "Prompt tokens found in the prefix cache, whose prefill was skipped",
    "preemptions": "Preemptions (the model never preempts)",
    "spec_decode_num_drafts": "Drafts proposed (one per sequence per decode step when tokens_per_chunk > 1)",
    "spec_decode_num_draft_tokens": "Draft tokens proposed (tokens_per_chunk - 1 per sequence per decode step)",
    "spec_decode_num_accepted_tokens": "Draft tokens accepted",
    "engine_steps": "Engine steps run",
    "engine_slips": "Times the engine loop fell more than max_lag_ms behind and restarted its schedule",
    "aborted_requests": "Requests dropped because the client went away or stopped reading",
}


def render_metrics(sim: Sim) -> str:
    """Prometheus text exposition of the simulator's counters and gauges."""
    counters = {**sim.counters, "preemptions": 0}
    lines: list[str] = []
    for name, help_text in _COUNTER_HELP.items():
        lines += [f"# HELP sim:{name}_total {help_text}", f"# TYPE sim:{name}_total counter"]
        lines.append(f"sim:{name}_total {counters[name]}")
    lines += ["# HELP sim:faults_injected_total Faults injected, by kind", "# TYPE sim:faults_injected_total counter"]
    lines += [f'sim:faults_injected_total{{kind="{k}"}} {v}' for k, v in sorted(sim.faults_injected.items())]
    name = "sim:spec_decode_num_accepted_tokens_per_pos_total"
    lines += [f"# HELP {name} Draft tokens accepted, by position in the draft", f"# TYPE {name} counter"]
    lines += [f'{name}{{position="{i}"}} {v}' for i, v in enumerate(sim.accepted_per_pos)]
    for name, value, help_text in (
        ("num_requests_running", len(sim.engine.running), "Sequences in the batch"),
        ("num_requests_waiting", len(sim.engine.waiting), "Requests queued for admission"),
        ("engine_step_lateness_max_seconds", sim.lateness.max, "Largest lateness of a step"),
    ):
        lines += [f"# HELP sim:{name} {help_text}", f"# TYPE sim:{name} gauge", f"sim:{name} {value}"]
    lat = sim.lateness
    lines += [
        "# HELP sim:engine_step_lateness_seconds Actual minus intended end of each engine step (last 1024)",
        "# TYPE sim:engine_step_lateness_seconds summary",
        f'sim:engine_step_lateness_seconds{{quantile="0.5"}} {lat.quantile(0.5)}',
        f'sim:engine_step_lateness_seconds{{quantile="0.99"}} {lat.quantile(0.99)}',
        f"sim:engine_step_lateness_seconds_sum {lat.total}",
        f"sim:engine_step_lateness_seconds_count {lat.count}",
    ]
    return "\n".join(lines) + "\n"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.message, exc.kind)
    return response


def build_app(config: SimConfig) -> web.Application:
    """The aiohttp application; the engine loop starts with it and stops at its shutdown."""
    sim = Sim(config)
    h = Handlers(sim)
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024 * 1024)
    app.add_routes(
        [
            web.get("/health", h.health),
            web.get("/version", h.version),
            web.get("/v1/models", h.models),
            web.post("/tokenize", h.tokenize),
            web.post("/v1/completions", h.completions),
            web.post("/v1/chat/completions", h.chat),
            web.get("/metrics", h.metrics),
            web.get("/sim/requests", h.sim_requests),
            web.get("/sim/stats", h.sim_stats),
            web.get("/sim/config", h.get_config),
            web.post("/sim/config", h.set_config),
        ]
    )

    async def on_startup(app: web.Application) -> None:
        sim.start()

    async def on_shutdown(app: web.Application) -> None:
        await sim.shutdown()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


# --- running ---------------------------------------------------------------------------------------------


class _ArrivalClock(asyncio.Protocol):
    """Hands everything to aiohttp's protocol and notes when bytes last arrived on the connection.

    A request's clock starts when its last byte arrives, as a real server's does, not when aiohttp has parsed
    it and routed it to a handler (0.1–0.2 ms later, more in a burst). HTTP/1.1 without pipelining: nothing
    else arrives on the connection between a request's last byte and its handler.
    """

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.last_data_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_data_at = perf_counter()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _received_at(request: web.Request) -> float:
    now = perf_counter()
    transport = request.transport
    clock = transport.get_protocol() if transport is not None else None
    if isinstance(clock, _ArrivalClock) and 0.0 < clock.last_data_at <= now:
        return clock.last_data_at
    return now


class _ArrivalClockSite(web.BaseSite):
    """aiohttp's TCP site with an :class:`_ArrivalClock` in front of every connection's protocol."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int) -> None:
        super().__init__(runner)
        self._host, self._port = host, port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        factory = self._runner.server
        assert factory is not None  # set by runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _ArrivalClock(factory()), self._host, self._port, backlog=self._backlog
        )


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A uvloop loop when asked for and installed, else the default asyncio one."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


async def serve(
    config: SimConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (forever without one); ``on_ready(base_url)`` runs once it listens."""
    runner = web.AppRunner(build_app(config), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    stopped = stop or asyncio.Event()
    poller = asyncio.ensure_future(poll_until(stopped)) if config.busy_poll else None
    try:
        site = _ArrivalClockSite(runner, config.host, config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if on_ready is not None:
            on_ready(url)
        await stopped.wait()
    finally:
        if poller is not None:
            poller.cancel()
        await runner.cleanup()


class _ThreadServer:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.ready = threading.Event()
        self.url = ""
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._target, name="llmperf-sim", daemon=True)

    def _target(self) -> None:
        loop = self.loop = new_event_loop(self.config.uvloop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            if self.ready.is_set():
                log.error("the simulator thread stopped with an error", exc_info=exc)
            self.error = exc
        finally:
            self.ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        await serve(self.config, on_ready=self._on_ready, stop=self.stop)

    def _on_ready(self, url: str) -> None:
        self.url = url
        self.ready.set()

    def close(self, timeout_s: float) -> None:
        loop, stop = self.loop, self.stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stop.set)
        self.thread.join(timeout_s)


@contextlib.contextmanager
def run_in_thread(config: SimConfig | None = None, *, timeout_s: float = 10.0) -> Iterator[str]:
    """Run the simulator on its own event loop in a daemon thread; yield its base URL; stop it on exit."""
    server = _ThreadServer(config or SimConfig())
    server.thread.start()
    if not server.ready.wait(timeout_s):
        server.close(timeout_s)
        raise ServerStartTimeout(f"the simulator did not start within {timeout_s} s; check the host/port")
    if server.error is not None or not server.url:
        server.thread.join(timeout_s)
        raise ServerError(f"the simulator failed to start: {server.error!r}; check the host/port") from server.error
    try:
        yield server.url
    finally:
        server.close(timeout_s + 5.0)
