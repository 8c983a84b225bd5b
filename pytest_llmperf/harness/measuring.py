"""The runs of one ``llmperf.run()`` call, each with what surrounds the measurement itself.

A run takes the server's measurement slot (xdist workers sharing a server take turns), lets the other server
settle in A/B mode, scrapes the engine's counters and watches for disturbance around the load, and accounts for
prompt-cache hits. Nothing measured is lost: a run cut short by Ctrl-C (or SIGTERM) goes to the session as a
partial entry, and a run whose server died is published before the test fails with the server's fate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pytest_llmperf.errors import RunInterrupted, ServerExitedError
from pytest_llmperf.harness.server_manager import IDLE_TIMEOUT_S

if TYPE_CHECKING:
    import pytest

    from pytest_llmperf.client.datasets import PromptContext
    from pytest_llmperf.harness.client_scale import ClientScale
    from pytest_llmperf.harness.markers import PerfSpec
    from pytest_llmperf.harness.runner import Result
    from pytest_llmperf.harness.server_manager import ServerManager
    from pytest_llmperf.options import Settings
    from pytest_llmperf.report.progress import LiveProgress
    from pytest_llmperf.results import DisturbanceDict, RunDocument, RunSummary, ServerMetrics
    from pytest_llmperf.servers.disturbance import DisturbanceMonitor
    from pytest_llmperf.spec import Endpoint


class Measurements:
    """``sides``: the servers of the call, ``{"A": ...}``, or ``{"A": ..., "B": ...}`` in A/B mode. ``publish``
    attaches an entry to the test (the entry of a run whose server died); ``keep_partial`` takes the entry of an
    interrupted run, which gets no call report. ``settings`` (busy polling, the environment guard, live progress),
    ``servers`` (measurement turns, settling, the server watches), ``session_id`` (recorded in every summary) and
    ``is_worker`` (an xdist worker shows no live progress) are all it needs of the session; ``clients`` sends
    the load (several processes or Ray actors, see harness/client_scale.py)."""

    def __init__(
        self,
        item: pytest.Item,
        call: int,
        sides: Mapping[str, Endpoint],
        *,
        settings: Settings,
        servers: ServerManager,
        session_id: str,
        is_worker: bool,
        publish: Callable[[RunDocument], None],
        keep_partial: Callable[[RunDocument], None],
        clients: ClientScale | None = None,
    ) -> None:
        self._item = item
        self._call = call  # the index of this llmperf.run() call in its test
        self._settings = settings
        self._servers = servers
        self._watches = servers.watches
        self._session_id = session_id
        self._is_worker = is_worker
        self._keep_partial = keep_partial
        self._sides = sides
        self._publish = publish
        self._clients = clients  # how the load is sent (None: from this process)
        self._counts: dict[str, int] = {}  # runs measured per side: the key of each run's prompt contents
        self._measured: list[tuple[str, RunSummary]] = []  # (label, summary) of each run so far

    def check_server(self, endpoint: Endpoint, when: str) -> None:
        """Fail at once, sending no load, when the spawned server of ``endpoint`` has died (in this test or before)."""
        exited = self._watches.exited(endpoint, f"{when} test {self._item.nodeid}")
        if exited is not None:
            raise ServerExitedError(exited)

    def measure(self, spec: PerfSpec, context: PromptContext, side: str = "A") -> Result:
        """One run on ``side``'s server; in A/B mode the other server is settled first."""
        from pytest_llmperf.harness import runner
        from pytest_llmperf.servers import engine_metrics

        endpoint = self._sides[side]
        paired = len(self._sides) > 1
        label = side if paired else ""
        other = self._sides["B" if side == "A" else "A"] if paired else None
        # New prompt contents every run (A and B of one block share theirs), so no prefix cache serves a repeat.
        number = self._counts.get(label, 0)
        self._counts[label] = number + 1
        contents = f"{self._servers.prompt_nonce}/{self._item.nodeid}#{self._call}/run{number}"
        with self._servers.measurement_slot() as slot:
            self.check_server(endpoint, "before")
            settled = self._servers.settle(endpoint, other) if other is not None else None
            before = engine_metrics.scrape(endpoint)
            progress = self._progress(label)
            monitor = self._disturbance_monitor(endpoint)
            try:
                result = runner.measure(
                    spec.workload,
                    endpoint,
                    context,
                    progress=progress,
                    busy_poll=self._settings.busy_poll,
                    contents=contents,
                    goodput_slos_ms=spec.goodput_slos_ms,
                    send=None if self._clients is None else self._clients.sender(self._watches.resources(endpoint)[1]),
                )
            except RunInterrupted as interrupted:
                # Ctrl-C skips the call report, so hand the partial result to the session directly.
                partial = runner.summarize(interrupted.partial, endpoint, goodput_slos_ms=spec.goodput_slos_ms)
                reason = partial.run.notes[-1] if partial.run.notes else "interrupted"
                document: RunDocument = {
                    **self._partial_document(partial, endpoint, label, reason),
                    "interruption": reason,
                }
                self._keep_partial({"nodeid": self._item.nodeid, "outcome": "interrupted", **document})
                raise
            finally:
                if progress is not None:
                    progress.close()
            # Failed requests may mean the server died: checked inside the slot, so that under xdist the message
            # names this test before another worker's run can find the server gone.
            failed = bool(result.summary.get("failed"))
            exited = self._watches.exited(endpoint, f"during test {self._item.nodeid}") if failed else None
            after = engine_metrics.scrape(endpoint) if before is not None else None
            deltas = engine_metrics.deltas(before, after) if before is not None and after is not None else None
            if monitor is not None:
                result.summary["disturbance"] = _stop_monitor(monitor, result, deltas)
        result.summary["measurement_lock_wait_s"] = slot["wait_s"]
        result.summary["session_id"] = self._session_id
        if settled is not None:
            result.summary["ab_idle_wait_s"], result.summary["ab_pause_s"] = settled
        if settled is not None and (settled[0] or 0.0) >= IDLE_TIMEOUT_S:
            result.summary.setdefault("validity", {}).setdefault("warnings", []).append(
                f"the other A/B server still reported busy requests after {IDLE_TIMEOUT_S:g} s: this run may "
                "overlap its tail"
            )
        if deltas is not None:
            result.summary["server_metrics"] = deltas
            engine_metrics.add_spec_decode(result.summary, deltas)
        _account_prompt_cache(result, deltas)
        if exited is not None:  # keep what was measured, then fail the test with the server's fate
            self._publish({**self._partial_document(result, endpoint, label, exited), "server_exited": exited})
            raise ServerExitedError(exited)
        self._measured.append((label, result.summary))
        return result

    def _partial_document(self, result: Result, endpoint: Endpoint, label: str, reason: str) -> RunDocument:
        """The entry of a run that ended its test early (an interrupt, its server's death): the run as measured,
        with its per-request arrays, every run of this ``llmperf.run()`` call so far, and why it ended."""
        from pytest_llmperf.harness.runner import endpoint_dict
        from pytest_llmperf.judge import metrics

        earlier = [summary for side, summary in self._measured if side == label]
        return {
            **result.as_dict(),
            "endpoint": endpoint_dict(endpoint),
            "runs": [*earlier, result.summary],
            "detail": metrics.detailed(result.run),
            "notes": [reason],
        }

    def _disturbance_monitor(self, endpoint: Endpoint) -> DisturbanceMonitor | None:
        """A started monitor of what else uses the server's resources during the run (None when switched off)."""
        if not self._settings.environment_guard:
            return None
        from pytest_llmperf.servers.disturbance import DisturbanceMonitor

        pid, cores, gpus = self._watches.resources(endpoint)
        monitor = DisturbanceMonitor(server_pid=pid, server_cpus=cores, gpu_indices=gpus)
        monitor.start()
        return monitor

    def _progress(self, label: str) -> LiveProgress | None:
        """Live progress on a terminal (never on xdist workers, whose output goes to the controller)."""
        from pytest_llmperf.report.progress import LiveProgress

        setting = self._settings.progress
        config = self._item.config
        terminal = config.pluginmanager.getplugin("terminalreporter")
        capture = config.pluginmanager.getplugin("capturemanager")
        if setting == "off" or self._is_worker or terminal is None or capture is None:
            return None
        if setting == "auto" and not terminal.isatty:
            return None
        return LiveProgress(terminal, capture, f"{self._item.name} {label}".rstrip())


