"""Plain value objects that flow between the plugin's modules.

The settings and workload values are made of builtins, so they cross pytest-xdist's execnet channel and are
written to JSON or YAML as they are. A run's records stay in the process that measured them (or are pickled
from a client shard to it); their per-event series are packed arrays (``RequestRecord``), which
``as_dict()`` turns into lists. Units are part of field names (``_s``, ``_ms``, ``_len``).
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pytest_llmperf.errors import SpecError

Api = Literal["completions", "chat"]
CompatMode = Literal["vllm", "sglang"]
APIS: tuple[str, ...] = ("completions", "chat")
COMPAT_MODES: tuple[str, ...] = ("vllm", "sglang")
# Range-ratio rules (Workload.range_rule): vLLM's [L(1−r), L(1+r)]; SGLang's [L·r, L], which InferenceMAX used.
RANGE_RULES: tuple[str, ...] = ("vllm", "sglang", "inferencemax")
AB_ORDERS: tuple[str, ...] = ("abba", "random")  # order of A and B within A/B mode's blocks


def is_url(target: str) -> bool:
    """True for an http(s) URL, False for a profile name (how ``--llmperf-compare`` tells them apart)."""
    return target.startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages and reports.

    Plain string work, as :func:`urllib.parse.urlsplit` draws the authority (up to the first ``/``, ``?`` or
    ``#``): it never raises, so a URL with a bad port or bracket is redacted too, and the host is kept as written.
    """
    scheme, sep, rest = url.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    if not sep or "@" not in rest[:end]:
        return url
    return f"{scheme}://{rest[:end].rpartition('@')[2]}{rest[end:]}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    """One load episode: what to send, how fast, and how to count it.

    Exactly one of ``num_prompts`` and ``duration_s`` bounds the run (``num_prompts`` wins when both are set
    to keep runs bounded in count). ``concurrency=None`` with ``request_rate=inf`` sends everything at once.
    A ``trace`` bounds the run itself (its lines), so it may leave both unset.
    """

    api: Api = "completions"
    dataset: str = "random"
    input_len: int = 128
    output_len: int = 64
    range_ratio: float = 0.0
    # How range_ratio spreads random lengths: "vllm" [L(1−r), L(1+r)], "sglang" (or "inferencemax", its old
    # rule) [L·r, L]; None follows ``compat``. See client/datasets.py::sample_lengths.
    range_rule: str | None = None
    prefix_len: int = 0
    # True: the shared prefix is the same in every run and session (measures serving from a warm prefix cache);
    # False: each run draws its own, so only requests of one run share it.
    prefix_reuse: bool = False
    num_prompts: int | None = 32
    duration_s: float | None = None
    concurrency: int | None = None
    request_rate: float = math.inf
    burstiness: float = 1.0
    warmup: int = 0
    seed: int = 0
    ignore_eos: bool = True
    temperature: float | None = 0.0
    per_token_usage: bool = True
    request_timeout_s: float = 600.0
    compat: CompatMode = "vllm"
    # Dataset files only (ShareGPT as ``sglang.bench_serving --sharegpt-output-len/--sharegpt-context-len`` and
    # ``vllm bench serve --sharegpt-output-len`` filter it; see client/datasets.py): every request's output length,
    # instead of the reply's; and the most prompt + output tokens a conversation may have to be sent.
    dataset_output_len: int | None = None
    dataset_context_len: int | None = None
    # Trace replay (client/datasets.py::trace_prompts): a Mooncake-style JSONL of timestamp (ms), input_length,
    # output_length and hash_ids (prefix blocks of ``trace_block_size`` tokens shared between requests); each
    # request is sent at its timestamp divided by ``trace_speedup``.
    trace: str | None = None
    trace_speedup: float = 1.0
    trace_block_size: int = 512
    # Multi-turn conversations (client/conversations.py): user turns per conversation (dataset files: at most this
    # many of each conversation's), each request carrying the earlier turns; ``num_prompts`` then counts
    # conversations. ``turn_gap_s``: think time between a reply's end and the next turn's send.
    turns: int = 1
    turn_gap_s: float = 0.0

    def __post_init__(self) -> None:
        problems = workload_problems(self)
        if problems:
            raise SpecError("invalid workload: " + "; ".join(problems))

    def replace(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)

    @property
    def closed_loop(self) -> bool:
        """``concurrency`` users each send the next prompt as soon as their previous one ended (no rate, no
        trace); otherwise requests arrive on a schedule."""
        return bool(self.concurrency) and math.isinf(self.request_rate) and self.trace is None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Accepted types per field (``bool`` is not an ``int`` here: ``concurrency=True`` is a mistake).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("input_len", "output_len", "prefix_len", "warmup", "seed", "trace_block_size", "turns"), (int,)),
    **dict.fromkeys(("num_prompts", "concurrency", "dataset_output_len", "dataset_context_len"), (int, type(None))),
    **dict.fromkeys(
        ("range_ratio", "request_rate", "burstiness", "request_timeout_s", "trace_speedup", "turn_gap_s"), (int, float)
    ),
    **dict.fromkeys(("duration_s", "temperature"), (int, float, type(None))),
    **dict.fromkeys(("range_rule", "trace"), (str, type(None))),
    **dict.fromkeys(("ignore_eos", "per_token_usage", "prefix_reuse"), (bool,)),
    **dict.fromkeys(("api", "dataset", "compat"), (str,)),
}


def _type_problems(w: Workload) -> list[str]:
    problems = []
    for name, accepted in _FIELD_TYPES.items():
        value = getattr(w, name)
        if type(value) not in accepted:
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in accepted)
            problems.append(f"{name}={value!r} has type {type(value).__name__}, expected {expected}")
    return problems


def workload_problems(w: Workload) -> list[str]:
    """Every reason ``w`` cannot run, as short phrases that name the field and the accepted values."""
    problems = _type_problems(w)
    if problems:
        return problems  # range checks below assume the right types
    if w.api not in APIS:
        problems.append(f"api={w.api!r} (expected one of {', '.join(APIS)})")
    if w.compat not in COMPAT_MODES:
        problems.append(f"compat={w.compat!r} (expected one of {', '.join(COMPAT_MODES)})")
    for name in ("input_len", "output_len"):
        value = getattr(w, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{name}={value!r} (expected an int >= 1)")
    for name in ("prefix_len", "warmup", "seed"):
        value = getattr(w, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{name}={value!r} (expected an int >= 0)")
    if not 0.0 <= w.range_ratio < 1.0:
        problems.append(f"range_ratio={w.range_ratio!r} (expected 0 <= range_ratio < 1)")
    if w.range_rule is not None and w.range_rule not in RANGE_RULES:
        rules = ", ".join(RANGE_RULES)
        problems.append(f"range_rule={w.range_rule!r} (expected one of {rules}, or None to follow compat)")
    if w.num_prompts is None and w.duration_s is None and w.trace is None:
        problems.append("neither num_prompts nor duration_s is set (set one to bound the run)")
    if w.num_prompts is not None and (isinstance(w.num_prompts, bool) or w.num_prompts < 1):
        problems.append(f"num_prompts={w.num_prompts!r} (expected an int >= 1)")
    if w.duration_s is not None and not w.duration_s > 0:
        problems.append(f"duration_s={w.duration_s!r} (expected a number > 0)")
    if w.concurrency is not None and (isinstance(w.concurrency, bool) or w.concurrency < 1):
        problems.append(f"concurrency={w.concurrency!r} (expected an int >= 1 or None for unbounded)")
    if not w.request_rate > 0:
        problems.append(f"request_rate={w.request_rate!r} (expected a number > 0, inf for all at once)")
    if not w.burstiness > 0:
        problems.append(f"burstiness={w.burstiness!r} (expected a number > 0; 1 is Poisson)")
    if not w.request_timeout_s > 0:
        problems.append(f"request_timeout_s={w.request_timeout_s!r} (expected a number > 0)")
    problems.extend(_dataset_length_problems(w))
    problems.extend(_trace_problems(w))
    problems.extend(_turn_problems(w))
    return problems


def _turn_problems(w: Workload) -> list[str]:
    problems = []
    if w.turns < 1:
        problems.append(f"turns={w.turns!r} (expected an int >= 1; 1 sends single requests)")
    if not 0 <= w.turn_gap_s < math.inf:
        problems.append(f"turn_gap_s={w.turn_gap_s!r} (expected a finite number of seconds >= 0)")
    elif w.turn_gap_s > 0 and w.turns == 1:
        problems.append(f"turn_gap_s={w.turn_gap_s!r} set with turns=1 (it is the think time between turns)")
    if w.turns > 1 and w.trace is not None:
        problems.append(f"turns={w.turns!r} set with trace (a trace gives every request itself)")
    return problems


def _trace_problems(w: Workload) -> list[str]:
    problems = []
    if not 0 < w.trace_speedup < math.inf:
        problems.append(f"trace_speedup={w.trace_speedup!r} (expected a finite number > 0)")
    if w.trace_block_size < 1:
        problems.append(f"trace_block_size={w.trace_block_size!r} (expected an int >= 1)")
    if w.trace is None:
        given = [n for n, default in (("trace_speedup", 1.0), ("trace_block_size", 512)) if getattr(w, n) != default]
        if given:
            problems.append(f"{' and '.join(given)} set without trace (they apply to trace replay)")
        return problems
    # The trace gives every request's lengths, prefix blocks and arrival time: these would go unused.
    unused = {
        "dataset": w.dataset != "random",
        "prefix_len": w.prefix_len > 0,
        "range_ratio": w.range_ratio > 0,
        "request_rate": math.isfinite(w.request_rate),
        "dataset_output_len": w.dataset_output_len is not None,
        "dataset_context_len": w.dataset_context_len is not None,
    }
    for name, is_set in unused.items():
        if is_set:
            problems.append(
                f"{name}={getattr(w, name)!r} set with trace (the trace gives every request's lengths, shared "
                "prefix blocks and arrival time; trace_speedup scales the arrivals)"
            )
    return problems


def _dataset_length_problems(w: Workload) -> list[str]:
    problems = []
    given = [name for name in ("dataset_output_len", "dataset_context_len") if getattr(w, name) is not None]
    if given and w.dataset == "random" and w.trace is None:
        problems.append(
            f"{' and '.join(given)} set with dataset='random' (they apply to dataset files; "
            "random prompts take input_len and output_len)"
        )
    # sglang.bench_serving refuses --sharegpt-output-len below 4 ("output_len too small").
    low = 4 if w.compat == "sglang" else 1
    if w.dataset_output_len is not None and w.dataset_output_len < low:
        problems.append(f"dataset_output_len={w.dataset_output_len!r} (expected an int >= {low} or None)")
    if w.dataset_context_len is not None and w.dataset_context_len < 2:
        problems.append(f"dataset_context_len={w.dataset_context_len!r} (expected an int >= 2 or None)")
    return problems


@dataclass(frozen=True, kw_only=True, slots=True)
class Endpoint:
    """An OpenAI-compatible server the load generator talks to.

    ``api_key`` is excluded from ``repr`` and from :meth:`public_dict` so that it never reaches a log or a
    report file.
    """

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    engine: str = "unknown"
    engine_version: str | None = None
    gpu_count: int | None = None
    # USD per GPU-hour (--llmperf-gpu-cost-per-hour, or the profile's): prices the tokens when the GPUs are known.
    gpu_cost_per_hour: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    # False for servers that drop a kept-alive connection after each stream (llama.cpp does, while
    # advertising keep-alive): the load generator then opens a connection per request instead of failing.
    reuse_connections: bool = True
    pid: int | None = None
    log_path: str | None = None

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def __repr__(self) -> str:  # as the dataclass's, but its URL could show credentials in an assertion message
        return "Endpoint(" + ", ".join(f"{k}={v!r}" for k, v in self.public_dict().items()) + ")"

    def public_dict(self) -> dict[str, Any]:
        """Everything fit for logs and reports: no API key, no credentials in the URL."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.pop("api_key")
        data["url"] = redact_url(self.url)
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class Prompt:
    """One request's input: token ids (exact length) or text, and the output length to ask for."""

    prompt: str | list[int]
    input_len: int
    output_len: int
    # Seconds after the run's start at which it is due (trace replay); None: the workload's schedule.
    arrival_s: float | None = None
    # Multi-turn: the conversation this request belongs to (None: a request of its own) and its user turn
    # (1-based). A conversation's turns are consecutive prompts and must be sent in order by one client, each
    # after the previous one's reply: whoever splits a run keeps a conversation together.
    conversation: int | None = None
    turn: int = 1
    # Chat only: the earlier turns' texts, user and assistant alternating, sent before ``prompt`` (the new user
    # message). Completions carry the whole conversation in ``prompt`` instead.
    history: tuple[str, ...] = ()


