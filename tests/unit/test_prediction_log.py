"""The prediction log's storage: whole batches, typed failures, a migration under a lock.

What the log's rows mean for the analysis is tested in tests/unit/test_rollout_control.py
and test_drift.py; here, what `hearth.storage.sqlite.SQLiteFile` gives it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from hearth.config import Settings
from hearth.features.store import open_store
from hearth.serving.dependencies import LocalFeatures
from hearth.serving.gateway import Gateway
from hearth.serving.http import HttpPolicy, create_app
from hearth.traffic.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionRecord,
)
from hearth.traffic.prediction_log_writer import PredictionLogWriter
from tests.unit.test_serving_http import KEY, TXN, FakeModel, _loaded


def record(tx: str, variant: str = "champion") -> PredictionRecord:
    return PredictionRecord(
        transaction_id=tx,
        request_id="req",
        variant=variant,
        model_version="1",
        score=0.1,
        decision="approve",
        latency_ms=2.0,
    )


def test_a_batch_is_logged_whole_or_not_at_all(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "serving.sqlite")
    broken = record("t2", variant=None)  # type: ignore[arg-type]  # NOT NULL column
    with pytest.raises(PredictionLogUnavailable, match=r"prediction log .*serving\.sqlite"):
        log.record_entries([record("t1"), broken])
    assert log.rows("predictions") == []
    log.record_entries([record("t1"), record("t3")])
    assert [r["transaction_id"] for r in log.rows("predictions")] == ["t1", "t3"]
    log.close()


def test_a_closed_log_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "serving.sqlite")
    log.close()
    log.close()
    with pytest.raises(PredictionLogUnavailable, match="closed"):
        log.record_entries([record("t1")])
    with pytest.raises(PredictionLogUnavailable, match="closed"):
        log.feedback("t1", True)


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "serving.sqlite"
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(PredictionLogUnavailable, match="not a database"):
        PredictionLog(path)


def test_logs_opened_at_once_on_an_old_file_all_open_and_keep_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "serving.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE predictions (transaction_id TEXT NOT NULL, request_id TEXT NOT NULL, "
            "variant TEXT NOT NULL, model_version TEXT NOT NULL, score REAL NOT NULL, "
            "decision TEXT NOT NULL, at REAL NOT NULL)"
        )
        db.execute("INSERT INTO predictions VALUES ('t0', 'r', 'champion', '1', 0.1, 'ok', 1)")
    db.close()
    logs: list[PredictionLog] = []
    errors: list[BaseException] = []

    def open_log() -> None:
        try:
            logs.append(PredictionLog(path))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    logs[0].record_entries([record("t1")])
    assert [r["transaction_id"] for r in logs[-1].rows("predictions")] == ["t0", "t1"]
    for log in logs:
        log.close()


# -- the serving side's writer: a failing log never fails a request, and loses nothing silently
class FlakyLog:
    """A log whose writes fail while `down` (disk full, locked), then succeed."""

    def __init__(self) -> None:
        self.down = True
        self.written: list[str] = []
        self.attempts = 0

    def record_entries(self, entries: list[PredictionRecord]) -> None:
        self.attempts += 1
        if self.down:
            raise PredictionLogUnavailable("prediction log x: database or disk is full")
        self.written.extend(e.transaction_id for e in entries)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_failed_writes_are_retried_until_the_log_answers(tmp_path: Path) -> None:
    flaky = FlakyLog()
    writer = PredictionLogWriter(lambda: flaky, retry_first_s=0.01, retry_max_s=0.05)  # type: ignore[arg-type, return-value]
    failures = _sample("hearth_prediction_log_write_failures_total")
    first = writer.submit([record("t1"), record("t2")])
    assert first is not None and first.result(5) is False  # failed: nobody waits for a retry
    assert writer.submit([record("t3")]) is None  # failing: do not even wait
    assert _until(lambda: flaky.attempts >= 3)
    assert _sample("hearth_prediction_log_write_failures_total") >= failures + 3
    assert writer.pending == 3 and _sample("hearth_prediction_log_pending") == 3
    flaky.down = False
    assert writer.flush(10)
    assert flaky.written == ["t1", "t2", "t3"]  # in order, each once
    assert writer.pending == 0 and writer.healthy and writer.dropped == 0
    assert _until(lambda: _sample("hearth_prediction_log_pending") == 0)
    writer.close()


class HungLog:
    """A log whose writes wait until `answer` is set (a server that takes the connection and
    answers nothing)."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.written: list[str] = []

    def record_entries(self, entries: list[PredictionRecord]) -> None:
        self.answer.wait(30)
        self.written.extend(e.transaction_id for e in entries)


