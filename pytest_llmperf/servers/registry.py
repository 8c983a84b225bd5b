"""A record of the servers this user's sessions spawned, so that a pytest killed with SIGKILL leaves none running.

A spawned server runs in its own process group on purpose, and SIGKILL cannot be caught: the server of a pytest
killed that way keeps running. So each spawned server has one small JSON file under ``<cache>/servers/`` from
the moment it is started until it is stopped: its pid and process group, its start time, its command, and the
pid of the session that owns it (the xdist controller for a shared server). At its start, the next session
stops the recorded servers whose owner has died, after checking that each process is still the one recorded:
the same start time (a reused pid has another) and the same command. A server whose owner still runs is left
alone: another session is using it.

The server's environment carries a token (:data:`TOKEN_ENV`) as well, so that when the recorded process has
exited and left children behind in its group, only processes bearing the token are stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from pytest_llmperf._files import write_text_atomic

__all__ = [
    "TOKEN_ENV",
    "Finding",
    "default_dir",
    "forget",
    "hand_over",
    "new_token",
    "note_command",
    "record",
    "start_time",
    "sweep",
]

TOKEN_ENV = "PYTEST_LLMPERF_SERVER_TOKEN"
# psutil derives start times from clock ticks since boot: one process reads the same value every time.
_SAME_START_S = 0.1


class _Owner(TypedDict):
    owner_pid: int
    owner_create_time: float | None


class _Record(_Owner, total=False):
    """One server's file, as written. Read back, it is JSON: :func:`sweep` checks what it acts on."""

    pid: int
    pgid: int
    create_time: float
    argv: list[str]
    name: str
    token: str
    log_path: str
    started_at: float
    cmdline: list[str]  # the command once the server is ready (see note_command)


def default_dir() -> Path:
    """``<cache>/servers``: one directory for every session of this user, so that each can find the others'."""
    from pytest_llmperf.servers.profiles import default_cache_dir

    return default_cache_dir() / "servers"


def new_token() -> str:
    return secrets.token_hex(8)


def record(directory: Path, *, pid: int, argv: Sequence[str], name: str, token: str, log_path: Path) -> Path | None:
    """Put a just-started server on record; None when it could not be (it exited already, or no writable cache)."""
    started = start_time(pid)
    if started is None:
        return None
    owner = _owner(os.getpid())
    entry: _Record = {
        "pid": pid,
        "pgid": pid,  # started in a new session: the group leader
        "create_time": started,
        "argv": list(argv),
        "name": name,
        "token": token,
        "log_path": str(log_path),
        "started_at": time.time(),
        "owner_pid": owner["owner_pid"],
        "owner_create_time": owner["owner_create_time"],
    }
    path = directory / f"{pid}.json"
    try:
        write_text_atomic(path, json.dumps(entry))
    except OSError:
        return None
    return path


