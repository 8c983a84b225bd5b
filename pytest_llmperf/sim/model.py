"""The simulator's configuration, tokenizer and timing model (pure: no I/O, no clock reads).

Times are seconds on any monotonic clock and are passed in by the caller, so tests drive the model with a
fake clock and know every answer exactly; the HTTP server (``app.py``) drives the same code with
``time.perf_counter()``.

Timing model: continuous batching with one engine loop
------------------------------------------------------
The engine runs *steps* one after another.

- A request becomes *ready* ``ttft_add_ms`` after its receipt and waits in a FIFO queue. At the start of a
  step, ready requests at the head of the queue are admitted while fewer than ``max_batch`` sequences run
  (beyond that they keep waiting: queueing). An admitted request pays its whole uncached prompt in the step
  that admits it (no chunked prefill, no preemption).
- Prefix cache (``prefix_cache``, on by default like vLLM's automatic prefix caching): the prompt is cut into
  full blocks of ``B = prefix_cache_block`` token ids, block ``i`` keyed by a hash chained over blocks
  ``0..i``, so a block matches only when everything before it matches too. On admission (not receipt: a
  request queued behind an identical one sees the blocks that one inserted when it was admitted, even in the
  same step) the request's ``cached_tokens`` are its leading run of cached blocks, capped at
  ``B * floor((p - 1) / B)`` for a ``p``-token prompt because, as in vLLM, the last prompt token is always
  computed; then all its full blocks are inserted. Only prompt blocks are cached, at most
  ``prefix_cache_blocks``, the least recently used evicted first (a prompt's tail blocks before its head). The
  cache is independent of the batch (no block is pinned by a running request); turning it off or changing
  the block size empties it. Off, ``cached_tokens`` is ``None`` (unknown) and the whole prompt is prefilled.
- Step time, with ``n`` = sequences in the step after admission and ``P`` = uncached prompt tokens admitted
  (``prompt_tokens - cached_tokens`` summed)::

      t = (decode_ms + decode_ms_per_seq * n) * tpot_scale * (1 + slowdown_per_token_pct / 100)
          + P / prefill_tok_s
      t = t * exp(jitter * Z), Z ~ N(0, 1) from a generator seeded by ``seed``   (when jitter > 0)
      t = t + stall_ms                           on every stall_every_steps-th step (steps count from 1)

- Every sequence in the step receives tokens at the step's end, as one chunk. The admitting step yields
  exactly one token (the first). Later steps yield ``1 + Binomial(tokens_per_chunk - 1, accept_rate)``
  tokens, like speculative decoding / MTP with ``tokens_per_chunk - 1`` drafts, capped at the tokens left.
  As in a real verifier, the ``a`` accepted drafts of a step count as positions ``0 … a-1`` accepted (vLLM's
  per-position counters: position ``i`` is accepted when at least ``i + 1`` drafts are).
  When ``ignore_eos`` is false and ``eos_prob > 0``, each token ends the sequence with probability
  ``eos_prob`` (finish reason ``stop``); otherwise it ends at ``max_tokens`` (``length``).
- A step starts when the previous one ends (absolute deadlines, so timer lateness does not accumulate). An
  idle engine starts a step at the ready time of the request at the head of the queue.

Known answers that follow: a lone request with ``p`` prompt tokens, ``c`` of them cached, on an idle engine,
with ``f = tpot_scale * (1 + slowdown_per_token_pct / 100)``, gets its first token after
``ttft_add_ms + (decode_ms + decode_ms_per_seq) * f + 1000 * (p - c) / prefill_tok_s`` ms and every later
chunk ``(decode_ms + decode_ms_per_seq) * f`` ms after the previous one. A new prompt has ``c = 0``; the exact
repeat of a prompt still in the cache has ``c = B * floor((p - 1) / B)`` (100 tokens, ``B = 16``: 96; 64
tokens: 48; under 17 tokens: 0); a prompt sharing its first ``s`` tokens with a cached one has
``c = B * floor(min(s, p - 1) / B)``.

Tokenizer: a word (whitespace-separated) is one token, id ``crc32(word) % VOCAB_SIZE``. A chat prompt costs
``CHAT_TOKENS_PER_MESSAGE`` template tokens per message plus ``CHAT_TOKENS_REPLY`` for the reply header.
Output token ``i`` (0-based) is the text ``" tok<i>"``, so ``k`` tokens are ``k`` words.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.errors import SpecError
from pytest_llmperf.sim.faults import FaultSpec, parse_fault

VOCAB_SIZE = 32000
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_REPLY = 3
USAGE_STYLES: tuple[str, ...] = ("vllm", "llamacpp")
# Fields that only take effect at start-up, so POST /sim/config refuses to change them.
STARTUP_ONLY: tuple[str, ...] = ("host", "port", "uvloop", "busy_poll")

# Fixed ids of the chat template's tokens (message start, role/content separator, message end).
_MSG_START, _MSG_SEP, _MSG_END = 1, 2, 3


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """Everything the simulator can be told. CLI flags are the field names with dashes (``--decode-ms``);
    ``POST /sim/config`` takes the field names themselves."""

    host: str = _opt("127.0.0.1", "address to bind (loopback by default)")
    port: int = _opt(0, "port to bind; 0 picks a free one")
    model: str = _opt("llmperf-sim", "served model name")
    max_model_len: int = _opt(32768, "context length: prompt + max_tokens above it is a 400")
    default_max_tokens: int = _opt(16, "output length when a request sets no max_tokens")
    prefill_tok_s: float = _opt(20000.0, "prefill rate, prompt tokens per second")
    decode_ms: float = _opt(10.0, "decode step base time in ms (0: as fast as possible)")
    decode_ms_per_seq: float = _opt(0.1, "extra decode step time per sequence in the batch, ms")
    max_batch: int = _opt(64, "most sequences in a step; later requests wait")
    tokens_per_chunk: int = _opt(1, "k: a decode step yields 1 + Binomial(k-1, accept_rate) tokens")
    accept_rate: float = _opt(1.0, "acceptance probability of each of the k-1 draft tokens")
    chunks_per_write: int = _opt(
        1,
        "after the first chunk, write each stream's chunks in bursts of N decode steps, each burst in one "
        "socket write (a server whose output reaches the socket in batches); the intended times stay one per "
        "step",
    )
    jitter: float = _opt(0.0, "sigma of the lognormal factor applied to each step time")
    seed: int = _opt(0, "seed of jitter, draft acceptance, EOS and rate-selected faults")
    ttft_add_ms: float = _opt(0.0, "extra delay between receipt and admission of each request, ms")
    tpot_scale: float = _opt(1.0, "factor on decode step time")
    slowdown_per_token_pct: float = _opt(0.0, "decode step time +pct%% (10 means x1.10)")
    stall_every_steps: int = _opt(0, "add stall_ms to every N-th step (0: never)")
    stall_ms: float = _opt(0.0, "length of a periodic stall, ms")
    eos_prob: float = _opt(0.0, "probability that a token ends a request that did not set ignore_eos")
    prefix_cache: bool = _opt(
        True,
        "prefix cache, like vLLM's automatic prefix caching: the full blocks of a prompt that an earlier prompt "
        "began with cost no prefill; reported as usage.prompt_tokens_details.cached_tokens",
    )
    prefix_cache_block: int = _opt(16, "prefix cache block size in tokens: only whole blocks are cached")
    prefix_cache_blocks: int = _opt(8192, "prefix cache capacity in blocks, least recently used evicted first")
    usage_style: str = _opt("vllm", "vllm: usage in a final chunk with no choices; llamacpp: in the last chunk")
    faults: tuple[FaultSpec, ...] = _opt((), "injected faults, see faults.py")
    history: int = _opt(10000, "requests kept for GET /sim/requests (about 20 bytes per chunk each)")
    max_lag_ms: float = _opt(10.0, "when the loop is later than this, the schedule slips to now")
    spin_ms: float = _opt(
        1.5,
        "poll the event loop for the last spin_ms before a step ends (at most 15%% of the step) instead of "
        "trusting its timers, which fire up to 1 ms late; 0 saves the CPU",
    )
    uvloop: bool = _opt(True, "use uvloop when installed")
    busy_poll: bool = _opt(
        False,
        "keep the event loop polling instead of sleeping in the kernel, so arrivals are stamped and steps begin "
        "without the CPU's wake-up delay (up to a millisecond on some VMs); costs a full core",
    )

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise SpecError("invalid simulator config: " + "; ".join(problems))

    @property
    def decode_factor(self) -> float:
        return self.tpot_scale * (1.0 + self.slowdown_per_token_pct / 100.0)

    def replace(self, **changes: Any) -> SimConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["faults"] = [str(f) for f in self.faults]
        return data

    def updated(self, changes: Mapping[str, Any]) -> SimConfig:
        """A copy with ``changes`` (JSON-style values; names with ``_`` or ``-``) applied and validated."""
        return self.replace(**_coerce(changes))


_FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}


def _coerce(changes: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_name, value in changes.items():
        name = raw_name.replace("-", "_")
        if name not in _FIELDS:
            raise SpecError(f"unknown simulator setting {raw_name!r}; valid names: {', '.join(_FIELDS)}")
        default = _FIELDS[name].default
        if name == "faults":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, (str, FaultSpec)) for i in items):
                raise SpecError("faults must be a list of strings like 'http_500:every=5'")
            value = tuple(i if isinstance(i, FaultSpec) else parse_fault(i) for i in items)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SpecError(f"{name}={value!r} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{name}={value!r} must be an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(f"{name}={value!r} must be a number")
            value = float(value)
        elif not isinstance(value, str):
            raise SpecError(f"{name}={value!r} must be a string")
        out[name] = value
    return out


def config_problems(c: SimConfig) -> list[str]:
    """Every reason ``c`` is unusable, as short phrases naming the field and the accepted values."""
    problems: list[str] = []

    def check(ok: bool, name: str, expected: str) -> None:
        if not ok:
            problems.append(f"{name}={getattr(c, name)!r} (expected {expected})")

    def number(name: str) -> float:
        value = getattr(c, name)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan

    def whole(name: str, low: int, high: int | None = None) -> bool:
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return low <= value and (high is None or value <= high)

    check(bool(c.host), "host", "an address")
    check(whole("port", 0, 65535), "port", "an int in 0..65535")
    check(bool(c.model), "model", "a non-empty name")
    for name, low in (
        ("max_model_len", 2),
        ("default_max_tokens", 1),
        ("max_batch", 1),
        ("tokens_per_chunk", 1),
        ("chunks_per_write", 1),
    ):
        check(whole(name, low), name, f"an int >= {low}")
    check(whole("prefix_cache_block", 1), "prefix_cache_block", "an int >= 1")
    for name in ("stall_every_steps", "history", "prefix_cache_blocks"):
        check(whole(name, 0), name, "an int >= 0")
    check(whole("seed", -(2**63)), "seed", "an int")
    check(number("prefill_tok_s") > 0, "prefill_tok_s", "a number > 0")
    check(number("tpot_scale") > 0, "tpot_scale", "a number > 0")
    check(number("max_lag_ms") > 0, "max_lag_ms", "a number > 0")
    check(number("slowdown_per_token_pct") > -100, "slowdown_per_token_pct", "a number > -100")
    for name in ("decode_ms", "decode_ms_per_seq", "jitter", "ttft_add_ms", "stall_ms", "spin_ms"):
        check(number(name) >= 0, name, "a number >= 0")
    check(0 <= number("accept_rate") <= 1, "accept_rate", "a number in [0, 1]")
    check(0 <= number("eos_prob") < 1, "eos_prob", "a number in [0, 1)")
    check(c.usage_style in USAGE_STYLES, "usage_style", " or ".join(USAGE_STYLES))
    check(all(isinstance(f, FaultSpec) for f in c.faults), "faults", "FaultSpec values")
    return problems


# --- tokenizer -------------------------------------------------------------------------------------------


def text_token_ids(text: str) -> list[int]:
    return [zlib.crc32(word.encode()) % VOCAB_SIZE for word in text.split()]


def chat_token_ids(messages: Iterable[tuple[str, str]]) -> list[int]:
    """Token ids of a chat prompt: each message is ``start, role, sep, *content, end``, then the reply
    header ``start, "assistant", sep`` — 4 tokens per message plus 3."""
    ids: list[int] = []
    for role, content in messages:
        ids += [_MSG_START, _role_id(role), _MSG_SEP, *text_token_ids(content), _MSG_END]
    ids += [_MSG_START, _role_id("assistant"), _MSG_SEP]
    return ids


def _role_id(role: str) -> int:
    return zlib.crc32(role.encode()) % VOCAB_SIZE


_WORDS: list[str] = []


def output_text(start: int, count: int) -> str:
    """The text of output tokens ``start .. start + count - 1``."""
    end = start + count
    if end > len(_WORDS):
        _WORDS.extend(f" tok{i}" for i in range(len(_WORDS), max(end, 2 * len(_WORDS))))
    return _WORDS[start] if count == 1 else "".join(_WORDS[start:end])


# --- engine ----------------------------------------------------------------------------------------------


class PrefixCache:
    """Full blocks of prompt token ids, each keyed by a hash chained over its own and every earlier block's
    tokens (vLLM's automatic prefix caching), at most ``capacity`` of them, least recently used evicted first."""

    def __init__(self, block: int, capacity: int) -> None:
        self.block = block
        self.capacity = capacity
        self._lru: OrderedDict[int, None] = OrderedDict()  # block keys, least recently used first

    def __len__(self) -> int:
        return len(self._lru)

    def block_keys(self, token_ids: Iterable[int]) -> list[int]:
        """One key per full block; key ``i`` depends on every token of blocks ``0..i``. Python's 64-bit tuple
        hash: a collision between different prompts (about 2**-64 a pair) is not worth guarding against."""
        ids, b = tuple(token_ids), self.block
        keys: list[int] = []
        key = 0
        for end in range(b, len(ids) + 1, b):
            key = hash((key, ids[end - b : end]))
            keys.append(key)
        return keys

    def lookup(self, token_ids: Iterable[int]) -> int:
        """Leading prompt tokens covered by cached blocks, leaving at least the last token to compute."""
        ids = tuple(token_ids)
        return self._hits(self.block_keys(ids), len(ids))

    def insert(self, token_ids: Iterable[int]) -> None:
        """Cache (or mark as just used) every full block of the prompt."""
        self._insert(self.block_keys(token_ids))

    def admit(self, token_ids: Iterable[int]) -> int:
        """:meth:`lookup` then :meth:`insert`, hashing the prompt once: what admitting a request does."""
        ids = tuple(token_ids)
        keys = self.block_keys(ids)
        cached = self._hits(keys, len(ids))
        self._insert(keys)
        return cached

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._evict()

    def _hits(self, keys: list[int], length: int) -> int:
        # As in vLLM, a fully cached prompt still computes its last token (it yields the first output token),
        # so at most the whole blocks before that token count.
        hits = 0
        for key in keys[: max(0, length - 1) // self.block]:
            if key not in self._lru:
                break
            hits += 1
        return hits * self.block

    def _insert(self, keys: list[int]) -> None:
        lru = self._lru
        # Head blocks end most recently used, so eviction takes a prompt's tail first: a block is useless
        # without those before it. Blocks beyond the capacity would be evicted at once.
        for key in reversed(keys[: self.capacity]):
            lru[key] = None
            lru.move_to_end(key)
        self._evict()

    def _evict(self) -> None:
        lru = self._lru
        while len(lru) > self.capacity:
            lru.popitem(last=False)


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the engine, with its intended schedule (absolute times of each chunk)."""

    number: int
    received_at: float
    prompt_tokens: int
    max_tokens: int
    ignore_eos: bool = True
    # Prompt token ids for the prefix cache; dropped once admitted (the server keeps thousands of sequences).
    # None: a prompt no other shares, never cached.
    token_ids: list[int] | None = None
    # Prompt tokens found in the prefix cache at admission; None while waiting or when the cache is off.
    cached_tokens: int | None = None
    ready_at: float = 0.0
    generated: int = 0
    finish_reason: str | None = None
    # Compact arrays: the server keeps thousands of these for GET /sim/requests.
    chunk_times: array[float] = field(default_factory=lambda: array("d"))
    chunk_tokens: array[int] = field(default_factory=lambda: array("I"))
    rng: random.Random | None = None


@dataclass(frozen=True, slots=True)
class Step:
    number: int
    start: float
    end: float
    admitted: list[Sequence]
    # (sequence, tokens in this step's chunk), in batch order
    emitted: list[tuple[Sequence, int]]
    finished: list[Sequence]
    draft_tokens: int
    accepted_tokens: int
    drafts: int = 0  # sequences that drafted in this step (vLLM's num_drafts)
    accepted_per_pos: tuple[int, ...] = ()  # accepted drafts by position in the draft


class Engine:
    """The continuous-batching scheduler. ``config`` may be replaced between steps."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._jitter_rng = random.Random(config.seed)
        self.prefix_cache = PrefixCache(config.prefix_cache_block, config.prefix_cache_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.steps = 0
        self.prev_end: float | None = None

    @property
    def config(self) -> SimConfig:
        return self._config

    @config.setter
    def config(self, config: SimConfig) -> None:
        old = self._config
        if config.seed != old.seed:
            self._jitter_rng = random.Random(config.seed)
        if (config.prefix_cache, config.prefix_cache_block) != (old.prefix_cache, old.prefix_cache_block):
            # Keys depend on the block size; and off then on starts empty, a way to clear the cache.
            self.prefix_cache = PrefixCache(config.prefix_cache_block, config.prefix_cache_blocks)
        elif config.prefix_cache_blocks != old.prefix_cache_blocks:
            self.prefix_cache.resize(config.prefix_cache_blocks)
        self._config = config

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def add(self, seq: Sequence) -> None:
        seq.ready_at = seq.received_at + self._config.ttft_add_ms / 1000.0
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Forget ``seq`` (client gone, fault); a no-op when it already finished."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def next_start(self) -> float | None:
        """When the next step may start, or ``None`` while there is nothing to do."""
        if self.running:
            return self.prev_end
        if not self.waiting:
            return None
        head = self.waiting[0].ready_at
        return head if self.prev_end is None else max(head, self.prev_end)

    def step(self, start: float) -> Step:
        """Plan the step that starts at ``start``: admit, time it, and hand out tokens."""
        cfg = self._config
        admitted: list[Sequence] = []
        waiting, running = self.waiting, self.running
        while waiting and len(running) < cfg.max_batch and waiting[0].ready_at <= start:
            seq = waiting.popleft()
            self._look_up(seq, cfg.prefix_cache)
            running.append(seq)
            admitted.append(seq)
        seconds = (cfg.decode_ms + cfg.decode_ms_per_seq * len(running)) * cfg.decode_factor / 1000.0
        if admitted:
            seconds += sum(s.prompt_tokens - (s.cached_tokens or 0) for s in admitted) / cfg.prefill_tok_s
        if cfg.jitter > 0:
            seconds *= math.exp(self._jitter_rng.gauss(0.0, cfg.jitter))
        self.steps += 1
        if cfg.stall_every_steps and self.steps % cfg.stall_every_steps == 0:
            seconds += cfg.stall_ms / 1000.0
        end = start + seconds
        emitted: list[tuple[Sequence, int]] = []
        finished: list[Sequence] = []
        drafts = accepted = drafting = 0
        k = cfg.tokens_per_chunk
        per_pos = [0] * (k - 1)
        for seq in running:
            left = seq.max_tokens - seq.generated
            n = 1
            if seq.generated and k > 1:
                drafts += k - 1
                drafting += 1
                n = min(left, 1 + self._accepted_drafts(seq, k - 1, cfg.accept_rate))
            if not seq.ignore_eos and cfg.eos_prob > 0:
                n = self._eos_cut(seq, n, cfg.eos_prob)
            if seq.generated:
                accepted += n - 1
                for position in range(n - 1):
                    per_pos[position] += 1
            seq.generated += n
            seq.chunk_times.append(end)
            seq.chunk_tokens.append(n)
            emitted.append((seq, n))
            if seq.finish_reason is not None or seq.generated >= seq.max_tokens:
                seq.finish_reason = seq.finish_reason or "length"
                finished.append(seq)
        if finished:
            self.running = [s for s in running if s.finish_reason is None]
        self.prev_end = end
        return Step(self.steps, start, end, admitted, emitted, finished, drafts, accepted, drafting, tuple(per_pos))

    def _look_up(self, seq: Sequence, enabled: bool) -> None:
        # At admission, in admission order: a request sees the blocks of every request admitted before it,
        # including earlier ones in the same step (computed in the same forward pass, as in vLLM).
        ids, seq.token_ids = seq.token_ids, None
        if enabled:
            seq.cached_tokens = self.prefix_cache.admit(ids) if ids is not None else 0

    def _rng(self, seq: Sequence) -> random.Random:
        if seq.rng is None:
            # Per-request generator: the draws of one request do not depend on what else is running.
            seq.rng = random.Random(f"{self._config.seed}:seq:{seq.number}")
        return seq.rng

    def _accepted_drafts(self, seq: Sequence, drafts: int, rate: float) -> int:
        if rate >= 1.0 or rate <= 0.0:
            return drafts if rate >= 1.0 else 0
        rng = self._rng(seq)
        return sum(rng.random() < rate for _ in range(drafts))

    def _eos_cut(self, seq: Sequence, n: int, prob: float) -> int:
        rng = self._rng(seq)
        for i in range(n):
            if rng.random() < prob:
                seq.finish_reason = "stop"
                return i + 1
        return n


def simulate(config: SimConfig, requests: Iterable[tuple[float, int | Iterable[int], int]]) -> list[Sequence]:
    """Run the model to completion for ``(received_at, prompt, max_tokens)`` requests, as the server would on
    an infinitely fast machine; ``prompt`` is the prompt's token ids, or its length for a prompt that shares
    nothing with the others (never cached). Returns the sequences (numbered from 1 in receipt order) with
    their intended ``chunk_times`` and ``chunk_tokens`` and their ``cached_tokens``."""
    pending = deque(_sequence(i, t, p, m) for i, (t, p, m) in enumerate(sorted(requests, key=lambda r: r[0]), start=1))
    done = list(pending)
    engine = Engine(config)
    while pending or not engine.idle:
        start = engine.next_start()
        if start is None:
            engine.add(pending.popleft())
            continue
        # Requests received before the step is planned join the queue first, as in the server.
        while pending and pending[0].received_at <= start:
            engine.add(pending.popleft())
        start = engine.next_start()
        assert start is not None
        engine.step(start)
    return done


def _sequence(number: int, received_at: float, prompt: int | Iterable[int], max_tokens: int) -> Sequence:
    if isinstance(prompt, int):
        return Sequence(number=number, received_at=received_at, prompt_tokens=prompt, max_tokens=max_tokens)
    ids = list(prompt)
    return Sequence(
        number=number, received_at=received_at, prompt_tokens=len(ids), max_tokens=max_tokens, token_ids=ids
    )