def test_a_hung_write_is_not_waited_for_and_what_came_meanwhile_is_written_after() -> None:
    hung = HungLog()
    writer = PredictionLogWriter(lambda: hung, stalled_s=0.1)  # type: ignore[arg-type, return-value]
    first = writer.submit([record("h1")])
    assert first is not None  # nothing in flight yet: worth a short wait
    assert _until(lambda: not writer.healthy)  # in flight past stalled_s: the log hangs
    assert writer.submit([record("h2"), record("h3")]) is None  # do not wait
    hung.answer.set()
    assert first.result(5) is True and writer.flush(10)
    assert hung.written == ["h1", "h2", "h3"] and writer.healthy and writer.dropped == 0
    writer.close()


def test_a_full_buffer_drops_the_oldest_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyLog()
    writer = PredictionLogWriter(  # type: ignore[arg-type]
        lambda: flaky,
        max_pending=10,
        retry_first_s=0.01,
        retry_max_s=0.05,  # type: ignore[return-value]
    )
    dropped = _sample("hearth_prediction_log_dropped_total")
    with caplog.at_level("WARNING", logger="hearth.traffic.prediction_log"):
        for i in range(25):
            writer.submit([record(f"t{i}")])
        assert writer.dropped == 15
        assert _sample("hearth_prediction_log_dropped_total") == dropped + 15
        assert _until(lambda: "dropped 15 entries" in caplog.text, 15)
    assert "t0, t1, t2" in caplog.text  # what could not be written is named
    flaky.down = False
    assert writer.flush(10)
    assert flaky.written == [f"t{i}" for i in range(15, 25)]  # the newest ten
    writer.close()


def test_what_cannot_be_written_by_shutdown_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyLog()
    writer = PredictionLogWriter(lambda: flaky, retry_first_s=0.01, retry_max_s=0.05)  # type: ignore[arg-type, return-value]
    dropped = _sample("hearth_prediction_log_dropped_total")
    writer.submit([record("s1"), record("s2")])
    with caplog.at_level("ERROR", logger="hearth.traffic.prediction_log"):
        writer.close(timeout_s=0.3)
    assert writer.dropped == 2 and writer.pending == 0
    assert _sample("hearth_prediction_log_dropped_total") == dropped + 2
    assert "2 entries not written at shutdown" in caplog.text and "s1, s2" in caplog.text


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a real 'disk full' for SQLite (ENOSPC → SQLITE_FULL)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_predictions_answer_200_while_the_logs_disk_is_full(
    tiny_disk: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(settings)
    log = PredictionLog(tiny_disk / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), FakeModel(), _loaded(log))
    gateway.log_writer.max_pending = 5
    app = create_app(lambda: gateway, lambda: HttpPolicy(KEY, max_payload_bytes=4096))
    filler = tiny_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    failures = _sample("hearth_prediction_log_write_failures_total")
    dropped = _sample("hearth_prediction_log_dropped_total")

    async def send(ids: range) -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.headers["X-API-Key"] = KEY
            return [
                (await client.post("/predict", json={**TXN, "transaction_id": f"f{i}"})).status_code
                for i in ids
            ]

    with caplog.at_level("WARNING", logger="hearth.traffic.prediction_log"):
        assert asyncio.run(send(range(12))) == [200] * 12
        assert _until(lambda: "disk is full" in caplog.text)
    assert _sample("hearth_prediction_log_write_failures_total") > failures
    # 12 - 5 buffered - those written before the disk was needed: a WAL already
    # checkpointed (in the background) is rewritten in place, so the first few may fit.
    written = gateway.log_writer.written
    assert _sample("hearth_prediction_log_dropped_total") == dropped + 7 - written
    assert gateway.log_writer.pending == 5

    filler.unlink()  # the disk has room again: the buffered entries are written
    assert gateway.log_writer.flush(15)
    fitted = [f"f{i}" for i in range(written)]
    assert [r["transaction_id"] for r in log.rows("predictions")] == fitted + [
        f"f{i}" for i in range(7, 12)
    ]
    assert asyncio.run(send(range(12, 14))) == [200, 200]
    assert len(log.rows("predictions")) == 7 + written
    gateway.log_writer.close()
    log.close()
    store.close()