def update(path: Path | None, **fields: object) -> None:
    """Change fields of a record (best effort: a record that cannot be rewritten keeps its old values)."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        entry = json.loads(path.read_text())
        entry.update(fields)
        write_text_atomic(path, json.dumps(entry))


def hand_over(path: Path | None, owner_pid: int) -> None:
    """Make ``owner_pid`` the record's owner (a shared server passes from the worker that started it to the
    xdist controller, which stops it)."""
    update(path, **_owner(owner_pid))


def note_command(path: Path | None, pid: int) -> None:
    """Record the command the server runs once ready: a wrapper (``sh -c "... exec ..."``, ``taskset``) may have
    replaced the one started, and the check before stopping it compares commands."""
    cmdline = _cmdline(pid)
    if cmdline is not None:
        update(path, cmdline=cmdline)


def forget(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Finding:
    """What :func:`sweep` did about one record, as a line for the terminal."""

    message: str
    warning: bool = False


def sweep(directory: Path, *, timeout_s: float = 5.0) -> list[Finding]:
    """Stop the recorded servers whose owning session has died; remove records that describe nothing running.

    Never signals a process that is not provably the recorded server: its start time and command must match
    (children left behind by an exited server must bear its token). A record it cannot act on safely gives a
    warning that names the pid and what to do.
    """
    if not directory.is_dir():
        return []
    findings: list[Finding] = []
    for path in sorted(directory.glob("*.json")):
        try:
            entry: _Record = json.loads(path.read_text())
            pid, pgid = int(entry["pid"]), int(entry["pgid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # unreadable: it can describe nothing we could act on
            continue
        if _alive(entry.get("owner_pid"), entry.get("owner_create_time")):
            continue  # its session still runs and will stop it
        finding, done = _settle(entry, pid, pgid, timeout_s)
        if finding is not None:
            findings.append(finding)
        if done:
            path.unlink(missing_ok=True)
    return findings


def _settle(entry: _Record, pid: int, pgid: int, timeout_s: float) -> tuple[Finding | None, bool]:
    """Act on one orphaned record: (what to say, whether the record can go)."""
    from pytest_llmperf.servers.process import stop_process_group

    what = f"{entry.get('name', 'server')} (pid {pid}, started by pytest pid {entry.get('owner_pid')}, which is gone)"
    started = start_time(pid)
    if started is None or _zombie(pid):
        return _stop_token_bearers(entry, pgid, what, timeout_s), True
    if abs(started - float(entry.get("create_time", 0.0))) > _SAME_START_S:
        return None, True  # the pid now belongs to another process: the server is long gone
    current = _cmdline(pid)
    known = [entry.get("argv"), entry.get("cmdline")]
    if current is not None and current not in known:
        return Finding(
            f"llmperf: warning: not stopping pid {pid}: it started when the recorded {what} did, but runs "
            f"{_shell(current)!r} instead of {_shell(entry.get('argv') or [])!r}. If it is a leftover server, "
            f"stop it yourself: kill -TERM -- -{pgid}",
            warning=True,
        ), True
    try:
        os.kill(pid, 0)
    except PermissionError:
        return _denied(what, pgid), False
    except ProcessLookupError:
        return None, True
    if stop_process_group(pgid, timeout_s=timeout_s):
        return Finding(
            f"llmperf: stopped a server an earlier session left running: {what}: {_shell(current or ())}"
        ), True
    return _denied(what, pgid), False


def _stop_token_bearers(entry: _Record, pgid: int, what: str, timeout_s: float) -> Finding | None:
    """The recorded process has exited; stop what it left in its group, provided each process bears its token."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    token = entry.get("token")
    if not token:
        return None
    procs = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.environ().get(TOKEN_ENV) == token:
                procs.append(proc)
    if not procs:
        return None
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    pids = ", ".join(str(p.pid) for p in procs)
    return Finding(f"llmperf: stopped processes (pids {pids}) that {what} left running")


def _denied(what: str, pgid: int) -> Finding:
    return Finding(
        f"llmperf: warning: could not stop {what}: it is not ours to signal, or it ignored SIGKILL. Stop it as its "
        f"owner (e.g. sudo kill -KILL -- -{pgid}); this warning repeats until it is gone",
        warning=True,
    )


def _owner(pid: int) -> _Owner:
    return {"owner_pid": pid, "owner_create_time": start_time(pid)}


def _alive(pid: object, create_time: object) -> bool:
    """Whether the owning session still runs: its pid exists, is no zombie, and started when recorded."""
    if not isinstance(pid, int):
        return False
    started = start_time(pid)
    if started is None or _zombie(pid):
        return False
    return not isinstance(create_time, (int, float)) or abs(started - create_time) <= _SAME_START_S


def start_time(pid: int) -> float | None:
    """When ``pid`` started (psutil's ``create_time``), or None if no such process exists."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _zombie(pid: int) -> bool:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except (psutil.Error, OSError):
        return True


def _cmdline(pid: int) -> list[str] | None:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return [str(part) for part in psutil.Process(pid).cmdline()]
    except (psutil.Error, OSError):
        return None


def _shell(argv: Sequence[str]) -> str:
    import shlex

    return shlex.join(str(a) for a in argv)
