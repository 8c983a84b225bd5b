"""The run-state object of one pytest session, kept in ``config.stash`` and registered as a plugin.

Workers attach each perf test's results to its report as builtins (``report.llmperf``); the controller
collects them from ``pytest_runtest_logreport``, so the same code path works with and without xdist. An
interrupted run gets no report: a worker leaves it in the run directory, where the controller collects it at the
end. The controller alone writes the output files and stops a server shared by workers; it handles SIGTERM as
Ctrl-C, as does every process while it owns a spawned server. At its start it stops the servers that sessions
killed with SIGKILL left running (:mod:`pytest_llmperf.servers.registry`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from pytest_llmperf._files import write_text_atomic
from pytest_llmperf.errors import ServerError
from pytest_llmperf.options import Settings
from pytest_llmperf.spec import is_url

if TYPE_CHECKING:
    import httpx

    from pytest_llmperf.harness.judging import BaselineView
    from pytest_llmperf.judge.baseline import BaselineStore, Fingerprint
    from pytest_llmperf.servers.profiles import Profile
    from pytest_llmperf.servers.provision import ServerWatch, Spawned
    from pytest_llmperf.spec import Endpoint, Launch, Workload

RESULTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
RUN_DIR_KEY = "llmperf_run_dir"
CONTROLLER_PID_KEY = "llmperf_controller_pid"  # the owner on record of a server the workers share
PARTIAL_DIR = "partial"  # in the run directory: interrupted runs of xdist workers, for the controller
SESSION_ID_KEY = "llmperf_session_id"
DEFAULT_PROFILE = "llamacpp-tiny"

# The embedded engine is a tiny model on one CPU core: published GPU workloads shrink 20× to run in minutes.
EMBEDDED_SCALE = 0.05
# A CPU engine's sessions sit 7-22 % apart (log median TPOT, measured by benchmarks/validate_sessions_llamacpp.py),
# so a 5 % tolerance can never be decided on it. With the session model no tolerance raised a false REGRESSION in
# 180 A/A verdicts; 30 % decided 81 % of them (PASS), 20 % only 60 %, 50 % 94 %: 30 % still flags a change of a
# third and mostly decides.
EMBEDDED_TOLERANCE = 0.3
# Measured on the embedded engine: a session's log TPOT sat 5–16 % from the next session's (3–11 % between the
# runs of one session). A CPU engine on a shared machine drifts far more between server starts than a GPU server.
EMBEDDED_SESSION_SPREAD = 0.10

# A/B mode waits at most this long for a server to report itself idle before the other one runs.
IDLE_TIMEOUT_S = 60.0

NO_SERVER = (
    "no inference server for perf tests, and the embedded default (llama.cpp) is not installed. Either "
    "install it: pip install 'pytest-llmperf[llamacpp]' (compiles llama.cpp once, ~13 min on 2 cores); or "
    "attach to a running server: --llmperf-endpoint=URL; or spawn one from a profile: "
    "--llmperf-server=PROFILE (e.g. sim, the built-in simulator)"
)


class LLMPerfSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.results: list[dict[str, Any]] = []
        self.endpoint_info: dict[str, Any] | None = None
        # Prompt calibration per (endpoint, api, dataset): one /tokenize round per session, not per test.
        self.prompt_contexts: dict[tuple[str, str, str, str], Any] = {}
        self.shared_server = False
        self._spawned: Spawned | None = None
        self._affinity: contextlib.ExitStack | None = None
        self._sigterm: contextlib.ExitStack | None = None
        self._run_dir: Path | None = None
        self._hardware_id: str | None = None
        self._control: httpx.Client | None = None
        self.family_size: int | None = None
        self.update_lines: list[str] = []
        self.holm_lines: list[str] = []
        self._git_commit: str | bool | None = False
        self._spawned_profile: str | None = None
        # A/B mode (--llmperf-compare): the second server, B.
        self.compare_info: dict[str, Any] | None = None
        self._compare_spawned: Spawned | None = None
        self._pinned: set[int] = set()  # cores of spawned servers (A's, and B's in A/B mode): the client stays off
        self._last_measured: str | None = None  # URL of this process's last A/B run, for the pause rule
        # New per session (and per xdist worker): with the test and the run index it keys each run's prompt
        # contents, so a long-lived server has never seen them (recorded in every summary as prompt_contents).
        self.prompt_nonce = secrets.token_hex(6)
        self._session_id: str | None = None
        # What the disturbance monitor watches per server URL: (pid, cores, GPU indices); see server_watch.
        self._watch: dict[str, tuple[int | None, list[int] | None, list[int] | None]] = {}
        self._cores_by_url: dict[str, list[int]] = {}
        self._devices_by_url: dict[str, str] = {}
        self._server_watches: dict[str, ServerWatch] = {}  # spawned servers by URL: has one died?
        self.written: list[str] = []  # "JSON results PATH" lines for the terminal summary, as JUnit's xml file

    # -- process roles and the run directory shared with xdist workers ---------------------------------

    @property
    def worker_id(self) -> str | None:
        workerinput = getattr(self.config, "workerinput", None)
        return str(workerinput["workerid"]) if workerinput else None

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @property
    def run_dir(self) -> Path:
        """A directory shared by the controller and its workers (locks, the shared server's state)."""
        if self._run_dir is None:
            workerinput = getattr(self.config, "workerinput", None)
            if workerinput and RUN_DIR_KEY in workerinput:
                self._run_dir = Path(workerinput[RUN_DIR_KEY])
            else:
                self._run_dir = Path(tempfile.mkdtemp(prefix="pytest-llmperf-"))
        return self._run_dir

    @property
    def session_id(self) -> str:
        """This pytest session's id (the controller's, shared by its xdist workers): the level of the verdict's
        variance model, stored with every baseline run. A worker with a server of its own (GPU sets) is a
        session of its own: its server started apart from the others."""
        if self._session_id is None:
            workerinput = getattr(self.config, "workerinput", None)
            base = str(workerinput[SESSION_ID_KEY]) if workerinput and SESSION_ID_KEY in workerinput else None
            self._session_id = base or time.strftime("%Y%m%dT%H%M%S-") + secrets.token_hex(3)
        if self.is_worker and self._spawned is not None:
            return f"{self._session_id}-{self.worker_id}"
        return self._session_id

    @property
    def hardware_id(self) -> str:
        if self._hardware_id is None:
            from pytest_llmperf.servers.hardware import detect

            self._hardware_id = self.settings.hardware or detect(self._server_cores()).id
        return self._hardware_id

    def _server_cores(self) -> int | None:
        """The cores a CPU engine gets: its profile's pinned cores, or the affinity of a server attached on a
        loopback address; None when unknown (then every core this process may use counts)."""
        from pytest_llmperf.errors import LLMPerfError

        endpoint = self.settings.endpoint
        if endpoint is not None:
            port = urlsplit(endpoint).port if _is_loopback(endpoint) else None
            if port is None:
                return None
            from pytest_llmperf.servers.disturbance import find_listening_pid

            pid = find_listening_pid(port)
            with contextlib.suppress(OSError):
                return len(os.sched_getaffinity(pid)) if pid is not None else None
            return None
        try:
            profile = self.profile()
        except LLMPerfError:
            return None
        pinned = profile.pinned_cpus() if profile is not None else None
        return len(pinned) if pinned else None

    @property
    def scale(self) -> float:
        """The ``--llmperf-scale`` factor; ``auto`` is :data:`EMBEDDED_SCALE` on the embedded engine, else 1."""
        if self.settings.scale is not None:
            return self.settings.scale
        spawned = self._spawned_profile
        return EMBEDDED_SCALE if spawned == DEFAULT_PROFILE else 1.0

    @property
    def tolerance(self) -> float | None:
        """The global tolerance: ``--llmperf-tolerance``, else :data:`EMBEDDED_TOLERANCE` on the embedded engine."""
        if self.settings.tolerance is not None:
            return self.settings.tolerance
        if self.settings.compare is not None:
            return None  # A and B share this machine and this hour: the per-metric defaults apply
        return EMBEDDED_TOLERANCE if self._spawned_profile == DEFAULT_PROFILE else None

    @property
    def session_spread(self) -> float:
        """The between-session SD the verdict assumes below 3 baseline sessions: ``--llmperf-session-spread``,
        else :data:`EMBEDDED_SESSION_SPREAD` on the embedded engine, else the GPU-server prior (3 %)."""
        from pytest_llmperf.judge.stats import SESSION_SD_PRIOR

        if self.settings.session_spread is not None:
            return self.settings.session_spread
        return EMBEDDED_SESSION_SPREAD if self._spawned_profile == DEFAULT_PROFILE else SESSION_SD_PRIOR

    @property
    def pair(self) -> str:
        return f"{self.hardware_id}-{self.settings.precision or 'default'}"

    # -- the server under test -------------------------------------------------------------------------

    def profile(self) -> Profile | None:
        from pytest_llmperf.servers import profiles

        if self.settings.server is not None:
            return profiles.get_profile(self.settings.server, self._user_profiles())
        if profiles.llamacpp_available():
            return profiles.get_profile(DEFAULT_PROFILE, self._user_profiles())
        return None

    def _user_profiles(self) -> Any:
        from pytest_llmperf.servers import profiles

        return profiles.load_profiles(self.settings.profiles_path) if self.settings.profiles_path else None

    def compare_profile(self) -> Profile | None:
        """B's profile in A/B mode, or None when ``--llmperf-compare`` is a URL (or not given)."""
        from pytest_llmperf.servers import profiles

        target = self.settings.compare
        if target is None or is_url(target):
            return None
        return profiles.get_profile(target, self._user_profiles())

    def check_compare_target(self) -> None:
        """A/B mode: an unknown B profile is a usage error at start-up, before A is started or load is spent."""
        from pytest_llmperf.errors import LLMPerfError

        try:
            self.compare_profile()
        except LLMPerfError as exc:
            raise pytest.UsageError(f"--llmperf-compare={self.settings.compare}: {exc}") from None

    def _devices(self, profile: Profile, *, role: str) -> str | None:
        """CUDA_VISIBLE_DEVICES of a spawned server. In A/B mode, when both profiles name GPUs per server,
        each worker's slice holds A's GPUs then B's, so the two never share a device."""
        from pytest_llmperf.servers import provision

        if not profile.gpus_per_server:
            return None
        from pytest_llmperf.servers.hardware import detect

        gpus_visible = detect().gpu_count
        other = self.compare_profile() if role == "A" else self.profile()
        paired = self.settings.compare is not None and other is not None and other.gpus_per_server > 0
        if not paired:
            return provision.worker_devices(profile, self.worker_id, gpus_visible)
        assert other is not None
        stride = profile.gpus_per_server + other.gpus_per_server
        offset = 0 if role == "A" else other.gpus_per_server
        return provision.worker_devices(profile, self.worker_id, gpus_visible, offset=offset, stride=stride)

    def _launch(self, profile: Profile, port: int, argv: list[str]) -> Launch | None:
        result: Launch | None = self.config.hook.pytest_llmperf_launch(
            config=self.config, profile=profile, port=port, argv=argv
        )
        return result

    def open_server(self) -> Endpoint:
        """Attach or spawn the server under test (raises ``pytest.skip`` when there is none to use)."""
        from pytest_llmperf.servers import provision
        from pytest_llmperf.servers.profiles import default_cache_dir

        s = self.settings
        choice = provision.ServerChoice(
            model=s.model, api_key=s.api_key, ready_timeout_s=s.ready_timeout_s, gpu_count=s.gpus
        )
        if s.endpoint is not None:
            endpoint = provision.attach(s.endpoint, choice)
            # Workers share an attached server as they share a spawned one: their measurements take turns.
            self.shared_server = self.is_worker
        else:
            profile = self.profile()
            if profile is None:
                pytest.skip(NO_SERVER)
            self._spawned_profile = profile.name
            devices = self._devices(profile, role="A")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_path = default_cache_dir() / "logs" / f"{profile.name}-{stamp}-{os.getpid()}.log"

            started: list[Spawned] = []  # the server, if this process is the one that starts it

            def start() -> Spawned:
                started.append(
                    provision.spawn(profile, choice, log_path=log_path, cuda_devices=devices, launcher=self._launch)
                )
                return started[-1]

            self._handle_sigterm()  # from before the start: a SIGTERM while the server starts stops it too
            if self.is_worker and not profile.gpus_per_server:
                self.shared_server = True
                endpoint = provision.shared(self.run_dir, start, s.api_key, controller_pid=self._controller_pid)
                pinned = provision.shared_pinned_cpus(self.run_dir)
            else:
                self._spawned = start()
                endpoint, pinned = self._spawned.endpoint, self._spawned.pinned_cpus
            self._pinned |= set(pinned or ())
            self._remember_resources(endpoint, pinned, devices)
            self._watch_server(profile.name, endpoint, started, provision.STATE_FILE)
            self._own_cores()
        self.endpoint_info = endpoint.public_dict()
        return endpoint

    def open_compare_server(self) -> Endpoint | None:
        """A/B mode: attach to or spawn B (None without ``--llmperf-compare``). Called once A is ready, so two
        servers without disjoint GPU sets are started one after the other, never at once."""
        from pytest_llmperf.servers import provision
        from pytest_llmperf.servers.profiles import default_cache_dir

        s = self.settings
        if s.compare is None:
            return None
        choice = provision.ServerChoice(
            model=s.model, api_key=s.compare_api_key, ready_timeout_s=s.ready_timeout_s, gpu_count=s.gpus
        )
        profile = self.compare_profile()
        if profile is None:
            endpoint = provision.attach(s.compare, choice)
            self.shared_server = self.shared_server or self.is_worker
        else:
            devices = self._devices(profile, role="B")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_path = default_cache_dir() / "logs" / f"{profile.name}-B-{stamp}-{os.getpid()}.log"

            started: list[Spawned] = []

            def start() -> Spawned:
                started.append(
                    provision.spawn(profile, choice, log_path=log_path, cuda_devices=devices, launcher=self._launch)
                )
                return started[-1]

            # B's profile picks its cores from every core this process may use, exactly as A's did: with the
            # client's restriction (off A's cores) still in place, "auto" would find one core and not pin B.
            self._handle_sigterm()
            self._release_cores()
            try:
                if self.is_worker and not profile.gpus_per_server:
                    self.shared_server = True
                    state = provision.COMPARE_STATE_FILE
                    endpoint = provision.shared(
                        self.run_dir, start, s.api_key, state_file=state, controller_pid=self._controller_pid
                    )
                    pinned = provision.shared_pinned_cpus(self.run_dir, state_file=state)
                else:
                    self._compare_spawned = start()
                    endpoint, pinned = self._compare_spawned.endpoint, self._compare_spawned.pinned_cpus
                self._pinned |= set(pinned or ())
                self._remember_resources(endpoint, pinned, devices)
                self._watch_server(profile.name, endpoint, started, provision.COMPARE_STATE_FILE)
            finally:
                self._own_cores()
        self.compare_info = endpoint.public_dict()
        if self.endpoint_info is not None and endpoint.model != self.endpoint_info.get("model"):
            raise ServerError(
                f"A serves model {self.endpoint_info.get('model')!r} and B serves {endpoint.model!r}: an A/B "
                "comparison sends both the same prompts and needs one model; if both serve it under one name, "
                "pass --llmperf-model=NAME"
            )
        return endpoint

    def _remember_resources(self, endpoint: Endpoint, cores: list[int] | None, devices: str | None) -> None:
        if cores:
            self._cores_by_url[endpoint.url] = list(cores)
        if devices is not None:
            self._devices_by_url[endpoint.url] = devices

    @property
    def _controller_pid(self) -> int | None:
        workerinput = getattr(self.config, "workerinput", None)
        return int(workerinput[CONTROLLER_PID_KEY]) if workerinput and CONTROLLER_PID_KEY in workerinput else None

    def _watch_server(self, name: str, endpoint: Endpoint, started: list[Spawned], state_file: str) -> None:
        """Keep watch on a spawned server so that a dead one is named (see :meth:`server_exited`)."""
        from pytest_llmperf.servers import provision

        if endpoint.pid is None or endpoint.log_path is None:
            return
        exited_file = self.run_dir / Path(state_file).with_suffix(".exited").name if self.shared_server else None
        self._server_watches[endpoint.url] = provision.ServerWatch(
            name=name,
            pid=endpoint.pid,
            log_path=Path(endpoint.log_path),
            process=started[-1].process if started else None,
            exited_file=exited_file,
        )

    def server_exited(self, endpoint: Endpoint, when: str) -> str | None:
        """Why ``endpoint``'s spawned server is gone ("the spawned server sim exited with code -9 during test X;
        log tail ..."), or None while it runs (or is not ours to watch). The first answer sticks."""
        watch = self._server_watches.get(endpoint.url)
        return watch.check(when) if watch is not None else None

    def keep_partial(self, document: dict[str, Any]) -> None:
        """An interrupted run's entry. Its test gets no call report, so it goes into the results here; an xdist
        worker leaves it in the run directory, where the controller collects it at the end (an interrupted
        worker's messages to the controller are not reliable, a file is)."""
        if not self.is_worker:
            self.results.append(document)
            return
        if not self.run_dir.is_dir():
            return  # the controller has finished (and would not read it): making the directory anew would leave it
        (self.run_dir / PARTIAL_DIR).mkdir(exist_ok=True)
        name = f"{self.worker_id}-{time.time_ns()}.json"
        write_text_atomic(self.run_dir / PARTIAL_DIR / name, json.dumps(document, default=str))

    def server_watch(self, endpoint: Endpoint) -> tuple[int | None, list[int] | None, list[int] | None]:
        """What the disturbance monitor can watch of ``endpoint``'s server: its pid (spawned, or found listening
        on a loopback port), its cores (pinned, else its affinity) and its GPU indices (None: every GPU). A
        remote server gives (None, None, None): only its /metrics can show foreign load."""
        if endpoint.url not in self._watch:
            from pytest_llmperf.servers import disturbance

            pid = endpoint.pid
            if pid is None and _is_loopback(endpoint.url):
                port = urlsplit(endpoint.url).port
                pid = disturbance.find_listening_pid(port) if port else None
            cores = self._cores_by_url.get(endpoint.url)
            if cores is None and pid is not None:
                with contextlib.suppress(OSError):
                    cores = sorted(os.sched_getaffinity(pid))
            devices = self._devices_by_url.get(endpoint.url)
            gpus = [int(d) for d in devices.split(",") if d.strip().isdigit()] if devices else None
            self._watch[endpoint.url] = (pid, cores, gpus)
        return self._watch[endpoint.url]

    def _own_cores(self) -> None:
        """Keep the load generator off every spawned server's cores (A's, and B's in A/B mode)."""
        from pytest_llmperf.servers import provision

        self._release_cores()
        self._affinity = contextlib.ExitStack()
        self._affinity.enter_context(provision.client_off_cpus(sorted(self._pinned) or None))

    def _release_cores(self) -> None:
        if self._affinity is not None:
            self._affinity.close()
            self._affinity = None

    def _handle_sigterm(self) -> None:
        """While this process owns a spawned server, SIGTERM acts like Ctrl-C so that teardown stops it."""
        if self._sigterm is None:
            self._sigterm = contextlib.ExitStack()
            self._sigterm.enter_context(_sigterm_as_interrupt())

    def close_compare_server(self) -> None:
        if self._compare_spawned is not None:
            self._compare_spawned.process.stop()
            self._compare_spawned = None

    def settle(self, endpoint: Endpoint, other: Endpoint) -> dict[str, float | None]:
        """A/B pause rule, inside the measurement slot just before a run on ``endpoint``: wait until ``other``
        reports no running or queued request (where its /metrics says so, at most a minute); then, when the
        previous run may have been on ``other`` (it was, or another xdist worker may have measured since),
        ``--llmperf-compare-pause`` seconds more for what no gauge shows (KV-cache frees, background work).
        Returns the waits for the run's summary: they are reported, never inside a latency."""
        from pytest_llmperf.servers import engine_metrics

        idle_wait = engine_metrics.wait_idle(other, timeout_s=IDLE_TIMEOUT_S)
        if self.shared_server:  # another xdist worker may have measured the other server since our last run
            switched = True
        else:
            switched = self._last_measured is not None and self._last_measured != endpoint.url
        pause = self.settings.compare_pause_s if switched else 0.0
        time.sleep(pause)
        self._last_measured = endpoint.url
        return {"ab_idle_wait_s": idle_wait, "ab_pause_s": pause}

    def prompt_context(self, workload: Any, endpoint: Endpoint) -> Any:
        """How to build exact-length prompts for ``workload`` (calibrated once per endpoint, api and dataset)."""
        from pytest_llmperf.client import tokenizer

        key = (endpoint.url, workload.api, workload.dataset, self.settings.tokenizer or "")
        if key not in self.prompt_contexts:
            if self._control is None:
                self._control = tokenizer.control_client(endpoint)
            self.prompt_contexts[key] = tokenizer.prompt_context(
                workload, endpoint, self._control, tokenizer_path=self.settings.tokenizer
            )
        return self.prompt_contexts[key]

    def close_server(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        self._release_cores()
        if self._spawned is not None:
            self._spawned.process.stop()
            self._spawned = None
        self.release_sigterm()  # last: a SIGTERM while stopping still tears down

    @contextlib.contextmanager
    def measurement_slot(self) -> Iterator[dict[str, float]]:
        """Serialize measurements on a server shared by xdist workers; yields {"wait_s": ...} for the report."""
        waited = {"wait_s": 0.0}
        if not self.shared_server:
            yield waited
            return
        from filelock import FileLock

        started = time.perf_counter()
        with FileLock(str(self.run_dir / "measure.lock")):
            waited["wait_s"] = time.perf_counter() - started
            yield waited

    # -- baselines -------------------------------------------------------------------------------------

    @property
    def precision(self) -> str:
        return self.settings.precision or "default"

    @property
    def store(self) -> BaselineStore:
        from pytest_llmperf.judge.baseline import BaselineStore

        return BaselineStore(self.settings.baselines, force_hint="--llmperf-update=force")

    @property
    def git_commit(self) -> str | None:
        if self._git_commit is False:
            import subprocess

            try:
                done = subprocess.run(
                    ["git", "rev-parse", "HEAD"], cwd=self.config.rootpath, capture_output=True, text=True, timeout=10
                )
                self._git_commit = done.stdout.strip() if done.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                self._git_commit = None
        return self._git_commit if isinstance(self._git_commit, str) else None

    def fingerprint(self, workload: Workload, endpoint: Endpoint) -> Fingerprint:
        import datetime

        from pytest_llmperf import __version__
        from pytest_llmperf.judge.baseline import Fingerprint, command_hash, workload_hash

        argv = self._spawned.process.argv if self._spawned is not None else None
        port = urlsplit(self._spawned.endpoint.url).port if self._spawned is not None else None
        return Fingerprint(
            hardware=self.hardware_id,
            precision=self.precision,
            model=endpoint.model,
            workload_hash=workload_hash(workload.as_dict()),
            engine=endpoint.engine,
            engine_version=endpoint.engine_version,
            server_command_hash=command_hash(argv, port) if argv else None,
            plugin_version=__version__,
            git_commit=self.git_commit,
            date=datetime.date.today().isoformat(),
        )

    def baseline_view(self, module_path: str, test_name: str, workload: Workload, endpoint: Endpoint) -> BaselineView:
        """This test's baseline entry as the verdict needs it; raises BaselineError for an unreadable file."""
        from pytest_llmperf.harness.judging import BaselineView
        from pytest_llmperf.judge.baseline import compare_fingerprint

        entry = self.store.load_entry(self.hardware_id, self.precision, module_path, test_name)
        if entry is None:
            where = f"{self.store.path_for(self.hardware_id, self.precision, module_path)}::{test_name}"
            return BaselineView(where=self.relative(where))
        _, hard, soft = compare_fingerprint(entry, self.fingerprint(workload, endpoint), workload.as_dict())
        pooled: dict[str, list[float]] = {}
        for arrays in self.store.load_raw(entry).values():
            for name, values in arrays.items():
                pooled.setdefault(name, []).extend(values)
        return BaselineView(
            runs=entry.runs, where=self.relative(entry.where), hard_diffs=hard, soft_diffs=soft, raw=pooled
        )

    def relative(self, text: str) -> str:
        """``text`` with paths under the rootdir shown relative to it, as users and reports know them."""
        return text.replace(f"{self.config.rootpath}{os.sep}", "")

    def _apply_updates(self) -> bool:
        """Write the baseline runs the tests recorded (controller, once). False if any write failed."""
        from pytest_llmperf.errors import BaselineError
        from pytest_llmperf.judge.baseline import Fingerprint

        ok = True
        for result in self.results:
            refused = result.get("update_refused") or ()
            update = result.get("update")
            for why in refused:
                self.update_lines.append(self.relative(f"NOT RECORDED {result['nodeid']} {why}"))
            if refused and not update:
                ok = False  # nothing of this test could be recorded: the update it asked for did not happen
            if not update:
                continue
            try:
                change = self.store.update(
                    self.hardware_id,
                    self.precision,
                    update["module_path"],
                    update["test_name"],
                    fingerprint=Fingerprint.from_dict(update["fingerprint"]),
                    runs=update["runs"],
                    raw=update["raw"],
                    workload=update["workload"],
                    force=self.settings.update == "force",
                    differs=update.get("differs"),
                )
                self.update_lines.append(self.relative(change))
            except (BaselineError, ValueError) as exc:
                ok = False
                self.update_lines.append(self.relative(f"NOT WRITTEN: {exc}"))
            except OSError as exc:  # e.g. a read-only directory: say so, and let the reports still be written
                ok = False
                self.update_lines.append(self.relative(self._unwritten(update, exc)))
        return ok

    def _unwritten(self, update: dict[str, Any], exc: OSError) -> str:
        path = exc.filename or self.store.path_for(self.hardware_id, self.precision, update["module_path"])
        return (
            f"NOT WRITTEN: {path}: {exc.strerror or exc}; the runs of {update['test_name']} were not recorded. "
            f"Make {self.settings.baselines} writable (or choose another directory with --llmperf-baselines=DIR) "
            "and rerun with --llmperf-update"
        )

    def _session_holm(self) -> bool:
        """Holm over every gating claim of the session; True if it found regressions the tests did not."""
        from pytest_llmperf.judge.verdict import REGRESSION, Verdict, apply_holm

        judged = [(r, Verdict.from_dict(r["verdict"])) for r in self.results if r.get("verdict")]
        adjusted = apply_holm([v for _, v in judged])
        found = False
        for (result, before), after in zip(judged, adjusted, strict=True):
            if after.status == REGRESSION and before.status != REGRESSION:
                found = True
                result["verdict"] = after.as_dict()
                self.holm_lines.append(
                    f"{result['nodeid']}: REGRESSION once all {after.family_size} gating claims of the session "
                    "are adjusted together (Holm)"
                )
        return found

    # -- hooks -----------------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        self._stop_leftovers()
        if self.config.pluginmanager.has_plugin("dsession") and self._may_spawn():
            # The xdist controller stops the workers' shared server: a SIGTERM must reach that teardown too.
            self._handle_sigterm()

    def _may_spawn(self) -> bool:
        return self.settings.endpoint is None or self.compare_profile() is not None

    def _stop_leftovers(self) -> None:
        """Stop the servers of earlier sessions killed with SIGKILL (their owner is gone), before any is spawned."""
        from pytest_llmperf.servers import registry

        terminal = self.config.pluginmanager.getplugin("terminalreporter")
        for finding in registry.sweep(registry.default_dir()):
            if terminal is not None:
                terminal.write_line(finding.message, yellow=finding.warning)

    def close_run_dir(self, session: pytest.Session) -> None:
        """Controller, once the workers are down: collect the interrupted runs they left, stop the shared servers
        and remove the run directory (again: nothing left to do). An interrupt meanwhile waits: cut short, this
        would leave a server running."""
        from pytest_llmperf.client.interrupts import deferred
        from pytest_llmperf.servers import provision

        if self._run_dir is None:
            return
        with deferred(reraise=False) as interrupts:
            try:
                self.results.extend(_load_partials(self._run_dir / PARTIAL_DIR))
                provision.stop_shared(self._run_dir)
                provision.stop_shared(self._run_dir, state_file=provision.COMPARE_STATE_FILE)
            finally:
                shutil.rmtree(self._run_dir, ignore_errors=True)
        if interrupts:
            session.exitstatus = pytest.ExitCode.INTERRUPTED

    def release_sigterm(self) -> None:
        """SIGTERM back to its default (the controller's mapping lasts until pytest unconfigures)."""
        if self._sigterm is not None:
            self._sigterm.close()
            self._sigterm = None

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from pytest_llmperf.judge.verdict import DEFAULT_GATING

        perf_tests = sum(1 for item in items if "llmperf" in getattr(item, "fixturenames", ()))
        self.family_size = max(1, perf_tests) * len(DEFAULT_GATING)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        if call.when == "call" and RESULTS_KEY in item.stash:
            report.llmperf = item.stash[RESULTS_KEY]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        results = getattr(report, "llmperf", None)
        if report.when == "call" and results:
            for result in results:
                self.results.append({"nodeid": report.nodeid, "outcome": report.outcome, **result})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        if self.results:
            self._results_summary(terminalreporter)
        for what in self.written:
            terminalreporter.write_sep("-", f"llmperf {what}")

    def _results_summary(self, tr: Any) -> None:
        from pytest_llmperf.report import terminal

        tr.write_sep("=", "llmperf results")
        lines = terminal.render(
            self.results,
            pair=self.pair,
            endpoint=self.endpoint_info,
            verbose=self.config.get_verbosity(),
            recording=self.settings.update is not None,
        )
        for text, markup in lines:
            tr.write_line(text, **markup)
        for line in self.holm_lines:
            tr.write_line(line, red=True)
        if self.update_lines:
            tr.write_sep("-", f"llmperf baselines updated ({self.pair})")
            for line in self.update_lines:
                tr.write_line(line, red=line.startswith("NOT "))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        self.close_run_dir(session)
        failed = False
        if self.settings.update is not None:
            failed |= not self._apply_updates()
        elif any(r.get("verdict") for r in self.results):
            failed |= self._session_holm()
        if failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not self.results and self.settings.json_path is None and self.settings.report_path is None:
            return  # not a perf session: detect no hardware, write nothing
        document: dict[str, Any] = {"pair": self.pair, "endpoint": self.endpoint_info, "results": self.results}
        if self.compare_info is not None:
            document["compare"] = self.compare_info  # A/B mode: B (``endpoint`` is A)
        if self.settings.json_path is not None:
            write_json_atomic(self.settings.json_path, document)
            self.written.append(f"JSON results written to {self.settings.json_path.absolute()}")
        if self.settings.report_path is not None:
            from pytest_llmperf.report.html import write_html

            write_html(self.settings.report_path, jsonable(document))
            self.written.append(f"HTML report written to {self.settings.report_path.absolute()}")
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary and self.results:
            from pytest_llmperf.report.markdown import step_summary as render_step_summary

            with open(step_summary, "a", encoding="utf-8") as handle:
                handle.write(render_step_summary(self.results, pair=self.pair, endpoint=self.endpoint_info))


def _load_partials(directory: Path) -> list[dict[str, Any]]:
    """The interrupted runs xdist workers left (:meth:`LLMPerfSession.keep_partial`), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads(path.read_text()))
    return found


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While this process owns a spawned server, SIGTERM (a CI runner cancelling the job) acts like Ctrl-C, so
    pytest tears down and stops the server instead of dying and leaving it running."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    # Python's own Ctrl-C handler, so that a run in progress treats SIGTERM exactly like Ctrl-C
    # (pytest_llmperf.client.interrupts recognises it by identity).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def write_json_atomic(path: Path, document: Any) -> None:
    write_text_atomic(path, json.dumps(jsonable(document), indent=1, allow_nan=False, default=str))


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf"), since strict JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
