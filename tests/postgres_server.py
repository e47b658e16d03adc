"""A throwaway PostgreSQL server for tests (and scripts): initdb, start, databases, stop.

`start_postgres()` initialises a cluster in a new temporary folder, starts it on a free
loopback port (its unix socket in that folder too, trust authentication, no fsync: a test
server, nothing to keep) and returns a `PostgresServer`; `create_database()` gives a fresh,
empty database's URL; `stop()` stops the server and removes the folder. PostgreSQL refuses to
run as root, so as root the cluster belongs to an unprivileged user (``nobody``) and every
server command runs through ``runuser -u nobody``.

pytest uses it through tests/conftest.py's fixtures: `postgres_server` (one per session) and
`postgres_url` (a fresh database per test). Where the binaries are missing (`postgres_missing`
says why), those fixtures skip the test. `freeze()`/`thaw()` stop and resume every process of
the server (a hung server), `stop(remove=False)`/`start()` restart it.

    with running_postgres() as server:          # outside pytest
        url = server.create_database()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest

from hearth.launch.launcher import free_port

RUN_AS = "nobody"  # the unprivileged owner of the cluster when the tests run as root
SUPERUSER = "postgres"  # the cluster's superuser (a PostgreSQL role, not a system user)


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def postgres_missing() -> str | None:
    """Why a test server cannot be started here, or None when it can."""
    if postgres_bin() is None:
        return (
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed "
            "(`make system-deps`, or apt-get install postgresql)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    return None


def needs_postgres() -> pytest.MarkDecorator:
    """Skips a test (or a module: ``pytestmark``) where a test server cannot be started."""
    reason = postgres_missing()
    return pytest.mark.skipif(reason is not None, reason=str(reason))


class PostgresServer:
    """A running throwaway cluster on 127.0.0.1:`port`; `stop()` it when done."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.logfile = root / "postgres.log"
        self._databases = 0

    @property
    def url(self) -> str:
        """The maintenance database's URL (superuser, no password: trust on loopback)."""
        return self.database_url(SUPERUSER)

    def database_url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (``hearth_test_<n>`` unless named); its URL."""
        if name is None:
            self._databases += 1
            name = f"hearth_test_{self._databases}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # our own name
        return self.database_url(name)

    # -- the server process ----------------------------------------------------------------
    def _run(self, *args: str, timeout_s: float = 60) -> None:
        bin_dir = postgres_bin()
        assert bin_dir is not None
        command = [str(bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}\n{log}"
            )

    def initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server (again, after `stop(remove=False)`), ready when this returns."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def processes(self) -> list[psutil.Process]:
        """The postmaster and every process it started (backends, checkpointer, …)."""
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP every process of the server: it accepts connections (the kernel does) but
        answers nothing, as a hung server or an unreachable host would; `thaw()` after."""
        for proc in self.processes():
            proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for proc in self.processes():
            proc.send_signal(signal.SIGCONT)

    def stop(self, remove: bool = True, mode: str = "immediate") -> None:
        """Stop the server (`mode`: pg_ctl's, immediate = at once) and, with `remove`, delete
        its folder. Harmless when it is stopped already."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(port: int | None = None) -> PostgresServer:
    """initdb a cluster in a new temporary folder and start it; RuntimeError with the reason
    when it cannot be (see `postgres_missing`)."""
    if reason := postgres_missing():
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="hearth-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(root, user=RUN_AS)
    server = PostgresServer(root, port or free_port())
    try:
        server.initdb()
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """`start_postgres()`, stopped (and removed) when the block ends."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
