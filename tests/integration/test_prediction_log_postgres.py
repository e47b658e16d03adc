"""The prediction log on a real PostgreSQL server answers as the SQLite one does.

The same entries and labels go to a SQLite log and a PostgreSQL log (tests/conftest.py's
`postgres_url`: a fresh database); every read (`analysis_rows`, `counts`, `answered_since`,
`rows`) must give the same answer. Plus: a batch is written whole or not at all, two
serving processes' logs add up in one database, the serving writer writes through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.traffic.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionRecord,
)
from hearth.traffic.prediction_log_writer import PredictionLogWriter
from hearth.traffic.stores import has_prediction_log, open_prediction_log


def entries() -> list[PredictionRecord]:
    """Answers, a failed challenger call, shadow copies, an unmeasured one, two rollouts."""
    out: list[PredictionRecord] = []
    for i in range(12):
        variant = "challenger" if i % 3 == 0 else "champion"
        out.append(
            PredictionRecord(
                transaction_id=f"t{i}", request_id=f"q{i}", variant=variant,
                model_version="2" if variant == "challenger" else "1",
                score=0.1 * (i % 10), decision="approve" if i % 4 else "review",
                latency_ms=1.5 + i, customer_id=f"c{i % 4}",
                rollout_id="r1" if i < 8 else "r2",
                features={"amount": 10.0 + i, "channel": "pos"} if i % 2 else None,
            )
        )  # fmt: skip
    failed = PredictionRecord("t3", "q3", "challenger", "2", None, None, 900.0, ok=False,
                              customer_id="c3", rollout_id="r1")  # fmt: skip
    shadow = PredictionRecord("t5", "q5", "challenger", "2", 0.4, "approve", 2.0,
                              shadow=True, customer_id="c1", rollout_id="r1",
                              features={"amount": 1.0})  # fmt: skip
    unmeasured = PredictionRecord("t13", "q13", "champion", "1", 0.2, "approve", None,
                                  rollout_id="r1")  # fmt: skip
    return [*out, failed, shadow, unmeasured]


LABELS = [("t0", True), ("t1", False), ("t3", False), ("t3", True), ("t9", True), ("nope", True)]


def fill(log: PredictionLog) -> list[bool]:
    batch = entries()
    log.record_entries(batch[:5])
    log.record_entries(batch[5:])
    return [log.feedback(tid, fraud) for tid, fraud in LABELS]


@pytest.fixture
def logs(tmp_path: Path, postgres_url: str) -> Iterator[tuple[PredictionLog, PredictionLog]]:
    sqlite, postgres = (
        PredictionLog(tmp_path / "serving.sqlite"),
        PredictionLog(database_url=postgres_url),
    )
    yield sqlite, postgres
    sqlite.close()
    postgres.close()


def without_at(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "at"} for r in rows]


def test_both_backends_give_the_same_answers(logs: tuple[PredictionLog, PredictionLog]) -> None:
    sqlite, postgres = logs
    assert postgres.backend == "postgres" and sqlite.backend == "sqlite"
    assert fill(sqlite) == fill(postgres) == [True, True, True, True, True, False]

    for rollout_id in (None, "r1", "r2", "r-none"):
        assert postgres.analysis_rows(rollout_id) == sqlite.analysis_rows(rollout_id)
        assert postgres.counts(rollout_id) == sqlite.counts(rollout_id)
    rows = postgres.analysis_rows("r1")
    assert len(rows) == 10 and all(r["transaction_id"] != "t13" for r in rows)  # unmeasured
    relabelled = [r for r in rows if r["transaction_id"] == "t3"]
    assert {r["is_fraud"] for r in relabelled} == {True}  # the newest label wins
    assert postgres.counts("r1")["challenger (shadow)"]["requests"] == 1
    assert postgres.counts("r1")["challenger"]["errors"] == 1

    past, future = datetime.now(UTC) - timedelta(hours=1), datetime.now() + timedelta(hours=1)
    assert postgres.analysis_rows(since=past) == sqlite.analysis_rows(since=past)
    assert postgres.analysis_rows(since=future) == sqlite.analysis_rows(since=future) == []
    since = past.timestamp()
    assert sorted(postgres.answered_since(since)) == sorted(sqlite.answered_since(since))
    assert len(postgres.answered_since(since)) == 6  # answers with features, no shadow

    for table in ("predictions", "feedback"):
        assert without_at(postgres.rows(table)) == without_at(sqlite.rows(table))


def test_a_batch_is_written_whole_or_not_at_all(postgres_url: str) -> None:
    log = PredictionLog(database_url=postgres_url)
    good = entries()[0]
    bad = PredictionRecord("tx", None, "champion", "1", 0.1, "approve", 1.0)  # type: ignore[arg-type]
    with pytest.raises(PredictionLogUnavailable, match="prediction log"):
        log.record_entries([good, bad])
    assert log.rows("predictions") == []
    log.close()
    with pytest.raises(PredictionLogUnavailable, match="closed"):
        log.record_entries([good])


def test_two_serving_processes_logs_add_up_and_the_writer_writes_through(
    settings: Settings, postgres_url: str
) -> None:
    shared = settings.model_copy(update={"database_url": postgres_url})
    assert has_prediction_log(shared) and not has_prediction_log(settings)
    first, second = open_prediction_log(shared), open_prediction_log(shared)
    writer = PredictionLogWriter(lambda: first)
    assert writer.submit(entries()[:6]) is not None
    second.record_entries(entries()[6:12])
    assert writer.flush(10) and writer.written == 6
    writer.close()
    assert second.feedback("t0", True)
    counts = first.counts()
    assert sum(c["requests"] for c in counts.values()) == 12
    assert sum(c["labelled"] for c in counts.values()) == 1
    first.close()
    second.close()
    assert not settings.serving_dir.exists()  # nothing was written to a file
