"""The serving write path's stalls, pinned by mechanism (no timing): WAL checkpoints run in a
thread of their own, never inside a caller's commit; concurrent observes from many threads
are each committed exactly once; a loaded service's heap is out of the collector's reach.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from hearth.features.store import SQLiteStore
from hearth.serving.dependencies import Background
from hearth.storage.sqlite import SQLiteFile
from tests.unit.test_store import T0, txn

PAGE = 4096
BLOB = b"x" * (8 * PAGE)  # a row that takes ~8 WAL pages


class Down(RuntimeError):
    pass


def wait_for(what: Callable[[], bool], limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def quiet_checkpointer(tmp_path: Path) -> Iterator[SQLiteFile]:
    """A file whose checkpointer thread never wakes on its own: checkpoints only by run()."""
    db = SQLiteFile(tmp_path / "f.sqlite", name="f", error=Down, checkpoint_every_s=3600.0)
    db.script("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    yield db
    db.close()


def wal_pages(db: SQLiteFile) -> float:
    return db.path.with_name(db.path.name + "-wal").stat().st_size / PAGE


def test_commits_never_checkpoint_the_checkpointer_does(quiet_checkpointer: SQLiteFile) -> None:
    db = quiet_checkpointer
    with db.read() as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for k in range(150):  # ~1200 WAL pages: SQLite's own would have checkpointed at 1000
        with db.transaction() as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, BLOB))
    assert wal_pages(db) > 1100  # no commit checkpointed and restarted the WAL
    assert db.checkpointer is not None and db.checkpointer.checkpoints == 0
    frames, copied = db.checkpointer.run()
    assert frames > 1100 and copied == frames
    with db.transaction() as conn:  # the WAL, all copied, is written from its start again
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (1000, b"y"))
    frames, copied = db.checkpointer.run()
    assert frames < 20 and copied == frames
    with db.read() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 151


def test_a_long_wal_is_restarted_so_it_stays_bounded(quiet_checkpointer: SQLiteFile) -> None:
    db = quiet_checkpointer
    assert db.checkpointer is not None
    db.checkpointer.restart_frames = 100
    for k in range(30):
        with db.transaction() as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, BLOB))
    db.checkpointer.run()
    assert db.checkpointer.restarts == 1
    with db.transaction() as conn:
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (99, b"y"))
    frames, _ = db.checkpointer.run()
    assert frames < 20


def test_the_checkpointer_runs_in_its_own_thread_until_closed(tmp_path: Path) -> None:
    db = SQLiteFile(tmp_path / "f.sqlite", name="f", error=Down, checkpoint_every_s=0.01)
    db.script("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    checkpointer = db.checkpointer
    assert checkpointer is not None
    with db.transaction() as conn:
        conn.execute("INSERT INTO t (k, v) VALUES (1, ?)", (BLOB,))
    assert wait_for(lambda: checkpointer.checkpoints > 0)
    db.close()
    assert not checkpointer._thread.is_alive()
    assert checkpointer.run() == (0, 0)  # closed: a no-op, never an error
    plain = SQLiteFile(tmp_path / "g.sqlite", name="g", error=Down)  # the default: SQLite's own
    assert plain.checkpointer is None
    with plain.read() as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    plain.close()


def test_concurrent_observes_from_many_threads_are_each_committed_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "online.sqlite")
    customers = [f"C{i}" for i in range(6)]
    threads_n, per_thread = 8, 40
    sent: dict[str, set[str]] = {c: set() for c in customers}
    errors: list[BaseException] = []

    def client(t: int) -> None:
        try:
            for i in range(per_thread):
                customer = customers[(t + i) % len(customers)]
                one = txn(customer, T0 + timedelta(seconds=t * per_thread + i), tid=f"t{t}-{i}")
                store.observe(one)
                if i % 5 == 0:
                    store.observe(one)  # a client's retry: must not count twice
                sent[customer].add(one.transaction_id)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for customer in customers:
        state = store.get(customer)
        assert state is not None
        assert sorted(state.ids) == sorted(sent[customer])  # each once, none lost
    store.close()


def test_a_loaded_dependency_is_out_of_the_collectors_reach() -> None:
    before = gc.get_freeze_count()
    try:
        built = Background("thing", lambda: [{"a": 1} for _ in range(100)])
        built.join(10.0)
        assert built.ready
        assert gc.get_freeze_count() >= before + 100  # what it built, and all alive then
    finally:
        gc.unfreeze()
