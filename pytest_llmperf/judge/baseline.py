"""The YAML baseline store (README, "Baselines"): reviewed and committed like code.

Layout under the baseline root (``baselines/`` by default)::

    <hardware>-<precision>/<test module path without .py>.yaml      one file per test module
    <hardware>-<precision>/<module dir>/<module>.<entry-hash>.npz   raw per-request arrays of one entry

A YAML file holds ``entries`` keyed by the test name with its parameters (the node id after the module path,
e.g. ``test_sweep[8]`` or ``TestChat::test_long``) and a file-level ``schema_version``. Keys are sorted, so
``schema_version`` is the file's last line: a truncated file always fails to validate. Each entry::

    fingerprint:            hard keys (hardware, precision, model, workload_hash) must match for a verdict;
                            soft keys (engine, engine_version, server_command_hash, plugin_version,
                            git_commit, date) are shown when they differ (date never: it always does)
    raw_sidecar:            file name of the .npz next to the YAML, or null
    runs:                   the current epoch's runs of the newest ``keep_sessions`` (default 5) pytest
                            sessions, at most ``keep`` (default 50), oldest first: run_id, recorded_at,
                            session (the pytest session, i.e. server start, that measured it), n, request
                            counts and the run-level statistics verdicts and reports use (6 significant digits)
    epoch:                  which epoch ``runs`` belong to (1, 2, ...): a new one starts when the engine
                            version, the server command (without its port) or the plugin version changes,
                            or when an update's runs differ from the stored ones by the verdict
    previous_epochs:        up to 3 earlier epochs, oldest first: epoch, ended_at, reason, fingerprint, runs
                            (kept for reviewers and history; never compared with)
    schema_version:         the entry's format version (2; version 1 files, without sessions and epochs, are
                            read as one session of epoch 1 and rewritten as version 2 on the next update)
    workload:               the workload as recorded (for reviewers; the hash is what counts)
    workload_hash:          stable hash of the workload dict

The sidecar is a compressed ``numpy.savez_compressed`` archive with one array per run and per-request field,
named ``<run_id>__<field>`` (float64, or int32 for counts). Only one-dimensional numeric per-request fields
are kept (TTFT, E2E, token counts, ...); per-token arrays such as ITL lists would run to millions of values
per run and are not stored. Arrays of runs no longer listed in the YAML are dropped on the next update.

Reading never writes. A file or entry that cannot be read (bad YAML, wrong types, missing keys, another
``schema_version``) raises :class:`BaselineError` naming the file, the entry and the problem. ``update`` takes
a lock (``filelock``, in the temp directory so that no lock file lands among the baselines), re-reads the
file under it, merges, and writes atomically (temporary file +
``os.replace``), so concurrent updaters of one file lose nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypedDict, cast

import numpy as np
import numpy.typing as npt
import yaml
from filelock import FileLock, Timeout

from pytest_llmperf._files import replacing, write_text_atomic
from pytest_llmperf.errors import BaselineError
from pytest_llmperf.results import BaselineRun, FingerprintDict, JSONValue, RunFigures

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_KEEP_SESSIONS",
    "EPOCH_KEYS",
    "HARD_KEYS",
    "LATER_FIELD_DEFAULTS",
    "SCHEMA_VERSION",
    "SOFT_KEYS",
    "BaselineEntry",
    "BaselineStore",
    "Fingerprint",
    "command_hash",
    "compare_fingerprint",
    "read_entries",
    "reduce_summary",
    "stable_hash",
    "workload_hash",
]

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_KEEP = 50
DEFAULT_KEEP_SESSIONS = 5
MAX_PREVIOUS_EPOCHS = 3
# Soft keys whose change starts a new epoch: another engine build, server command or plugin measures another
# thing, and pooling its runs with the old ones would mix two distributions (TPOT 8.8 and 3.0 ms in one pool).
EPOCH_KEYS: tuple[str, ...] = ("engine_version", "server_command_hash", "plugin_version")
HARD_KEYS: tuple[str, ...] = ("hardware", "precision", "model", "workload_hash")
SOFT_KEYS: tuple[str, ...] = ("engine", "engine_version", "server_command_hash", "plugin_version", "git_commit", "date")
LOCK_TIMEOUT_S = 120.0
_SIGNIFICANT = 6
_HEADER = (
    "# pytest-llmperf baselines: written by `pytest --llmperf-update`; review and commit changes like code.\n"
    "# Format: see the pytest_llmperf.judge.baseline module documentation.\n"
)

# Run-summary keys a baseline keeps: latency statistics plus these scalars (both vLLM and SGLang spellings).
_STAT_KEY = re.compile(r"^(mean|median|std|p\d+(\.\d+)?)_(ttft|tpot|itl|itl_token|e2el|e2e_latency)_ms$")
_RUN_SCALARS = frozenset(
    {
        "completed",
        "cached_prompt_tokens",
        "cached_prompt_fraction",
        "failed",
        "error_rate",
        "duration",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "total_throughput",
        "input_throughput",
        "input_throughput_per_gpu",
        "output_throughput_per_gpu",
        "total_token_throughput_per_gpu",
        "total_throughput_per_gpu",
        "interactivity",
        "request_goodput",
        "good_requests",
        "gpu_count",
        "total_input_tokens",
        "total_output_tokens",
        "mean_tokens_per_chunk",
        "max_itl_ms",
        "concurrency",
        "max_output_tokens_per_s",
        "max_concurrent_requests",
    }
)
_RUN_TEXT = frozenset({"run_id", "recorded_at", "compat_mode", "session"})
_ENTRY_KEYS = frozenset(
    {"epoch", "fingerprint", "previous_epochs", "raw_sidecar", "runs", "schema_version", "workload", "workload_hash"}
)
_EPOCH_KEYS = frozenset({"epoch", "ended_at", "reason", "fingerprint", "runs"})
_PAIR_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+]*$")
_SIDECAR_NAME = re.compile(r"^[A-Za-z0-9_.+-]+\.npz$")


def _plain(obj: object) -> JSONValue:
    """``obj`` as YAML/JSON-safe builtins (tuples become lists, unknown objects their ``str``)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return _plain_mapping(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj)


