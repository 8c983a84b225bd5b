"""The shapes of what a run produces: the run summary, the per-test result document, and the dict forms of
verdicts and SLO checks, as types; plus the words a verdict's status is spelled with.

Types only, so this module is cheap to import: the plugin's hook modules, the reports and the pure core can all
name them. They are ``TypedDict``s rather than classes because at run time a summary must stay a plain ``dict``
of builtins: that is what crosses pytest-xdist's execnet channel (it rejects other types by exact type), what
the JSON report holds key for key, and what users read as ``result.summary``.

Most are ``total=False``: which keys a summary has depends on the compatibility mode and the options (an absent
key means "does not apply", see :mod:`pytest_llmperf.judge.metrics`), and documents are read back from JSON,
where readers already fall back on defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias, TypedDict

from pytest_llmperf.status import (
    FAILED as FAILED,
)
from pytest_llmperf.status import (
    IMPROVEMENT as IMPROVEMENT,
)
from pytest_llmperf.status import (
    INCONCLUSIVE as INCONCLUSIVE,
)
from pytest_llmperf.status import (
    INTERRUPTED as INTERRUPTED,
)
from pytest_llmperf.status import (
    NO_BASELINE as NO_BASELINE,
)
from pytest_llmperf.status import (
    NOT_COMPARABLE as NOT_COMPARABLE,
)
from pytest_llmperf.status import (
    PASS as PASS,
)
from pytest_llmperf.status import (
    REGRESSION as REGRESSION,
)
from pytest_llmperf.status import (
    SLO_BREACH as SLO_BREACH,
)
from pytest_llmperf.status import (
    SLO_MISSED as SLO_MISSED,
)
from pytest_llmperf.status import (
    OverallStatus as OverallStatus,
)
from pytest_llmperf.status import (
    Reference as Reference,
)

# The status words live in pytest_llmperf.status (loaded when pytest starts); re-exported for the documents.
from pytest_llmperf.status import (
    Status as Status,
)

__all__ = [
    "IMPROVEMENT",
    "INCONCLUSIVE",
    "NOT_COMPARABLE",
    "NO_BASELINE",
    "PASS",
    "REGRESSION",
    "ABDocument",
    "BaselineRun",
    "BaselineUpdate",
    "BaselineViewDict",
    "CapacitySearchDict",
    "DatasetLensDict",
    "DisturbanceDict",
    "EndpointDict",
    "FingerprintDict",
    "JSONValue",
    "LatencyStats",
    "MetricVerdictDict",
    "OverallStatus",
    "ProbeDict",
    "PromptCacheFields",
    "Reference",
    "RequestDetail",
    "RunDocument",
    "RunFigures",
    "RunSummary",
    "ServerMetrics",
    "SessionDocument",
    "SloDict",
    "SloResultDict",
    "Status",
    "TurnFigures",
    "Validity",
    "VerdictDict",
    "WorkloadDict",
]

# --- JSON ----------------------------------------------------------------------------------------------------

# What json.loads and yaml.safe_load give and json.dumps takes: for files and payloads whose shape is checked
# where they are read. In-process values have the TypedDicts below instead.
JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

# A run's figures as verdicts, SLO checks and baselines read them: a RunSummary or a BaselineRun, looked up by
# keys computed at run time (``metrics.stat_key``), so any mapping of figures will do.
RunFigures: TypeAlias = Mapping[str, object]

# --- the run summary -----------------------------------------------------------------------------------------


class LatencyStats(TypedDict, total=False):
    """Latency statistics in ms, ``<stat>_<metric>_ms``; ``None`` when no request measured the metric.

    The ``p<P>`` keys follow the percentiles a summary was asked for (``metrics.summarize(percentiles=...)``);
    the plugin always asks for the default 50, 90, 95 and 99, which are the ones named here. Other percentiles
    (``p99.9_ttft_ms``) are in the dict all the same, read with a computed key (``metrics.stat_key``).
    ``e2el`` is vLLM's name, ``e2e_latency`` SGLang's; ``itl_token`` is per token, ``client_queue`` the wait
    in the load generator before a request was sent.
    """

    mean_ttft_ms: float | None
    median_ttft_ms: float | None
    std_ttft_ms: float | None
    p50_ttft_ms: float | None
    p90_ttft_ms: float | None
    p95_ttft_ms: float | None
    p99_ttft_ms: float | None
    mean_tpot_ms: float | None
    median_tpot_ms: float | None
    std_tpot_ms: float | None
    p50_tpot_ms: float | None
    p90_tpot_ms: float | None
    p95_tpot_ms: float | None
    p99_tpot_ms: float | None
    mean_itl_ms: float | None
    median_itl_ms: float | None
    std_itl_ms: float | None
    p50_itl_ms: float | None
    p90_itl_ms: float | None
    p95_itl_ms: float | None
    p99_itl_ms: float | None
    max_itl_ms: float | None  # sglang mode only
    mean_e2el_ms: float | None
    median_e2el_ms: float | None
    std_e2el_ms: float | None
    p50_e2el_ms: float | None
    p90_e2el_ms: float | None
    p95_e2el_ms: float | None
    p99_e2el_ms: float | None
    mean_e2e_latency_ms: float | None
    median_e2e_latency_ms: float | None
    std_e2e_latency_ms: float | None
    p50_e2e_latency_ms: float | None
    p90_e2e_latency_ms: float | None
    p95_e2e_latency_ms: float | None
    p99_e2e_latency_ms: float | None
    mean_itl_token_ms: float | None
    median_itl_token_ms: float | None
    std_itl_token_ms: float | None
    p50_itl_token_ms: float | None
    p90_itl_token_ms: float | None
    p95_itl_token_ms: float | None
    p99_itl_token_ms: float | None
    mean_client_queue_ms: float | None
    median_client_queue_ms: float | None
    std_client_queue_ms: float | None
    p50_client_queue_ms: float | None
    p90_client_queue_ms: float | None
    p95_client_queue_ms: float | None
    p99_client_queue_ms: float | None


class Validity(TypedDict, total=False):
    """Did the server do what was asked? ``None`` counts: not checked (ignore_eos off)."""

    input_len_checked: int
    input_len_mismatch: int
    output_len_checked: int | None
    output_len_mismatch: int | None
    output_len_short: int | None
    output_len_long: int | None
    finish_reasons: dict[str, int]
    warnings: list[str]


class DisturbanceDict(TypedDict, total=False):
    """``servers.disturbance.Disturbance.as_dict()``: what else used the server's resources during a run."""

    window_s: float
    server_cpus: list[int] | None
    foreign_cpu_s: float | None
    foreign_cpu_fraction: float | None
    steal_fraction: float | None
    load_avg_1m: float | None
    gpu_foreign_processes: list[str] | None
    gpu_throttle_reasons: list[str] | None
    foreign_requests: float | None
    disturbed: bool
    reasons: list[str]