def _packed(typecode: str, values: Iterable[Any]) -> array[Any]:
    """``values`` as an array of ``typecode``; an array of that type is kept as it is."""
    if type(values) is array and values.typecode == typecode:
        return values
    return array(typecode, values)


@dataclass(slots=True)
class RequestRecord:
    """What the client observed for one request. Times are ``time.perf_counter()`` seconds.

    The load generator fills it as the stream arrives; nothing here is derived, so the metrics module can
    apply either compatibility mode to the same record.
    """

    index: int
    arrival_s: float
    input_len: int
    output_len: int
    start_s: float = 0.0
    status: int | None = None
    # Per output event, packed (8 + 4 + 1 bytes rather than ~60 as lists of Python objects: an hour's soak
    # holds hundreds of millions). Lists passed in are packed by __post_init__; as_dict() gives lists back.
    event_times_s: array[float] = field(default_factory=lambda: array("d"))
    # Cumulative completion tokens sent with each output event (continuous usage stats); empty if none.
    event_cum_tokens: array[int] = field(default_factory=lambda: array("i"))
    # Whether each event carried non-empty text (sglang mode starts TTFT at the first non-empty text): 0 or 1.
    event_has_text: bytearray = field(default_factory=bytearray)
    last_line_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    response_id: str | None = None
    # Attempts that never reached the server (e.g. a keep-alive connection the server had closed).
    connection_retries: int = 0
    output_chars: int = 0
    error: str = ""
    error_kind: str = ""
    # Multi-turn: the prompt's conversation (None: a request of its own) and user turn (1-based).
    conversation: int | None = None
    turn: int = 1

    def __post_init__(self) -> None:
        self.event_times_s = _packed("d", self.event_times_s)
        self.event_cum_tokens = _packed("i", self.event_cum_tokens)
        if type(self.event_has_text) is not bytearray:  # bytearray([True, False]) == b"\x01\x00"
            self.event_has_text = bytearray(self.event_has_text)

    @property
    def ok(self) -> bool:
        return not self.error and self.status == 200 and bool(self.event_times_s)

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready builtins: the event sequences as lists (of floats, ints and bools)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["event_times_s"] = self.event_times_s.tolist()
        data["event_cum_tokens"] = self.event_cum_tokens.tolist()
        data["event_has_text"] = [bool(b) for b in self.event_has_text]
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientCheck:
    """The load generator's view of its own health during a run."""

    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    client_cpu_s: float
    wall_s: float
    dispatch_lag_p99_ms: float
    client_bound: bool
    reasons: tuple[str, ...] = ()
    busy_poll: bool = False  # the loop polled instead of sleeping: its CPU fraction is ~1 by design
    # Streamed bytes that waited unread in the kernel's socket buffers (None: not sampled): the mean wait of a
    # byte before the client read and stamped it (see selfcheck.Unread), the p99 over the samples of the unread
    # bytes of all open connections, and the most connections open at a sample.
    unread_wait_mean_ms: float | None = None
    unread_p99_kib: float | None = None
    unread_sockets: int | None = None
    # A client split over several processes or Ray actors: how many, and each one's own check (the figures
    # above are then the worst shard's, CPU summed).
    processes: int = 1
    per_process: tuple[ClientCheck, ...] = ()

    @property
    def client_cpu_fraction(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["reasons"] = list(self.reasons)
        data["client_cpu_fraction"] = self.client_cpu_fraction
        return data


@dataclass(slots=True)
class RunRecords:
    """Everything one load episode produced, before any statistics."""

    workload: Workload
    records: list[RequestRecord]
    bench_start_s: float
    bench_end_s: float
    warmup_records: list[RequestRecord] = field(default_factory=list)
    client: ClientCheck | None = None
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.bench_end_s - self.bench_start_s


@dataclass(frozen=True, kw_only=True, slots=True)
class Launch:
    """A server command supplied by a conftest (``pytest_llmperf_launch`` hook), e.g. through ``srun``.

    ``url`` is where the server will answer when it is not this machine's ``127.0.0.1:<port>``.
    """

    argv: tuple[str, ...]
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # no URL credentials, and env names only: values may be tokens
        url = None if self.url is None else redact_url(self.url)
        return f"Launch(argv={self.argv!r}, url={url!r}, env=<{', '.join(sorted(self.env))}>)"