def _plain_mapping(obj: Mapping[str, object]) -> dict[str, JSONValue]:
    return {str(k): _plain(v) for k, v in obj.items()}


def stable_hash(obj: object, length: int = 16) -> str:
    """Hex SHA-256 of the canonical JSON of ``obj`` (sorted keys); the same on every machine and run."""
    text = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


# Workload fields added after baselines were first recorded, with their defaults: a field at its default is left
# out of the hash, so entries recorded before it existed stay comparable; any other value counts as usual.
LATER_FIELD_DEFAULTS: dict[str, object] = {
    "prefix_reuse": False,
    "range_rule": None,
    "dataset_output_len": None,
    "dataset_context_len": None,
    "trace": None,
    "trace_speedup": 1.0,
    "trace_block_size": 512,
    "turns": 1,
    "turn_gap_s": 0.0,
}


def command_hash(argv: Sequence[str], port: int | None) -> str:
    """Hash of a server command with its port left out: a spawned server gets a free port each session, and a
    port is no change of what is measured."""
    if port is None:
        return stable_hash(list(argv))
    text = str(port)
    return stable_hash([re.sub(rf"(?<![0-9]){text}(?![0-9])", "{port}", arg) for arg in argv])


def workload_hash(workload: Mapping[str, object]) -> str:
    """Stable hash of a workload dict (e.g. ``Workload.as_dict()``): every field counts (later fields only when
    they differ from their default)."""
    kept = {k: v for k, v in workload.items() if k not in LATER_FIELD_DEFAULTS or v != LATER_FIELD_DEFAULTS[k]}
    return stable_hash(kept)