class ServerMetrics(TypedDict, total=False):
    """``servers.engine_metrics.deltas()``: the server's Prometheus counters that moved, and derived figures."""

    counters: dict[str, float]
    derived: dict[str, float]


class PromptCacheFields(TypedDict, total=False):
    """``judge.prefixcache.summary_fields()``: a run's prompt tokens served from the prefix cache."""

    cached_prompt_tokens: int | None
    cached_prompt_fraction: float | None
    cached_prompt_source: str


class DatasetLensDict(TypedDict):
    """``harness.runner.dataset_lens``: what a dataset file's prompts asked for, on average (the workload's
    ``input_len``/``output_len`` do not apply to files)."""

    input_len_mean: float
    output_len_mean: float


class TurnFigures(TypedDict):
    """``judge.turns.by_turn``: one user turn of a multi-turn run, over its successful requests."""

    requests: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    input_len_mean: float
    cached_fraction: float | None  # None unless every request of the turn reported its cached tokens


class ClientShardDict(TypedDict):
    """One client process's (or Ray actor's) own self-check in a scaled-out run."""

    client_bound: bool
    cpu_fraction: float
    loop_lag_p99_ms: float
    unread_wait_mean_ms: float | None


class RunSummary(LatencyStats, total=False):
    """One run's summary: ``metrics.summarize()`` with vLLM's keys (``vllm bench serve --save-result``), or
    SGLang's in sglang mode, then what the harness adds to it (below the marked line)."""

    compat_mode: Literal["vllm", "sglang"]
    percentile_method: str
    ttft_event: str
    e2e_end: str
    output_tokens_rule: str
    input_tokens_rule: str
    itl_unit: str
    duration: float
    completed: int
    failed: int
    error_rate: float | None
    errors: dict[str, int]  # failed requests by kind
    error_examples: dict[str, str]  # the first message of each kind
    warmup_requests: int
    connection_retries: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float | None
    input_throughput: float | None  # SGLang's key, in both modes
    output_throughput: float | None
    total_token_throughput: float | None  # vllm mode
    total_throughput: float | None  # sglang mode
    concurrency: float | None  # sglang mode (Little's law)
    goodput_slos_ms: dict[str, float]
    good_requests: int
    request_goodput: float | None
    slo_attainment: float | None  # sglang mode, with goodput SLOs
    max_output_tokens_per_s: float | None
    max_concurrent_requests: int | None
    gpu_count: int
    input_throughput_per_gpu: float | None
    output_throughput_per_gpu: float | None
    total_token_throughput_per_gpu: float | None
    total_throughput_per_gpu: float | None
    # with the GPU count and --llmperf-gpu-cost-per-hour (absent when either is unknown)
    gpu_cost_per_hour: float
    cost_per_million_output_tokens: float | None
    cost_per_million_total_tokens: float | None
    output_tokens_per_dollar: float | None
    total_tokens_per_dollar: float | None
    per_token_itl_source: str
    interactivity: float | None
    mean_tokens_per_chunk: float | None
    output_tokens_source: dict[str, int]
    validity: Validity
    client_bound: bool
    client_loop_lag_p50_ms: float
    client_loop_lag_p99_ms: float
    client_loop_lag_max_ms: float
    client_dispatch_lag_p99_ms: float
    client_unread_wait_mean_ms: float | None
    client_unread_p99_kib: float | None
    client_cpu_s: float
    client_cpu_fraction: float
    client_reasons: list[str]
    client_busy_poll: bool
    client_processes: int
    client_per_process: list[ClientShardDict]  # with more than one client process or Ray actor
    interrupted: bool
    notes: list[str]
    # multi-turn runs only (judge.turns): conversations sent, TTFT by user turn, first turns vs later ones
    conversations: int
    ttft_by_turn: dict[str, TurnFigures]
    mean_ttft_turn1_ms: float | None
    median_ttft_turn1_ms: float | None
    p99_ttft_turn1_ms: float | None
    mean_ttft_later_turns_ms: float | None
    median_ttft_later_turns_ms: float | None
    p99_ttft_later_turns_ms: float | None
    # --- added by the harness (harness.runner and harness.fixtures) ---
    started_at_unix: float
    ended_at_unix: float
    invalid_reasons: list[str]  # why the run does not describe the test's work; empty for a valid run
    prompt_contents: str | None
    prefix_sharing: bool
    dataset_lens: DatasetLensDict  # dataset files: the mean lengths the prompts asked for
    cached_prompt_tokens: int | None
    cached_prompt_fraction: float | None
    cached_prompt_source: str
    disturbance: DisturbanceDict
    server_metrics: ServerMetrics
    # servers.engine_metrics.add_spec_decode: vLLM's names, from the server's counters (absent when nothing drafted)
    spec_decode_draft_tokens: int
    spec_decode_accepted_tokens: int
    spec_decode_acceptance_rate: float  # percent
    spec_decode_num_drafts: int
    spec_decode_acceptance_length: float
    spec_decode_per_position_acceptance_rates: list[float]  # fractions (0-1), by draft position
    date: str  # as vllm bench serve --save-result writes them: the end of the run (local time, %Y%m%d-%H%M%S),
    model_id: str  # the model asked for,
    max_concurrency: int | None  # the concurrency limit (None: unbounded)
    measurement_lock_wait_s: float
    session_id: str
    ab_idle_wait_s: float | None  # A/B mode: the wait for the other server to go idle, and the pause after it
    ab_pause_s: float | None


