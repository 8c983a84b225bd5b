"""Fixtures of the history tests: ``history_url``, a fresh database per test on SQLite and on a real PostgreSQL
server, which ``postgres_cluster`` starts once per test session (per xdist worker, each on its own port) from
the PostgreSQL binaries installed here (skipped with the reason when there are none)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The cluster's superuser and its password: password authentication over TCP, so that tests can check that a
# password never appears in a message.
PG_USER = "llmperf"
PG_PASSWORD = "pg-fixture-secret-8d1f"


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


@dataclass
class PostgresCluster:
    """A PostgreSQL server on 127.0.0.1:``port`` whose data lives in a temporary directory."""

    bin_dir: Path
    root: Path
    port: int
    run_as: list[str]  # the prefix that runs its binaries as the ``postgres`` user when we are root
    _databases: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str, password: str = PG_PASSWORD) -> str:
        return f"postgresql+psycopg://{PG_USER}:{password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"history_{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _start(bin_dir: Path) -> PostgresCluster:
    run_as: list[str] = []
    if getattr(os, "geteuid", lambda: -1)() == 0:
        # initdb refuses to run as root.
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL tests run as root need runuser to start the server as the postgres user")
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL tests run as root need a 'postgres' user to start the server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: its parents are private to this user, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="llmperf-pg-"))
    if run_as:
        shutil.chown(root, "postgres", "postgres")
    cluster = PostgresCluster(bin_dir, root, 0, run_as)
    pwfile = root / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n", encoding="utf-8")
    if run_as:
        shutil.chown(pwfile, "postgres", "postgres")
    init = cluster.pg(
        "initdb",
        "-D",
        str(root / "data"),
        "-U",
        PG_USER,
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-sync",
    )
    pwfile.unlink()
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    # Another process may take the free port before the server binds it: try a few.
    for _ in range(3):
        cluster.port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = cluster.pg(
            "pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60", "-o", options, "start"
        )
        if started.returncode == 0:
            return cluster
    log = (root / "log").read_text(encoding="utf-8", errors="replace") if (root / "log").exists() else ""
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n{log[-3000:]}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
            "apt-get install postgresql to run the history tests on it"
        )
    cluster = _start(bin_dir)
    try:
        yield cluster
    finally:
        cluster.pg("pg_ctl", "-D", str(cluster.root / "data"), "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a new, empty history database: an SQLite file, or a database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{(tmp_path / 'history.db').as_posix()}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()
