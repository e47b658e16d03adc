"""hearth.storage: the SQLite state-file helper and the Redis client + compare-and-set helper.

The SQLite parts run on real files in tmp_path; the Redis parts against a real redis-server
on loopback (skipped where redis-server is not installed), plus two tiny TCP servers that
misbehave on purpose (one never answers, one drops every connection) to check that a broken
server costs milliseconds, not redis-py's default seconds of retries.
"""

from __future__ import annotations

import ast
import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.client import Pipeline

from hearth.storage.redis import Update, compare_and_set, connect, ping, translate_errors
from hearth.storage.sqlite import SQLiteFile, WouldBlock
from tests.helpers import RedisServer, free_port, needs_redis

T = TypeVar("T")
STORAGE = Path(__file__).resolve().parents[2] / "src" / "hearth" / "storage"


class Down(RuntimeError):
    """The caller's own error type, as StoreUnavailable / StateUnavailable are."""


# -- the package -----------------------------------------------------------------------------
def test_storage_imports_nothing_of_hearth_but_config_and_itself() -> None:
    for module in STORAGE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                ours = name == "hearth.config" or name.startswith("hearth.storage.")
                assert not name.startswith("hearth.") or ours, (module, name)


def test_sqlite_users_never_load_redis_py() -> None:
    code = (
        "import sys, hearth.storage.sqlite, hearth.features.store; "
        "assert 'redis' not in sys.modules, 'redis-py was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- SQLite ----------------------------------------------------------------------------------
def open_file(path: Path, **kwargs: Any) -> SQLiteFile:
    db = SQLiteFile(path, name=f"test file {path}", error=Down, **kwargs)
    db.script("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);")
    return db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SQLiteFile]:
    f = open_file(tmp_path / "sub" / "state.sqlite")
    yield f
    f.close()


def value(db: SQLiteFile, key: str = "n") -> int | None:
    with db.read() as conn:
        row = conn.execute("SELECT v FROM t WHERE k = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


@pytest.mark.parametrize(("level", "code"), [("NORMAL", 1), ("FULL", 2)])
def test_opens_in_wal_with_the_chosen_settings(tmp_path: Path, level: str, code: int) -> None:
    f = open_file(tmp_path / "deep" / "er" / "x.sqlite", synchronous=level, timeout_s=1.5)
    try:
        with f.read() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1500
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == code
            assert conn.isolation_level is None and not conn.in_transaction
    finally:
        f.close()


def test_an_unknown_synchronous_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteFile(tmp_path / "x.sqlite", name="x", error=Down, synchronous="SOMETIMES")  # type: ignore[arg-type]


def test_a_transaction_commits_when_the_block_ends(db: SQLiteFile) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES ('n', 1)")
        assert conn.in_transaction
    assert value(db) == 1
    other = open_file(db.path)  # another connection sees the commit
    assert value(other) == 1
    other.close()


def test_a_transaction_rolls_back_and_lets_the_callers_error_through(db: SQLiteFile) -> None:
    class Refused(ValueError):
        pass

    with pytest.raises(Refused), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES ('n', 1)")
        raise Refused("no")
    assert value(db) is None
    with db.read() as conn:
        assert not conn.in_transaction  # the connection is usable again


def test_sqlite_errors_become_the_callers_error_and_roll_back(db: SQLiteFile) -> None:
    with (
        pytest.raises(Down, match=r"test file .*state\.sqlite: .*UNIQUE") as caught,
        db.transaction() as conn,
    ):
        conn.execute("INSERT INTO t VALUES ('m', 1)")
        conn.execute("INSERT INTO t VALUES ('m', 2)")
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert value(db, "m") is None
    with pytest.raises(Down, match="no such table"), db.read() as conn:
        conn.execute("SELECT * FROM missing")


def test_a_transaction_holds_the_write_lock_from_its_start(db: SQLiteFile) -> None:
    other = open_file(db.path, timeout_s=0.1)
    try:
        with db.transaction() as conn:
            conn.execute("SELECT count(*) FROM t").fetchone()  # a read, yet the lock is held
            with pytest.raises(Down, match="locked"), other.transaction():
                pass
            assert value(other) is None  # readers are not blocked (WAL)
    finally:
        other.close()


def test_nowait_says_would_block_instead_of_waiting_for_a_write_lock(db: SQLiteFile) -> None:
    other = open_file(db.path)
    try:
        with other.transaction() as conn:
            conn.execute("INSERT INTO t VALUES ('n', 1)")
            with db.nowait() as mine:  # reads go on (WAL): the last commit, not other's
                assert mine.execute("SELECT count(*) FROM t").fetchone()[0] == 0
            with pytest.raises(WouldBlock, match="locked"), db.nowait() as mine:
                mine.execute("INSERT INTO t VALUES ('m', 2)")
        with db.nowait() as mine:  # the lock let go: the same write goes through
            mine.execute("INSERT INTO t VALUES ('m', 2)")
        assert (value(db, "n"), value(db, "m")) == (1, 2)
    finally:
        other.close()


def test_nowait_says_would_block_while_another_thread_uses_it(db: SQLiteFile) -> None:
    inside, leave = threading.Event(), threading.Event()

    def use() -> None:
        with db.nowait():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=use)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(WouldBlock, match="in use"), db.nowait():
            pass
    finally:
        leave.set()
        thread.join(10)
    db.close()
    with pytest.raises(Down, match="closed"), db.nowait():
        pass