class BaselineRun(LatencyStats, total=False):
    """A run as a baseline file keeps it (``judge.baseline.reduce_summary``): run-level figures rounded to 6
    significant digits (non-finite ones as ``None``), ``n`` requests, and where the run came from."""

    run_id: str
    recorded_at: str
    session: str
    compat_mode: str
    n: int
    completed: int | None
    failed: int | None
    error_rate: float | None
    duration: float | None
    cached_prompt_tokens: int | None
    cached_prompt_fraction: float | None
    request_throughput: float | None
    output_throughput: float | None
    total_token_throughput: float | None
    total_throughput: float | None
    input_throughput: float | None
    input_throughput_per_gpu: float | None
    output_throughput_per_gpu: float | None
    total_token_throughput_per_gpu: float | None
    total_throughput_per_gpu: float | None
    interactivity: float | None
    request_goodput: float | None
    good_requests: int | None
    gpu_count: int | None
    total_input_tokens: int | None
    total_output_tokens: int | None
    mean_tokens_per_chunk: float | None
    concurrency: float | None
    max_output_tokens_per_s: float | None
    max_concurrent_requests: int | None


class RequestDetail(TypedDict):
    """``metrics.detailed()``: per-request arrays in dispatch order, as ``vllm bench serve --save-detailed``
    writes them (seconds); ``output_tokens_source`` and ``finish_reasons`` are ours."""

    input_lens: list[int]
    output_lens: list[int]
    ttfts: list[float]
    itls: list[list[float]]
    latencies: list[float]
    start_times: list[float]
    queue_times: list[float]  # vLLM's --save-result key: seconds each request waited for a concurrency slot
    errors: list[str]
    output_tokens_source: list[str]
    finish_reasons: list[str | None]


