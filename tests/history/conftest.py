"""Fixtures of the history tests: ``history_url``, a fresh database per test on SQLite and on a real PostgreSQL
server, which ``postgres_cluster`` starts once per test session (per xdist worker, each on its own port) from
the PostgreSQL binaries installed here (skipped with the reason when there are none).

A cluster lives in ``<temp dir>/llmperf-pg-*`` with an ``owner.json`` naming the pytest process that started it
(pid and start time). It is stopped at the end (``pg_ctl stop``; when that fails or hangs, its postmaster is
sent SIGTERM, then SIGKILL) and its directory removed. A pytest killed with SIGKILL cannot do that, so each start
first stops the clusters whose owner is gone, as ``pytest_llmperf.servers.registry`` does for servers: only a
postmaster provably the one of that directory (named by its ``postmaster.pid`` and working in it) is signalled,
and a cluster whose owner still runs (another session, another xdist worker) is left alone.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

# The cluster's superuser and its password: password authentication over TCP, so that tests can check that a
# password never appears in a message.
PG_USER = "llmperf"
PG_PASSWORD = "pg-fixture-secret-8d1f"
PREFIX = "llmperf-pg-"  # the clusters' directories under the temp dir
OWNER = "owner.json"
# A cluster directory without an owner record (made by an older version of this file, or being made right now)
# counts as abandoned only when it is this old.
UNOWNED_STALE_S = 24 * 3600
_SAME_START_S = 0.1  # psutil's start times of one process agree to the clock tick


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/<version>/bin``
    (the newest)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: [int(part) if part.isdigit() else 0 for part in Path(path).parts[-3].split(".")],
    )
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_as_postgres() -> list[str]:
    """The prefix that runs PostgreSQL's binaries as the ``postgres`` user when we are root (initdb and pg_ctl
    refuse root); none otherwise. Skips the test when root has no way to."""
    if getattr(os, "geteuid", lambda: -1)() != 0:
        return []
    if shutil.which("runuser") is None:
        pytest.skip("PostgreSQL tests run as root need runuser to start the server as the postgres user")
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("PostgreSQL tests run as root need a 'postgres' user to start the server as")
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresCluster:
    """A PostgreSQL server on 127.0.0.1:``port`` whose data lives in a temporary directory."""

    bin_dir: Path
    root: Path
    port: int
    run_as: list[str]  # the prefix that runs its binaries as the ``postgres`` user when we are root
    _databases: Iterator[int] = field(default_factory=itertools.count)
    _roles: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str, password: str = PG_PASSWORD, user: str = PG_USER) -> str:
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def execute(self, database: str, *statements: str) -> None:
        """Run statements as the superuser, each in its own transaction."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD, dbname=database, autocommit=True
        ) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"history_{os.getpid()}_{next(self._databases)}"
        self.execute("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def new_role(self, database_url: str, password: str, *, select: bool = True) -> str:
        """A new login role that may connect to the database of ``database_url`` and use its public schema, and
        (``select``) read its tables, but write nothing; the database's URL as that role."""
        database = database_url.rsplit("/", 1)[1]
        role = f"reader_{os.getpid()}_{next(self._roles)}"  # roles are the server's: one name per role
        grants = [
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
            f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
        ]
        self.execute("postgres", *grants)
        on_tables = [f"GRANT USAGE ON SCHEMA public TO {role}"]
        if select:
            on_tables.append(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        self.execute(database, *on_tables)
        return self.url(database, password=password, user=role)

    def pg(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one of the server's binaries; raises subprocess.TimeoutExpired after ``timeout`` seconds."""
        return subprocess.run(
            [*self.run_as, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


# --- stopping ----------------------------------------------------------------------------------------------------


def postmaster(data: Path) -> psutil.Process | None:
    """The running postmaster of the data directory ``data``: the process its ``postmaster.pid`` names, provided
    it is a live ``postgres`` working in that directory (a reused pid is not); None when none runs."""
    try:
        pid = int((data / "postmaster.pid").read_text(encoding="utf-8").split()[0])
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or "postgres" not in process.name():
            return None
        if Path(process.cwd()).resolve() != data.resolve():
            return None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return process


def kill_postmaster(data: Path, *, timeout_s: float = 10.0) -> bool:
    """SIGTERM the postmaster of ``data``, then SIGKILL if it has not exited within ``timeout_s``; whether none
    runs afterwards. (Its server processes exit by themselves once it is gone.)"""
    process = postmaster(data)
    if process is None:
        return True
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            process.send_signal(sig)  # psutil checks that the pid still names this process
            process.wait(wait_s)
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.AccessDenied:
            return False
    return postmaster(data) is None


def stop_cluster(bin_dir: Path, run_as: list[str], data: Path) -> bool:
    """``pg_ctl stop -m fast``, and when it fails or hangs, the postmaster killed; whether none runs now."""
    try:
        stopped = subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
            capture_output=True,
            text=True,
            timeout=45,
            check=False,
        )
        if stopped.returncode == 0 and postmaster(data) is None:
            return True
    except subprocess.TimeoutExpired:
        pass
    return kill_postmaster(data)


def abandoned(root: Path) -> bool:
    """Whether the cluster directory ``root`` was left by a session that is gone: its owner record names a
    process that no longer runs (or another process with that pid); without a record, when it is old."""
    try:
        record = json.loads((root / OWNER).read_text(encoding="utf-8"))
        pid, started = int(record["pid"]), float(record["create_time"])
    except FileNotFoundError:
        try:
            return time.time() - root.stat().st_mtime > UNOWNED_STALE_S
        except OSError:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unreadable: nothing proves it abandoned
    try:
        owner = psutil.Process(pid)
        alive = owner.status() != psutil.STATUS_ZOMBIE and abs(owner.create_time() - started) <= _SAME_START_S
    except psutil.Error:
        alive = False
    return not alive


def stop_abandoned(bin_dir: Path, run_as: list[str], temp_dir: Path) -> list[Path]:
    """Stop and remove the clusters under ``temp_dir`` whose session is gone; the directories removed."""
    removed = []
    for root in sorted(temp_dir.glob(f"{PREFIX}*")):
        if root.is_symlink() or not root.is_dir() or not abandoned(root):
            continue
        if stop_cluster(bin_dir, run_as, root / "data"):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


# --- starting ----------------------------------------------------------------------------------------------------


def write_owner(root: Path) -> None:
    record = {"pid": os.getpid(), "create_time": psutil.Process().create_time()}
    partial = root / f"{OWNER}.partial"
    partial.write_text(json.dumps(record), encoding="utf-8")
    partial.replace(root / OWNER)


def start_cluster(bin_dir: Path, run_as: list[str]) -> PostgresCluster:
    # Not under pytest's tmp_path: its parents are private to this user, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    write_owner(root)
    cluster = PostgresCluster(bin_dir, root, 0, run_as)
    try:
        _initdb(cluster)
        started: subprocess.CompletedProcess[str] | None = None
        # Another process may take the free port before the server binds it: try a few.
        for _ in range(3):
            cluster.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                started = cluster.pg(
                    "pg_ctl",
                    "-D",
                    str(cluster.data),
                    "-l",
                    str(root / "log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                    timeout=90,
                )
                if started.returncode == 0:
                    return cluster
            except subprocess.TimeoutExpired:
                started = None
            # A start that timed out may still come up: stop it before the next port (one data directory can
            # have one postmaster).
            stop_cluster(bin_dir, run_as, cluster.data)
        log = (root / "log").read_text(encoding="utf-8", errors="replace") if (root / "log").exists() else ""
        said = f"{started.stdout}\n{started.stderr}" if started is not None else "timed out"
        raise RuntimeError(f"pg_ctl start failed:\n{said}\n{log[-3000:]}")
    except BaseException:
        stop_cluster(bin_dir, run_as, cluster.data)
        shutil.rmtree(root, ignore_errors=True)
        raise


def _initdb(cluster: PostgresCluster) -> None:
    root = cluster.root
    if cluster.run_as:
        shutil.chown(root, "postgres", "postgres")
    pwfile = root / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n", encoding="utf-8")
    if cluster.run_as:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        init = cluster.pg(
            "initdb",
            "-D",
            str(cluster.data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
            "apt-get install postgresql to run the history tests on it"
        )
    run_as = run_as_postgres()
    stop_abandoned(bin_dir, run_as, Path(tempfile.gettempdir()))
    cluster = start_cluster(bin_dir, run_as)
    try:
        yield cluster
    finally:
        try:
            stop_cluster(bin_dir, run_as, cluster.data)
        finally:
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a new, empty history database: an SQLite file, or a database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'history.db').as_posix()}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()
