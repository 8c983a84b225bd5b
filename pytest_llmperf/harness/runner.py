"""One measurement, end to end: prompts → load episode → run summary, as a :class:`Result`.

An orchestrator: it passes data between the pure modules (datasets, loadgen, metrics) and owns no logic of
its own beyond choosing how many prompts a workload needs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pytest_llmperf.client.datasets import PromptContext, asks_for_sharing, build_prompts, trace_requests
from pytest_llmperf.results import DatasetLensDict, EndpointDict, RunDocument, RunSummary, WorkloadDict
from pytest_llmperf.spec import Endpoint, Prompt, RunRecords, Workload

if TYPE_CHECKING:
    from pytest_llmperf.client.loadgen import Progress  # loadgen imports aiohttp: only when a run starts
    from pytest_llmperf.harness.client_scale import Send
    from pytest_llmperf.judge.slo import SloResult
    from pytest_llmperf.judge.verdict import Verdict

# A duration-bounded closed-loop run cannot know its request count; this many prompts per slot covers long
# runs before prompts repeat (a repeat is noted, since a prefix cache could then serve it).
_PROMPTS_PER_SLOT = 64
_MAX_DURATION_PROMPTS = 100_000


class Result:
    """A run's metrics as attributes (``result.output_throughput``) and as a vLLM-keyed dict.

    ``summary`` holds builtins only, under the keys ``vllm bench serve --save-result`` uses
    (``median_ttft_ms``, ``p99_itl_ms``, ``output_throughput`` ...); ``run`` holds every request's record.
    """

    def __init__(self, *, workload: Workload, summary: RunSummary, run: RunRecords) -> None:
        self.workload = workload
        self.summary = summary
        self.run = run
        # Filled by the llmperf fixture: every run of the test, its verdict and its SLO checks per run.
        self.runs: list[Result] = [self]
        self.ab_runs: list[Result] = []  # A/B mode: A's runs (``runs`` are then B's)
        self.verdict: Verdict | None = None  # an object in the process; documents carry its dict form
        self.slo_results: list[list[SloResult]] = []

    def __getattr__(self, name: str) -> Any:
        summary: Mapping[str, object] = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(
            f"Result has no metric {name!r}; available: {', '.join(sorted(k for k in summary if k.isidentifier()))}"
        )

    def __getitem__(self, key: str) -> Any:
        figures: Mapping[str, object] = self.summary  # any key, as in the dict users know from vLLM
        return figures[key]

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<Result completed={s.get('completed')} failed={s.get('failed')} "
            f"median_ttft_ms={s.get('median_ttft_ms')} median_tpot_ms={s.get('median_tpot_ms')} "
            f"output_throughput={s.get('output_throughput')}>"
        )

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Each failed request: index, kind and message (with a response excerpt where there was one)."""
        return [{"index": r.index, "kind": r.error_kind, "error": r.error} for r in self.run.records if not r.ok]

    def as_dict(self) -> RunDocument:
        return {"workload": workload_dict(self.workload), "summary": self.summary}


def workload_dict(workload: Workload) -> WorkloadDict:
    return cast(WorkloadDict, workload.as_dict())  # the dataclass's fields, which WorkloadDict names


def endpoint_dict(endpoint: Endpoint) -> EndpointDict:
    return cast(EndpointDict, endpoint.public_dict())  # the dataclass's fields but the key, as EndpointDict names


def planned_prompts(workload: Workload) -> int:
    """How many prompts to build for ``workload`` (a trace's: at most this many of its lines)."""
    if workload.num_prompts is not None:
        return workload.num_prompts
    if workload.trace is not None:
        return trace_requests(Path(workload.trace))
    assert workload.duration_s is not None  # guaranteed by Workload validation
    if math.isfinite(workload.request_rate):
        return min(_MAX_DURATION_PROMPTS, math.ceil(workload.duration_s * workload.request_rate) + 1)
    return min(_MAX_DURATION_PROMPTS, _PROMPTS_PER_SLOT * (workload.concurrency or 1))