# --- verdicts and SLOs as dicts (the xdist and file boundary) -------------------------------------------------


class MetricVerdictDict(TypedDict, total=False):
    """``judge.verdict.MetricVerdict.as_dict()``: its fields, one key each (see the dataclass for meanings)."""

    name: str
    label: str
    key: str
    status: Status
    gating: bool
    direction: str
    scale: str
    tolerance: float
    limit: float
    runs_candidate: int
    runs_baseline: int
    reason: str
    baseline_value: float | None
    candidate_value: float | None
    estimate: float | None
    lower: float | None
    upper: float | None
    p_value: float | None
    p_adjusted: float | None
    p_better: float | None
    p_better_adjusted: float | None
    method: str
    more_runs: int | None
    futile: bool
    hint: str
    effect: float | None
    effect_lower: float | None
    effect_upper: float | None
    bound: float
    min_effect: float
    sigma: float | None
    sessions_baseline: int | None
    sigma_session: float | None
    session_prior: bool
    session_source: str | None
    sessions_history: int | None
    requests_candidate: int | None
    requests_baseline: int | None
    reference: Reference
    guard: str


class VerdictDict(TypedDict, total=False):
    """``judge.verdict.Verdict.as_dict()``; ``Verdict.from_dict`` rebuilds the object."""

    status: OverallStatus
    reason: str
    metrics: list[MetricVerdictDict]
    runs_candidate: int
    runs_baseline: int
    alpha: float
    family_size: int
    looks: int
    hard_diffs: list[str]
    soft_diffs: list[str]
    hint: str
    reference: Reference


class SloDict(TypedDict):
    """``judge.slo.Slo.as_dict()``."""

    name: str
    limit: float
    kind: Literal["max", "min"]
    unit: str
    implicit: bool


class SloResultDict(TypedDict, total=False):
    """``judge.slo.SloResult.as_dict()``: one SLO checked against one run."""

    name: str
    limit: float
    kind: Literal["max", "min"]
    unit: str
    key: str
    measured: float | None
    margin: float | None
    passed: bool
    reason: str
    implicit: bool


# --- the result document -------------------------------------------------------------------------------------


class WorkloadDict(TypedDict, total=False):
    """``spec.Workload.as_dict()``. In a JSON file an infinite ``request_rate`` reads ``"inf"`` (strict JSON
    has no infinity)."""

    api: str
    dataset: str
    input_len: int
    output_len: int
    range_ratio: float
    range_rule: str | None
    prefix_len: int
    prefix_reuse: bool
    num_prompts: int | None
    duration_s: float | None
    concurrency: int | None
    request_rate: float
    burstiness: float
    warmup: int
    seed: int
    ignore_eos: bool
    temperature: float | None
    per_token_usage: bool
    request_timeout_s: float
    compat: str
    dataset_output_len: int | None
    dataset_context_len: int | None
    trace: str | None
    trace_speedup: float
    trace_block_size: int
    turns: int
    turn_gap_s: float


class EndpointDict(TypedDict, total=False):
    """``spec.Endpoint.public_dict()``: the server, without its API key or URL credentials."""

    url: str
    model: str
    engine: str
    engine_version: str | None
    gpu_count: int | None
    gpu_cost_per_hour: float | None
    extra_body: dict[str, object]
    reuse_connections: bool
    pid: int | None
    log_path: str | None