def _stop_monitor(monitor: DisturbanceMonitor, result: Result, deltas: ServerMetrics | None) -> DisturbanceDict:
    """The run's disturbance figures, with what this run sent so the server's counters can show foreign load."""
    sent = [r for r in (*result.run.warmup_records, *result.run.records) if r.status is not None]
    prompt_tokens = sum(r.prompt_tokens if r.prompt_tokens else r.input_len for r in sent)
    found = monitor.stop(
        counter_deltas=deltas["counters"] if deltas else None, sent_requests=len(sent), sent_prompt_tokens=prompt_tokens
    )
    return found.as_dict()


def _account_prompt_cache(result: Result, deltas: ServerMetrics | None) -> None:
    """Cached prompt tokens of the run into its summary; an unrequested cache hit makes the run invalid."""
    from pytest_llmperf.judge import prefixcache

    use = prefixcache.measure(
        result.run.records, deltas["counters"] if deltas else None, metrics_known=deltas is not None
    )
    fields = prefixcache.summary_fields(use)
    result.summary["cached_prompt_tokens"] = fields["cached_prompt_tokens"]
    result.summary["cached_prompt_fraction"] = fields["cached_prompt_fraction"]
    result.summary["cached_prompt_source"] = fields["cached_prompt_source"]
    reason = prefixcache.invalid_reason(use, sharing_asked=bool(result.summary.get("prefix_sharing")))
    if reason:
        result.summary.setdefault("invalid_reasons", []).append(reason)