def measure(
    workload: Workload,
    endpoint: Endpoint,
    context: PromptContext,
    *,
    goodput_slos_ms: Mapping[str, float] | None = None,
    progress: Progress | None = None,
    busy_poll: bool = False,
    contents: str = "",
    send: Send | None = None,
) -> Result:
    """Build the prompts, run the load episode and summarize it.

    ``contents`` keys the prompts' token contents (see :func:`pytest_llmperf.client.datasets.build_prompts`): the
    fixture passes one key per run, so no run resends an earlier run's prompts. Warmup prompts come from their
    own key and seed, so they share no prefix with the measured ones.
    """
    from pytest_llmperf.client import loadgen

    prompts = build_prompts(workload, planned_prompts(workload), context, contents=contents)
    warmup = (
        build_prompts(
            workload.replace(seed=workload.seed + 1_000_003),
            workload.warmup,
            context,
            contents=f"{contents}/warmup" if contents else "",
        )
        if workload.warmup
        else []
    )
    endpoint = with_prompt_cache(endpoint, asks_for_sharing(workload))
    # One process, several, or Ray actors (harness/client_scale.py): one RunRecords on one clock either way.
    records = (send or loadgen.run)(
        workload, endpoint, prompts, warmup_prompts=warmup, progress=progress, busy_poll=busy_poll
    )
    result = summarize(records, endpoint, goodput_slos_ms=goodput_slos_ms)
    result.summary["prompt_contents"] = contents or None
    result.summary["prefix_sharing"] = asks_for_sharing(workload)
    # Lengths of their own: a file's, a trace's, or multi-turn requests' that grow with each turn's history.
    if (workload.dataset != "random" or workload.trace is not None or workload.turns > 1) and prompts:
        result.summary["dataset_lens"] = dataset_lens(prompts)
    return result


def dataset_lens(prompts: Sequence[Prompt]) -> DatasetLensDict:
    """The mean input and output lengths ``prompts`` asked for: what a report shows for a dataset file, whose
    lengths are its own and not the workload's ``input_len``/``output_len``."""
    return {
        "input_len_mean": sum(p.input_len for p in prompts) / len(prompts),
        "output_len_mean": sum(p.output_len for p in prompts) / len(prompts),
    }


def with_prompt_cache(endpoint: Endpoint, sharing: bool) -> Endpoint:
    """``endpoint`` as this workload needs it: llama.cpp gets ``cache_prompt: false`` (its prompt cache is on by
    default) unless the workload shares prefixes on purpose, which is then what is measured."""
    if endpoint.engine != "llama.cpp" and "cache_prompt" not in endpoint.extra_body:
        return endpoint
    wanted = {**endpoint.extra_body, "cache_prompt": sharing}
    if wanted == endpoint.extra_body:
        return endpoint
    return dataclasses.replace(endpoint, extra_body=wanted)


def summarize(records: RunRecords, endpoint: Endpoint, *, goodput_slos_ms: Mapping[str, float] | None = None) -> Result:
    from pytest_llmperf.judge import metrics

    summary = metrics.summarize(
        records,
        gpu_count=endpoint.gpu_count,
        goodput_slos_ms=goodput_slos_ms,
        gpu_cost_per_hour=endpoint.gpu_cost_per_hour,
    )
    # Wall-clock bounds of the measured window, comparable across processes (xdist workers, reports).
    offset = time.time() - time.perf_counter()
    summary["started_at_unix"] = records.bench_start_s + offset
    summary["ended_at_unix"] = records.bench_end_s + offset
    # Keys of vllm bench serve --save-result that users diff against its files.
    summary["date"] = time.strftime("%Y%m%d-%H%M%S", time.localtime(summary["ended_at_unix"]))
    summary["model_id"] = endpoint.model
    summary["max_concurrency"] = records.workload.concurrency
    # Reasons the run does not describe the test's work (filled by the fixture, e.g. an unrequested cache hit).
    summary["invalid_reasons"] = []
    return Result(workload=records.workload, summary=summary, run=records)