class FingerprintDict(TypedDict, total=False):
    """``judge.baseline.Fingerprint.as_dict()``: what a baseline was recorded on."""

    hardware: str
    precision: str
    model: str
    workload_hash: str
    engine: str | None
    engine_version: str | None
    server_command_hash: str | None
    plugin_version: str | None
    git_commit: str | None
    date: str | None


class BaselineViewDict(TypedDict, total=False):
    """The baseline a test was judged against: where it is, its runs, its per-request arrays pooled per field.
    In A/B mode, server A's runs stand in for it (``where`` then names A)."""

    where: str
    runs: list[BaselineRun]
    raw: dict[str, list[float]]


class BaselineUpdate(TypedDict, total=False):
    """The runs a ``--llmperf-update`` session records for one test, written by the controller at the end."""

    module_path: str
    test_name: str
    fingerprint: FingerprintDict
    runs: list[BaselineRun]
    raw: list[dict[str, list[float]]]  # per run: the RequestDetail arrays a baseline's sidecar keeps
    workload: WorkloadDict
    differs: str | None  # the verdict's "REGRESSION: ..." when the new runs differ (a new epoch starts)


class ABDocument(TypedDict, total=False):
    """A/B mode's part of a result: both servers, the block order, and each side's runs."""

    a: EndpointDict
    b: EndpointDict
    order: str
    blocks: list[str]  # "AB" or "BA" per block
    runs_a: list[RunSummary]
    runs_b: list[RunSummary]
    fingerprint_a: FingerprintDict  # what A's runs were measured on (the document's fingerprint is B's)
    detail_a: RequestDetail | dict[str, list[object]]  # empty when A never ran


class ProbeDict(TypedDict):
    """``judge.capacity_search.Probe.as_dict()``: one concurrency or rate of a capacity search."""

    at: float
    values: list[float | None]  # each run's value of the SLO's statistic (None: not measured)
    runs: int
    decision: Literal["meets", "breaches", "undecided"]
    centre: float | None  # geometric mean of the values
    lower: float | None  # one-sided bounds at the search's confidence
    upper: float | None
    reason: str
    num_prompts: int | None  # requests per run at this probe (None: bounded by time or a trace); absent before it


class CapacitySearchDict(TypedDict):
    """``judge.capacity_search.CapacitySearch.as_dict()``: a result's ``capacity_search``."""

    slo: str
    key: str
    limit: float
    kind: Literal["max", "min"]
    unit: str
    vary: Literal["concurrency", "request_rate"]
    low: float
    high: float
    confidence: float
    probes: list[ProbeDict]
    capacity: float
    bracket: list[float] | None
    status: Literal["met", "lower_bound", "none", "undecided"]
    resolved: bool
    gpu_count: int | None
    users_per_gpu: float | None
    capacity_min: float | None
    gate_passed: bool | None
    statement: str
    prompts_per_user: float | None  # the probes' request-count rule (judge.capacity_search.probe_prompts)


class RunDocument(TypedDict, total=False):
    """One ``llmperf.run()`` call's result, as the harness builds it, hands it to the
    ``pytest_llmperf_result`` hook and JUnit, and the session writes it into the JSON report.

    ``summary`` is the last run's; ``runs`` every run's (B's in A/B mode). ``nodeid`` and ``outcome`` are
    added by the session when it collects the document from the test's report.
    """

    nodeid: str
    outcome: str
    workload: WorkloadDict
    summary: RunSummary
    endpoint: EndpointDict
    fingerprint: FingerprintDict  # what the runs were measured on (B's in A/B mode): the history's columns
    baseline_key: str
    runs: list[RunSummary]
    verdict: VerdictDict
    slos: list[SloResultDict]
    slo_breached: bool
    slo_gating: bool
    scale: float
    notes: list[str]
    detail: RequestDetail
    baseline: BaselineViewDict
    ab: ABDocument
    update: BaselineUpdate
    update_refused: list[str]
    interruption: str  # a run cut short by Ctrl-C or SIGTERM: why
    server_exited: str  # the server died during the test: how
    capacity_search: CapacitySearchDict  # llmperf.capacity(): the probes and the capacity found


class SessionDocument(TypedDict, total=False):
    """The whole session, as ``--llmperf-json`` writes it."""

    pair: str  # "<hardware>-<precision>"
    endpoint: EndpointDict | None
    results: list[RunDocument]
    compare: EndpointDict  # A/B mode: server B (``endpoint`` is A)