def test_read_modify_write_across_connections_loses_nothing(db: SQLiteFile) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES ('n', 0)")
    files = [db, open_file(db.path)]  # two connections: their lock is SQLite's, not ours

    def bump(f: SQLiteFile) -> None:
        for _ in range(40):
            with f.transaction() as conn:
                (n,) = conn.execute("SELECT v FROM t WHERE k = 'n'").fetchone()
                conn.execute("UPDATE t SET v = ? WHERE k = 'n'", (n + 1,))

    threads = [threading.Thread(target=bump, args=(files[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files[1].close()
    assert value(db) == 6 * 40


def test_a_closed_file_raises_the_callers_error_and_pings_false(db: SQLiteFile) -> None:
    assert db.ping() is True and not db.closed
    db.close()
    db.close()  # twice is harmless
    assert db.closed and db.ping() is False
    with pytest.raises(Down, match=r"test file .* is closed"), db.read():
        pass
    with pytest.raises(Down, match="closed"), db.transaction():
        pass


def test_a_file_that_cannot_be_opened_is_the_callers_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(Down, match="a-directory"):
        SQLiteFile(tmp_path / "a-directory", name=str(tmp_path / "a-directory"), error=Down)


def test_script_runs_outside_a_transaction(db: SQLiteFile) -> None:
    db.script("CREATE TABLE IF NOT EXISTS u (x INTEGER); CREATE INDEX IF NOT EXISTS ux ON u (x);")
    db.script("CREATE TABLE IF NOT EXISTS u (x INTEGER);")  # idempotent
    with db.read() as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master").fetchall()}
    assert {"t", "u", "ux"} <= names


# -- Redis: a client that fails fast ---------------------------------------------------------
class DroppingServer:
    """Accepts TCP connections and closes each one after its first read; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.recv(4096)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def client_within(limit_s: float, url: str, **options: Any) -> Iterator[redis.Redis]:
    """A `connect`ed client for the block, closed after it; the block, close included, must
    take less than `limit_s`."""
    client = connect(url, **options)
    started = time.perf_counter()
    try:
        yield client
    finally:
        client.close()
    assert time.perf_counter() - started < limit_s


@pytest.mark.parametrize("retries", [0, 1])
def test_a_dropped_connection_is_retried_only_within_the_budget(retries: int) -> None:
    server = DroppingServer()
    try:
        with (
            client_within(1.0, server.url, retries=retries) as client,
            pytest.raises(redis.ConnectionError),
        ):
            client.get("k")
    finally:
        server.close()
    # redis-py's own default would connect 11 times over about five seconds.
    assert server.connections == retries + 1


def test_a_server_that_never_answers_costs_one_timeout() -> None:
    with socket.socket() as silent:  # listens (so connect succeeds) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        # One timeout, never retried.
        with (
            client_within(0.55, url, timeout_s=0.3) as client,
            pytest.raises(redis.TimeoutError),
        ):
            client.get("k")


def test_nothing_listening_is_the_callers_error_fast() -> None:
    with client_within(1.0, f"redis://127.0.0.1:{free_port()}/0") as client:
        assert ping(client) is False
        with (
            pytest.raises(Down, match=r"test redis: .*refused") as caught,
            translate_errors(Down, "test redis"),
        ):
            client.get("k")
        assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_options_in_the_url_win_over_the_defaults() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/3?socket_timeout=7", timeout_s=0.5)
    kwargs = client.get_connection_kwargs()
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["db"]) == (7, 0.5, 3)
    client.close()


def test_every_redis_client_of_hearth_fails_fast() -> None:
    """The online store's and the rollout state's clients: short timeouts, at most one
    reconnect on a connection error, no retry on a timeout (redis-py's default: several
    retries with backoff, on both)."""
    from hearth.features.store_redis import RedisStore
    from hearth.traffic.state_redis import RedisStateStore

    url = f"redis://127.0.0.1:{free_port()}/0"
    for store, limit_s in ((RedisStore(url), 0.5), (RedisStateStore(url), 1.0)):
        client = store._client
        kwargs = client.get_connection_kwargs()
        assert kwargs["socket_timeout"] <= limit_s and kwargs["socket_connect_timeout"] <= limit_s
        retry = client.connection_pool.make_connection().retry
        assert retry.get_retries() <= 1
        assert redis.TimeoutError not in retry._supported_errors
        assert store.ping() is False  # nothing listens: an answer, not a wait
        store.close()


# -- Redis: compare-and-set on a real server -------------------------------------------------
@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = connect(redis_server.url)
    c.flushdb()
    yield c
    c.close()


@pytest.fixture
def neighbour(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Another client, as another replica would be."""
    c = connect(redis_server.url)
    yield c
    c.close()


def increment(key: str) -> Callable[[Pipeline], Update[int]]:
    """A compute that adds one to `key` and returns the new value."""

    def compute(pipe: Pipeline) -> Update[int]:
        new = int(pipe.get(key) or 0) + 1
        return Update(new, lambda p: p.set(key, new))

    return compute


def cas(
    client: redis.Redis, keys: list[str], compute: Callable[[Pipeline], Update[T]], **kwargs: Any
) -> T:
    return compare_and_set(client, keys, compute, error=Down, where="test cas", **kwargs)


@needs_redis
def test_compare_and_set_writes_and_returns_the_result(client: redis.Redis) -> None:
    assert cas(client, ["n"], increment("n")) == 1
    assert cas(client, ["n"], increment("n")) == 2
    assert client.get("n") == b"2"


@needs_redis
def test_an_update_without_writes_only_reads(client: redis.Redis) -> None:
    client.set("n", 5)
    assert cas(client, ["n"], lambda pipe: Update(int(pipe.get("n") or 0))) == 5
    assert client.get("n") == b"5" and client.get("untouched") is None


@needs_redis
def test_a_concurrent_write_makes_it_recompute_from_the_new_value(
    client: redis.Redis, neighbour: redis.Redis
) -> None:
    client.set("n", 10)
    calls: list[int] = []

    def compute(pipe: Pipeline) -> Update[int]:
        calls.append(1)
        seen = int(pipe.get("n") or 0)
        if len(calls) == 1:
            neighbour.set("n", 100)  # another replica writes between our read and our EXEC
        return Update(seen + 1, lambda p: p.set("n", seen + 1))

    assert cas(client, ["n"], compute) == 101
    assert len(calls) == 2 and client.get("n") == b"101"


@needs_redis
def test_it_gives_up_after_max_attempts_conflicts(
    client: redis.Redis, neighbour: redis.Redis
) -> None:
    calls: list[int] = []

    def always_overtaken(pipe: Pipeline) -> Update[None]:
        calls.append(1)
        pipe.get("n")
        neighbour.incr("n")
        return Update(None, lambda p: p.set("n", -1))

    with pytest.raises(Down, match=r"test cas: gave up after 3 conflicting writes .* n"):
        cas(client, ["n"], always_overtaken, max_attempts=3, backoff_cap_s=0.001)
    assert len(calls) == 3 and client.get("n") == b"3"  # our write never landed


@needs_redis
def test_the_computes_own_error_propagates_and_nothing_is_written(client: redis.Redis) -> None:
    def refuse(pipe: Pipeline) -> Update[None]:
        pipe.get("n")
        raise LookupError("not allowed")

    with pytest.raises(LookupError, match="not allowed"):
        cas(client, ["n"], refuse)
    assert client.get("n") is None


@needs_redis
def test_concurrent_writers_on_two_clients_lose_nothing(
    client: redis.Redis, neighbour: redis.Redis
) -> None:
    clients = [client, neighbour]

    def bump(c: redis.Redis) -> None:
        for _ in range(50):
            cas(c, ["n", "other"], increment("n"), max_attempts=1000)

    threads = [threading.Thread(target=bump, args=(clients[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get("n") == b"400"


def test_redis_errors_become_the_callers_error() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(Down, match=r"test cas: .*refused"):
            cas(client, ["n"], increment("n"))
        with pytest.raises(ValueError, match="max_attempts"):
            cas(client, ["n"], increment("n"), max_attempts=0)
    finally:
        client.close()