@dataclass(frozen=True, kw_only=True, slots=True)
class Fingerprint:
    """What a baseline was recorded on. Hard keys must match for a relative verdict; soft keys are shown."""

    hardware: str
    precision: str
    model: str
    workload_hash: str
    engine: str | None = None
    engine_version: str | None = None
    server_command_hash: str | None = None
    plugin_version: str | None = None
    git_commit: str | None = None
    date: str | None = None

    def as_dict(self) -> FingerprintDict:
        return {
            "hardware": self.hardware,
            "precision": self.precision,
            "model": self.model,
            "workload_hash": self.workload_hash,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "server_command_hash": self.server_command_hash,
            "plugin_version": self.plugin_version,
            "git_commit": self.git_commit,
            "date": self.date,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Fingerprint:
        """Validated fingerprint; problems raise ``ValueError`` with a short description."""
        unknown = sorted(set(data) - set(HARD_KEYS) - set(SOFT_KEYS))
        if unknown:
            raise ValueError(f"fingerprint has unknown key(s) {unknown}")
        for key in HARD_KEYS:
            value = data.get(key)
            if key not in data:
                raise ValueError(f"fingerprint.{key} is missing")
            if not isinstance(value, str) or not value:
                raise ValueError(f"fingerprint.{key} is {value!r} (expected a non-empty string)")
        for key in SOFT_KEYS:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"fingerprint.{key} is {value!r} (expected a string or null)")
        hard = {key: str(data[key]) for key in HARD_KEYS}

        def soft(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        return cls(
            hardware=hard["hardware"],
            precision=hard["precision"],
            model=hard["model"],
            workload_hash=hard["workload_hash"],
            engine=soft("engine"),
            engine_version=soft("engine_version"),
            server_command_hash=soft("server_command_hash"),
            plugin_version=soft("plugin_version"),
            git_commit=soft("git_commit"),
            date=soft("date"),
        )


class EpochRecord(TypedDict):
    """An earlier epoch of an entry, kept under ``previous_epochs`` for reviewers (never compared with)."""

    epoch: int
    ended_at: str
    reason: str
    fingerprint: FingerprintDict
    runs: list[BaselineRun]


@dataclass(frozen=True, slots=True)
class BaselineEntry:
    """One test's baseline as read from its file. ``runs`` are run summaries, oldest first."""

    path: Path
    test_name: str
    schema_version: int
    workload_hash: str
    fingerprint: Fingerprint
    runs: tuple[BaselineRun, ...]
    workload: dict[str, JSONValue] | None = None
    raw_sidecar: str | None = None
    epoch: int = 1
    previous_epochs: tuple[EpochRecord, ...] = ()

    @property
    def k(self) -> int:
        return len(self.runs)

    @property
    def sessions(self) -> int:
        """Sessions behind ``runs`` (runs of version-1 files, which carry none, count as one)."""
        return len({str(r.get("session") or "") for r in self.runs})

    @property
    def where(self) -> str:
        return f"{self.path}::{self.test_name}"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "test_name": self.test_name,
            "schema_version": self.schema_version,
            "workload_hash": self.workload_hash,
            "fingerprint": self.fingerprint.as_dict(),
            "runs": [dict(r) for r in self.runs],
            "workload": self.workload,
            "raw_sidecar": self.raw_sidecar,
            "epoch": self.epoch,
            "previous_epochs": [dict(e) for e in self.previous_epochs],
        }


def _round(value: float) -> float:
    return float(f"{value:.{_SIGNIFICANT}g}")


