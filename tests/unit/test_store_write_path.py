"""The serving write path's stalls, pinned by mechanism (no timing): WAL checkpoints run in a
thread of their own, never inside a caller's commit; concurrent observes from many threads
are each committed exactly once, from threads and from processes; an observe whose state
changed after its read writes nothing over it and tries again; a loaded service's heap is out
of the collector's reach.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from hearth.features.store import SQLiteStore, StoreUnavailable
from hearth.serving.dependencies import Background
from hearth.storage.sqlite import SQLiteFile, WouldBlock
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


def test_an_observe_whose_state_changed_since_its_read_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (a second store on the file) writes the customer between this
    observe's read and its write: the write must not land on the state it did not see."""
    path = tmp_path / "online.sqlite"
    store, other = SQLiteStore(path), SQLiteStore(path)
    store.observe(txn("C1", T0, tid="first"))
    read = store._raw
    reads: list[object] = []

    def raced(customer: str, connect: object) -> object:
        raw = read(customer, connect)  # type: ignore[arg-type]
        if not reads:
            other.observe(txn("C1", T0 + timedelta(minutes=1), tid="between"))
        reads.append(raw)
        return raw

    monkeypatch.setattr(store, "_raw", raced)
    features, cold = store.observe(txn("C1", T0 + timedelta(minutes=2), tid="mine"))
    assert len(reads) == 2 and reads[0] != reads[1]  # the first attempt's write was refused
    assert cold is False and features["n_tx_24h"] == 2  # computed on the state with "between"
    state = store.get("C1")
    assert state is not None and sorted(state.ids) == ["between", "first", "mine"]
    store.close()
    other.close()


def test_an_observe_that_keeps_losing_the_race_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "online.sqlite", max_attempts=3)
    store.observe(txn("C1", T0, tid="first"))
    stale = store._raw("C1", store._db.read)
    store.observe(txn("C1", T0 + timedelta(minutes=1), tid="second"))
    monkeypatch.setattr(store, "_raw", lambda *_: stale)  # every read is out of date
    with pytest.raises(StoreUnavailable, match=r"3 attempts.*'third'"):
        store.observe(txn("C1", T0 + timedelta(minutes=2), tid="third"))
    with pytest.raises(WouldBlock, match="written first"):  # on the loop: one try only
        store.observe_nowait(txn("C1", T0 + timedelta(minutes=2), tid="third"))
    monkeypatch.undo()
    state = store.get("C1")
    assert state is not None and sorted(state.ids) == ["first", "second"]  # nothing overwritten
    store.close()


def _observe_hot_customers(path: str, worker: int, per_worker: int, start: object) -> None:
    """One process's share of `test_observes_from_two_processes_are_each_committed_once`."""
    store = SQLiteStore(Path(path))
    start.wait()  # type: ignore[attr-defined]
    for i in range(per_worker):
        at = T0 + timedelta(seconds=2 * i + worker)
        store.observe(txn(f"C{i % 3}", at, tid=f"p{worker}-{i}"))
    store.close()


def test_observes_from_two_processes_are_each_committed_once(tmp_path: Path) -> None:
    """Two serving processes on one file, three customers both write all the time: every
    observe lands once (the compare-and-set, not an in-process lock, keeps them apart)."""
    path, per_worker = tmp_path / "online.sqlite", 2000
    SQLiteStore(path).close()  # the table exists before both start
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    procs = [
        spawn.Process(target=_observe_hot_customers, args=(str(path), w, per_worker, start))
        for w in range(2)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    store = SQLiteStore(path)
    states = [store.get(c) for c in ("C0", "C1", "C2")]
    ids = sorted(i for state in states if state is not None for i in state.ids)
    assert ids == sorted(f"p{w}-{i}" for w in range(2) for i in range(per_worker))
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