def reduce_summary(summary: RunFigures) -> BaselineRun:
    """The part of a run summary a baseline keeps: run-level statistics and counts, floats rounded.

    Adds ``n`` (requests in the run). Non-finite numbers become ``None``.
    """
    # Keys chosen at run time (the latency statistics of whatever percentiles the summary has): built as a
    # plain dict, and BaselineRun names what it holds.
    out: dict[str, int | float | str | None] = {}
    for key, value in summary.items():
        if key == "compat_mode" and isinstance(value, str):
            out[key] = value
            continue
        if key not in _RUN_SCALARS and not _STAT_KEY.match(key):
            continue
        if value is None or isinstance(value, bool):
            out[key] = None
        elif isinstance(value, int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = _round(value) if math.isfinite(value) else None
    session = summary.get("session_id", summary.get("session"))  # a full summary, or an already reduced one
    if isinstance(session, str):
        out["session"] = session
    completed, failed = summary.get("completed"), summary.get("failed")
    n = summary.get("n")
    if isinstance(completed, int) and isinstance(failed, int):
        out["n"] = completed + failed
    elif isinstance(n, int):
        out["n"] = n
    return cast(BaselineRun, out)


def compare_fingerprint(
    entry: BaselineEntry, fingerprint: Fingerprint, workload: Mapping[str, object] | None = None
) -> tuple[bool, list[str], list[str]]:
    """``(comparable, hard_diffs, soft_diffs)`` of a baseline entry against the current fingerprint.

    Each diff is a readable phrase. ``workload`` (the current workload dict) lets a workload-hash difference
    name the fields that changed, when the entry recorded its workload.
    """
    # Looked up by key name: plain mappings.
    old: Mapping[str, object] = entry.fingerprint.as_dict()
    new: Mapping[str, object] = fingerprint.as_dict()
    hard = []
    for key in HARD_KEYS:
        if old[key] != new[key]:
            what = f"{key}: baseline {old[key]!r}, now {new[key]!r}"
            if key == "workload_hash" and workload is not None and entry.workload is not None:
                changed = _changed_fields(entry.workload, _plain_mapping(workload))
                if changed:
                    what = "workload changed (" + ", ".join(changed) + ")"
            hard.append(what)
    soft = [
        f"{key}: baseline {_show(old[key])}, now {_show(new[key])}"
        for key in SOFT_KEYS
        if key != "date" and old[key] != new[key]
    ]
    return not hard, hard, soft


def _show(value: object) -> str:
    return "unknown" if value is None else repr(value)


def _changed_fields(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class _Problem(Exception):
    """A validation problem inside an entry (turned into BaselineError with file and entry names)."""


def hard_key_refusal(where: str, hard_diffs: Sequence[str], runs: int, force_hint: str) -> str:
    """The one message for an update that would mix runs whose hard keys differ: said when the test looks its
    entry up (before any load) and again at the write, should the entry have changed in between."""
    return (
        f"{where}: refusing to update across a hard-key change ({'; '.join(hard_diffs)}); its {runs} run(s) are "
        f"not comparable with new ones: rerun with {force_hint} to replace them"
    )


class BaselineStore:
    """Baselines under ``root``; see the module documentation for the layout.

    ``force_hint`` is how messages tell the user to force an overwrite across a hard-key change.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        keep: int = DEFAULT_KEEP,
        keep_sessions: int = DEFAULT_KEEP_SESSIONS,
        force_hint: str = "--llmperf-update=force",
    ) -> None:
        for name, value in (("keep", keep), ("keep_sessions", keep_sessions)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} (expected an int >= 1)")
        self.root = Path(root)
        self.keep = keep
        self.keep_sessions = keep_sessions
        self.force_hint = force_hint

    compare_fingerprint = staticmethod(compare_fingerprint)

    # --- paths -------------------------------------------------------------------------------------------

    def path_for(self, hardware: str, precision: str, module_path: str | os.PathLike[str]) -> Path:
        """``<root>/<hardware>-<precision>/<module path without .py>.yaml``; rejects paths that escape root."""
        for what, part in (("hardware", hardware), ("precision", precision)):
            if not isinstance(part, str) or not _PAIR_PART.match(part):
                raise BaselineError(
                    f"{what}={part!r} cannot name a baseline directory (use letters, digits, '.', '_', '+'; "
                    "e.g. h200x8 and fp8)"
                )
        rel = PurePosixPath(Path(module_path).as_posix())
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.drive:
            raise BaselineError(f"module path {str(module_path)!r} must be relative to the rootdir, without '..'")
        name = rel.name[:-3] if rel.name.endswith(".py") else rel.name
        return self.root / f"{hardware}-{precision}" / rel.parent / f"{name}.yaml"

    @staticmethod
    def sidecar_name(path: Path, test_name: str) -> str:
        return f"{path.stem}.{stable_hash(test_name, 12)}.npz"

    # --- reading -----------------------------------------------------------------------------------------

    def load_entry(
        self, hardware: str, precision: str, module_path: str | os.PathLike[str], test_name: str
    ) -> BaselineEntry | None:
        """The entry of ``test_name``, or None when its file or entry does not exist. Never writes."""
        path = self.path_for(hardware, precision, module_path)
        doc = _read_doc(path, test_name)
        if doc is None or test_name not in doc["entries"]:
            return None
        return _parse_entry(doc["entries"][test_name], path, test_name)

    def load_raw(self, entry: BaselineEntry) -> dict[str, dict[str, list[float]]]:
        """Per-request arrays of the entry's runs: ``{run_id: {field: values}}`` (empty without a sidecar)."""
        if entry.raw_sidecar is None:
            return {}
        arrays = _read_sidecar(entry.path.parent / entry.raw_sidecar, entry.test_name)
        ids = {str(r["run_id"]) for r in entry.runs}
        out: dict[str, dict[str, list[float]]] = {}
        for name, array in arrays.items():
            run_id, _, fld = name.partition("__")
            if run_id in ids:
                out.setdefault(run_id, {})[fld] = cast("list[float]", array.tolist())  # numpy types it by dimension
        return out

    # --- writing -----------------------------------------------------------------------------------------

    def update(
        self,
        hardware: str,
        precision: str,
        module_path: str | os.PathLike[str],
        test_name: str,
        *,
        fingerprint: Fingerprint,
        runs: Sequence[RunFigures],
        raw: Sequence[Mapping[str, Sequence[object]]] | None = None,
        workload: Mapping[str, object] | None = None,
        force: bool = False,
        recorded_at: str | None = None,
        differs: str | None = None,
    ) -> str:
        """Append ``runs`` (run summaries, oldest first) to the entry's epoch, keep the runs of its newest
        ``keep_sessions`` sessions (at most ``keep`` runs); return what changed.

        A new epoch starts instead, and the old runs move to ``previous_epochs``, when a soft key of
        :data:`EPOCH_KEYS` changed or when ``differs`` (the caller's verdict of the new runs against the stored
        ones, e.g. "REGRESSION: median TPOT 1.30×") says they differ.

        ``raw``: per-run mappings of per-request arrays, aligned with ``runs`` (optional). A hard-key change
        raises :class:`BaselineError` unless ``force``, which then replaces the old runs. An unreadable entry
        is replaced (it could not be used anyway); a file that cannot be parsed as a whole is never
        overwritten, except with ``force`` for a file of another schema version.
        """
        if not runs:
            raise ValueError("update() needs at least one run")
        if raw is not None and len(raw) != len(runs):
            raise ValueError(f"raw has {len(raw)} items for {len(runs)} runs")
        if fingerprint.workload_hash and workload is not None and workload_hash(workload) != fingerprint.workload_hash:
            raise ValueError("fingerprint.workload_hash does not match the workload given")
        path = self.path_for(hardware, precision, module_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = recorded_at or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        lock = FileLock(str(_lock_path(path)), timeout=LOCK_TIMEOUT_S)
        try:
            with lock:
                return self._update_locked(path, test_name, fingerprint, runs, raw, workload, force, stamp, differs)
        except Timeout as exc:
            raise BaselineError(
                f"{path}: entry {test_name!r}: could not lock the file within {LOCK_TIMEOUT_S:.0f} s "
                f"(another update holds {exc.lock_file}); retry when it has finished"
            ) from exc

    def _update_locked(
        self,
        path: Path,
        test_name: str,
        fingerprint: Fingerprint,
        runs: Sequence[RunFigures],
        raw: Sequence[Mapping[str, Sequence[object]]] | None,
        workload: Mapping[str, object] | None,
        force: bool,
        stamp: str,
        differs: str | None = None,
    ) -> str:
        where = f"{path}::{test_name}"
        notes: list[str] = []
        try:
            doc = _read_doc(path, test_name)
        except _SchemaMismatch as exc:
            if not force:
                raise BaselineError(
                    f"{exc} To re-record, pass the force option ({self.force_hint}): the file's entries of the "
                    "other schema are then dropped (they are still in git)"
                ) from None
            doc = None
            notes.append(f"replaced a file of schema version {exc.found!r} (its other entries were dropped)")
        entries: dict[str, object] = dict(doc["entries"]) if doc is not None else {}

        old: BaselineEntry | None = None
        if test_name in entries:
            try:
                old = _parse_entry(entries[test_name], path, test_name)
            except BaselineError as exc:
                notes.append(f"replaced an unreadable entry ({exc.args[0].split(': ', 2)[-1]})")

        kept: list[BaselineRun] = []
        epoch = 1
        previous: list[EpochRecord] = []
        if old is not None:
            comparable, hard, soft = compare_fingerprint(old, fingerprint, workload)
            if not comparable and not force:
                raise BaselineError(hard_key_refusal(f"{path}: entry {test_name!r}", hard, old.k, self.force_hint))
            epoch, previous = old.epoch, [e.copy() for e in old.previous_epochs]
            if comparable:
                why = _epoch_reason(old.fingerprint, fingerprint, differs)
                if why:
                    previous = [*previous, _closed_epoch(old, why, stamp)][-MAX_PREVIOUS_EPOCHS:]
                    notes.append(
                        f"new epoch {epoch + 1} ({why}); epoch {epoch}'s {old.k} run(s) kept under previous_epochs"
                    )
                    epoch += 1
                else:
                    kept = [r.copy() for r in old.runs]
                soft_shown = [d for d in soft if not any(d.startswith(f"{k}:") for k in EPOCH_KEYS)]
                if soft_shown:
                    notes.append("soft keys changed: " + "; ".join(soft_shown))
            else:
                notes.append(f"hard keys changed, {old.k} old run(s) replaced (forced): " + "; ".join(hard))

        new_runs = []
        for summary in runs:
            run = reduce_summary(summary)
            run["run_id"] = uuid.uuid4().hex[:12]
            run["recorded_at"] = stamp
            new_runs.append(run)
        merged = _newest_sessions(kept + new_runs, self.keep_sessions)
        merged = merged[max(0, len(merged) - self.keep) :]
        dropped = len(kept) + len(new_runs) - len(merged)

        sidecar = self._write_sidecar(path, test_name, old, merged, new_runs, raw, notes)
        entry = {
            "schema_version": SCHEMA_VERSION,
            "workload_hash": fingerprint.workload_hash,
            "fingerprint": fingerprint.as_dict(),
            "runs": merged,
            "raw_sidecar": sidecar,
            "epoch": epoch,
            "previous_epochs": previous,
        }
        if workload is not None:
            entry["workload"] = _plain(workload)
        elif old is not None and old.workload is not None and old.workload_hash == fingerprint.workload_hash:
            entry["workload"] = old.workload
        entries[test_name] = entry
        text = _HEADER + yaml.safe_dump(
            {"schema_version": SCHEMA_VERSION, "entries": entries},
            sort_keys=True,
            default_flow_style=False,
            allow_unicode=True,
            width=120,
        )
        write_text_atomic(path, text, durable=True)  # committed files: a crash must not empty one

        if old is None:
            head = f"{where}: new entry with {len(merged)} run(s)"
        else:
            head = f"{where}: appended {len(new_runs)} run(s), {len(merged)} kept"
        sessions = len({str(r.get("session") or "") for r in merged})
        head += f" from {sessions} session(s)"
        if dropped:
            head += (
                f" ({dropped} oldest dropped, keeping the runs of the newest {self.keep_sessions} sessions, "
                f"at most {self.keep})"
            )
        return "; ".join([head, *notes])

    def _write_sidecar(
        self,
        path: Path,
        test_name: str,
        old: BaselineEntry | None,
        merged: Sequence[BaselineRun],
        new_runs: Sequence[BaselineRun],
        raw: Sequence[Mapping[str, Sequence[object]]] | None,
        notes: list[str],
    ) -> str | None:
        """Write the entry's raw arrays for the kept runs; returns the sidecar file name or None."""
        arrays: dict[str, npt.NDArray[np.generic]] = {}
        keep_ids = {str(r["run_id"]) for r in merged}
        if old is not None and old.raw_sidecar is not None:
            try:
                for name, array in _read_sidecar(path.parent / old.raw_sidecar, test_name).items():
                    if name.partition("__")[0] in keep_ids:
                        arrays[name] = array
            except BaselineError as exc:
                notes.append(f"old raw arrays unreadable and dropped ({exc})")
        if raw is not None:
            for run, fields in zip(new_runs, raw, strict=True):
                if run["run_id"] not in keep_ids:
                    continue
                for fld, values in fields.items():
                    converted = _numeric_array(values)
                    if converted is not None:
                        arrays[f"{run['run_id']}__{fld}"] = converted
        name = self.sidecar_name(path, test_name)
        if not arrays:
            # No kept run has raw data any more: a leftover sidecar would only mislead.
            with contextlib.suppress(FileNotFoundError):
                (path.parent / name).unlink()
            return None
        savez: Any = np.savez_compressed  # its stubs type **kwds as flags, not as the arrays they are
        # An open file, not the path: numpy would append ".npz" to the temporary file's name.
        with replacing(path.parent / name, durable=True) as tmp, tmp.open("wb") as handle:
            savez(handle, **arrays)
        return name


def _epoch_reason(old: Fingerprint, new: Fingerprint, differs: str | None) -> str:
    """Why the update's runs start a new epoch ("" when they join the current one)."""
    before: Mapping[str, object] = old.as_dict()
    after: Mapping[str, object] = new.as_dict()
    changed = [f"{k}: {_show(before[k])} -> {_show(after[k])}" for k in EPOCH_KEYS if before[k] != after[k]]
    if differs:
        changed.append(f"the new runs differ from the stored ones ({differs})")
    return "; ".join(changed)


def _closed_epoch(old: BaselineEntry, reason: str, stamp: str) -> EpochRecord:
    return {
        "epoch": old.epoch,
        "ended_at": stamp,
        "reason": reason,
        "fingerprint": old.fingerprint.as_dict(),
        "runs": [r.copy() for r in old.runs],
    }


def _newest_sessions(runs: Sequence[BaselineRun], keep: int) -> list[BaselineRun]:
    """The runs of the newest ``keep`` sessions (by each session's last run), in their order. Runs without a
    session (version-1 files) count as one session."""
    last_seen = {str(r.get("session") or ""): i for i, r in enumerate(runs)}
    newest = set(sorted(last_seen, key=last_seen.__getitem__)[-keep:])
    return [r for r in runs if str(r.get("session") or "") in newest]


def _numeric_array(values: Sequence[object]) -> npt.NDArray[np.int32] | npt.NDArray[np.float64] | None:
    """A 1-D int32/float64 array of per-request numbers (None → NaN), or None for other shapes and types."""
    if isinstance(values, (str, bytes)):
        return None
    items = list(values)
    if any(isinstance(v, bool) or not (v is None or isinstance(v, (int, float))) for v in items):
        return None
    ints = [v for v in items if isinstance(v, int)]
    if items and len(ints) == len(items) and all(-(2**31) <= v < 2**31 for v in ints):
        return np.asarray(ints, dtype=np.int32)
    return np.asarray([math.nan if v is None else v for v in items], dtype=np.float64)


def _lock_path(path: Path) -> Path:
    """Where the lock of ``path`` lives: the temp dir, so no lock file lands in the committed baselines."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    directory = Path(tempfile.gettempdir()) / f"pytest-llmperf-locks-{user}"
    directory.mkdir(exist_ok=True)
    return directory / f"{stable_hash(str(path.resolve()))}.lock"


class _File(TypedDict):
    """A baseline file, checked at the top level only (each entry is checked when it is read)."""

    schema_version: int
    entries: dict[str, object]


class _SchemaMismatch(BaselineError):
    def __init__(self, message: str, found: object) -> None:
        super().__init__(message)
        self.found = found


_RECORD_HINT = "restore it from git, fix it by hand, or delete it and re-record with --llmperf-update"


def _read_doc(path: Path, test_name: str) -> _File | None:
    """The parsed file (validated at file level), or None if it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot read the file while looking for entry {test_name!r}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BaselineError(
            f"{path}: not valid YAML{at} ({problem}) while reading entry {test_name!r}; {_RECORD_HINT}"
        ) from None
    if not isinstance(data, dict):
        raise BaselineError(
            f"{path}: expected a mapping with 'schema_version' and 'entries' at the top, found "
            f"{type(data).__name__} (entry {test_name!r}); {_RECORD_HINT}"
        )
    version = data.get("schema_version")
    if "schema_version" not in data:
        raise BaselineError(
            f"{path}: 'schema_version' is missing (the file may be truncated) while reading entry "
            f"{test_name!r}; {_RECORD_HINT}"
        )
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise _SchemaMismatch(
            f"{path}: schema_version is {version!r} but this pytest-llmperf reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} "
            f"(entry {test_name!r}): migrate the file, or delete it and re-record with --llmperf-update.",
            version,
        )
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise BaselineError(
            f"{path}: 'entries' is {type(entries).__name__}, expected a mapping of test names (while reading "
            f"entry {test_name!r}); {_RECORD_HINT}"
        )
    unknown = sorted(str(k) for k in set(data) - {"schema_version", "entries"})
    if unknown:
        raise BaselineError(f"{path}: unknown top-level key(s) {unknown} (entry {test_name!r}); {_RECORD_HINT}")
    return {"schema_version": version, "entries": entries}


def read_entries(path: Path) -> list[BaselineEntry]:
    """Every entry of one baseline file, in file order (``history import`` reads whole files)."""
    doc = _read_doc(path, "*")
    if doc is None:
        raise BaselineError(f"{path}: no such baseline file")
    return [_parse_entry(raw, path, str(name)) for name, raw in doc["entries"].items()]


def _parse_entry(raw: object, path: Path, test_name: str) -> BaselineEntry:
    try:
        return _validate_entry(raw, path, test_name)
    except _Problem as exc:
        raise BaselineError(
            f"{path}: entry {test_name!r}: {exc}; fix it by hand, restore the file from git, or re-record the "
            "entry with --llmperf-update (which replaces it)"
        ) from None


def _validate_entry(raw: object, path: Path, test_name: str) -> BaselineEntry:
    if not isinstance(raw, dict):
        raise _Problem(f"expected a mapping, found {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - _ENTRY_KEYS)
    if unknown:
        raise _Problem(f"unknown key(s) {unknown}")
    for key in ("schema_version", "workload_hash", "fingerprint", "runs"):
        if key not in raw:
            raise _Problem(f"missing key {key!r}")
    version = raw["schema_version"]
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise _Problem(
            f"schema_version is {version!r} but this pytest-llmperf reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (migrate the entry or re-record it)"
        )
    whash = raw["workload_hash"]
    if not isinstance(whash, str) or not whash:
        raise _Problem(f"workload_hash is {whash!r} (expected a non-empty string)")
    if not isinstance(raw["fingerprint"], dict):
        raise _Problem(f"fingerprint is {type(raw['fingerprint']).__name__} (expected a mapping)")
    try:
        fingerprint = Fingerprint.from_dict(raw["fingerprint"])
    except ValueError as exc:
        raise _Problem(str(exc)) from None
    if fingerprint.workload_hash != whash:
        raise _Problem(f"fingerprint.workload_hash {fingerprint.workload_hash!r} differs from workload_hash {whash!r}")
    workload = raw.get("workload")
    if workload is not None and not isinstance(workload, dict):
        raise _Problem(f"workload is {type(workload).__name__} (expected a mapping or null)")
    sidecar = raw.get("raw_sidecar")
    if sidecar is not None and (not isinstance(sidecar, str) or not _SIDECAR_NAME.match(sidecar)):
        raise _Problem(f"raw_sidecar is {sidecar!r} (expected a file name like module.0123456789ab.npz, or null)")
    runs = raw["runs"]
    if not isinstance(runs, list) or not runs:
        raise _Problem("runs must be a non-empty list of run summaries")
    parsed = tuple(_validate_run(i, run) for i, run in enumerate(runs))
    epoch = raw.get("epoch", 1)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise _Problem(f"epoch is {epoch!r} (expected an int >= 1)")
    previous = raw.get("previous_epochs") or []
    if not isinstance(previous, list):
        raise _Problem(f"previous_epochs is {type(previous).__name__} (expected a list)")
    return BaselineEntry(
        path=path,
        test_name=test_name,
        schema_version=SCHEMA_VERSION,
        workload_hash=whash,
        fingerprint=fingerprint,
        runs=parsed,
        workload=workload,
        raw_sidecar=sidecar,
        epoch=epoch,
        previous_epochs=tuple(_validate_epoch(i, e) for i, e in enumerate(previous)),
    )


def _validate_epoch(i: int, raw: object) -> EpochRecord:
    where = f"previous_epochs[{i}]"
    if not isinstance(raw, dict):
        raise _Problem(f"{where} is {type(raw).__name__} (expected a mapping)")
    unknown = sorted(str(k) for k in set(raw) - _EPOCH_KEYS)
    if unknown:
        raise _Problem(f"{where} has unknown key(s) {unknown}")
    if isinstance(raw.get("epoch"), bool) or not isinstance(raw.get("epoch"), int):
        raise _Problem(f"{where}.epoch is {raw.get('epoch')!r} (expected an int)")
    if not isinstance(raw.get("runs"), list):
        raise _Problem(f"{where}.runs must be a list of run summaries")
    for j, run in enumerate(raw["runs"]):
        _validate_run(j, run)
    return cast(EpochRecord, dict(raw))  # validated above


def _validate_run(i: int, run: object) -> BaselineRun:
    where = f"runs[{i}]"
    if not isinstance(run, dict):
        raise _Problem(f"{where} is {type(run).__name__} (expected a mapping)")
    if not isinstance(run.get("run_id"), str) or not run["run_id"]:
        raise _Problem(f"{where}.run_id is {run.get('run_id')!r} (expected a non-empty string)")
    n = run.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise _Problem(f"{where}.n is {n!r} (expected the number of requests, an int >= 0)")
    for key, value in run.items():
        if not isinstance(key, str):
            raise _Problem(f"{where} has a non-text key {key!r}")
        if key in _RUN_TEXT:
            if value is not None and not isinstance(value, str):
                raise _Problem(f"{where}.{key} is {value!r} (expected text)")
            continue
        if key != "n" and key not in _RUN_SCALARS and not _STAT_KEY.match(key):
            raise _Problem(f"{where} has an unknown key {key!r}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise _Problem(f"{where}.{key} is {value!r} (expected a finite number >= 0 or null)")
    return cast(BaselineRun, dict(run))  # validated above


def _read_sidecar(path: Path, test_name: str) -> dict[str, npt.NDArray[np.generic]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise BaselineError(f"{path}: raw sidecar of entry {test_name!r} is missing") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BaselineError(f"{path}: raw sidecar of entry {test_name!r} is unreadable: {exc}") from None
