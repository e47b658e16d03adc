"""Traffic replay: a period's transactions sent to a gateway as live traffic, labels later.

`load_transactions` reads raw drops (CSV files of the data contract), keeps the rows the API
would accept (the generator's dirty rows are dropped, as are repeated transaction ids) and
sorts them by timestamp. `replay` then posts them to ``/predict`` in that order:

- per-customer order is kept exactly (each customer's transactions go through one worker,
  because a customer's features depend on the transactions before), the global order
  approximately (several workers run at once: bounded concurrency);
- at most `rate_per_s` requests per second, `max_requests` requests and `max_seconds`
  seconds; a `stop` event ends it early (the rollout it fed has ended);
- each answered prediction's label is posted to ``/feedback`` `feedback_delay_s` later,
  because in reality labels arrive long after the decision;
- loopback only: this is a load generator, and it must never be pointed at someone else.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pandas as pd
from pydantic import ValidationError

from hearth.config import API_KEY_HEADER
from hearth.schema import LABEL, RAW_COLUMNS

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class LabelledTransaction:
    """A transaction as the API takes it, with the label that arrives later."""

    payload: dict[str, Any]
    is_fraud: bool

    @property
    def transaction_id(self) -> str:
        return str(self.payload["transaction_id"])

    @property
    def customer_id(self) -> str:
        return str(self.payload["customer_id"])


@dataclass(frozen=True)
class LoadReport:
    transactions: tuple[LabelledTransaction, ...]
    rows: int
    skipped_invalid: int
    skipped_duplicate: int


Accept = Callable[[dict[str, Any]], dict[str, Any]]
"""The API's check of a request body: the body it accepts, or a ValueError
(`hearth.serving.schemas.transaction_payload`, passed in by the caller: this module is
the gateway's client, not part of it)."""


def _row_payload(row: dict[str, Any], accept: Accept) -> LabelledTransaction | None:
    """The row as a valid request with its label, or None when the API would refuse it."""
    label = str(row.get(LABEL, "")).strip()
    if label not in {"0", "1"}:
        return None
    raw = {k: row.get(k) for k in RAW_COLUMNS if k != LABEL}
    try:
        for key in ("amount", "latitude", "longitude"):
            raw[key] = float(raw[key])  # type: ignore[arg-type]
        payload = accept(raw)
    except (TypeError, ValueError, ValidationError):
        return None
    return LabelledTransaction(payload, label == "1")


def load_transactions(files: Iterable[Path], accept: Accept) -> LoadReport:
    """The valid (by `accept`), first-seen transactions of raw drop `files`, in timestamp
    order."""
    frames = [pd.read_csv(f, dtype=str, keep_default_na=False) for f in sorted(files)]
    if not frames:
        return LoadReport((), 0, 0, 0)
    df = pd.concat(frames, ignore_index=True)
    seen: set[str] = set()
    kept: list[LabelledTransaction] = []
    invalid = duplicate = 0
    for row in df.to_dict("records"):
        txn = _row_payload(row, accept)
        if txn is None:
            invalid += 1
        elif txn.transaction_id in seen:
            duplicate += 1  # a resent row: the bank already scored it
        else:
            seen.add(txn.transaction_id)
            kept.append(txn)
    # Stable sort: same-second transactions keep their file (arrival) order.
    kept.sort(key=lambda t: str(t.payload["timestamp"]))
    return LoadReport(tuple(kept), len(df), invalid, duplicate)


# -- replay ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayConfig:
    """Where to send and how hard."""

    url: str
    api_key: str
    concurrency: int = 8
    rate_per_s: float | None = None
    max_requests: int | None = None
    max_seconds: float | None = None
    feedback_delay_s: float = 5.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        host = urlsplit(self.url).hostname
        if host not in LOOPBACK:
            raise ValueError(f"replay sends to loopback only, not {host!r} ({self.url})")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {self.rate_per_s}")


@dataclass
class ReplayReport:
    """What a replay did: requests by outcome, variants that answered, labels delivered."""

    sent: int = 0
    answered: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    labels_posted: int = 0
    labels_matched: int = 0
    seconds: float = 0.0
    stopped_by: str = "end of data"

    @property
    def requests_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "failed": dict(self.failed),
            "variants": dict(self.variants),
            "labels_posted": self.labels_posted,
            "labels_matched": self.labels_matched,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests_per_s, 1),
            "stopped_by": self.stopped_by,
        }


Progress = Callable[[ReplayReport], None]


class _Labels:
    """Labels waiting for their delivery time (a heap ordered by due time)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, bool]] = []
        self._seq = 0

    def add(self, due: float, transaction_id: str, is_fraud: bool) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, transaction_id, is_fraud))

    def due(self, now: float) -> list[tuple[str, bool]]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, _, tid, label = heapq.heappop(self._heap)
            out.append((tid, label))
        return out

    def __len__(self) -> int:
        return len(self._heap)


class _Replay:
    """One replay run: a dispatcher, per-customer workers, a label poster."""

    def __init__(
        self,
        config: ReplayConfig,
        client: httpx.AsyncClient,
        stop: threading.Event | None,
        progress: Progress | None,
    ) -> None:
        self.config, self.client, self.stop, self.progress = config, client, stop, progress
        self.report = ReplayReport()
        self.labels = _Labels()
        self.sending = True
        self.started = time.monotonic()
        self.headers = {API_KEY_HEADER: config.api_key}

    def _limit_reached(self, sent: int) -> str | None:
        c = self.config
        if self.stop is not None and self.stop.is_set():
            return "stop requested"
        if c.max_requests is not None and sent >= c.max_requests:
            return f"max_requests {c.max_requests}"
        if c.max_seconds is not None and time.monotonic() - self.started >= c.max_seconds:
            return f"max_seconds {c.max_seconds:g}"
        return None

    async def dispatch(
        self, txns: Sequence[LabelledTransaction], queues: list[asyncio.Queue[Any]]
    ) -> None:
        rate = self.config.rate_per_s
        for i, txn in enumerate(txns):
            reason = self._limit_reached(i)
            if reason is not None:
                self.report.stopped_by = reason
                break
            if rate is not None:
                # Pace against the start, not the previous request: no drift from jitter.
                delay = self.started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            # One customer, one queue: its transactions are scored in their order.
            shard = zlib.crc32(txn.customer_id.encode()) % len(queues)
            await queues[shard].put(txn)
            self.report.sent += 1
        for q in queues:
            await q.put(None)

    async def worker(self, queue: asyncio.Queue[Any]) -> None:
        while (txn := await queue.get()) is not None:
            await self._predict(txn)

    async def _predict(self, txn: LabelledTransaction) -> None:
        try:
            response = await self.client.post(
                "/predict", json=txn.payload, headers=self.headers, timeout=self.config.timeout_s
            )
        except httpx.HTTPError as exc:
            self.report.failed[type(exc).__name__] += 1
            return
        if response.status_code != 200:
            self.report.failed[str(response.status_code)] += 1
            return
        self.report.answered += 1
        self.report.variants[str(response.json().get("variant"))] += 1
        due = time.monotonic() + self.config.feedback_delay_s
        self.labels.add(due, txn.transaction_id, txn.is_fraud)

    async def post_labels(self) -> None:
        """Post labels as they fall due; after sending ends, until none is left.

        Due labels go out `concurrency` at a time: posted one by one, they would fall ever
        further behind a replay of hundreds of requests per second.
        """
        last_progress = 0.0
        width = self.config.concurrency
        while self.sending or len(self.labels):
            due = self.labels.due(time.monotonic())
            for start in range(0, len(due), width):
                await asyncio.gather(*(self._feedback(t, y) for t, y in due[start : start + width]))
            now = time.monotonic()
            if self.progress is not None and now - last_progress >= 1.0:
                last_progress = now
                self.report.seconds = now - self.started
                self.progress(self.report)
            await asyncio.sleep(0.05)

    async def _feedback(self, transaction_id: str, is_fraud: bool) -> None:
        body = {"transaction_id": transaction_id, "is_fraud": is_fraud}
        try:
            response = await self.client.post(
                "/feedback", json=body, headers=self.headers, timeout=self.config.timeout_s
            )
        except httpx.HTTPError as exc:
            self.report.failed[f"feedback {type(exc).__name__}"] += 1
            return
        if response.status_code != 200:
            self.report.failed[f"feedback {response.status_code}"] += 1
            return
        self.report.labels_posted += 1
        self.report.labels_matched += bool(response.json().get("matched_prediction"))


async def replay_async(
    txns: Sequence[LabelledTransaction],
    config: ReplayConfig,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """`replay`, for callers that already run an event loop."""
    limits = httpx.Limits(max_connections=config.concurrency + 2)
    async with httpx.AsyncClient(base_url=config.url, limits=limits) as client:
        run = _Replay(config, client, stop, progress)
        queues: list[asyncio.Queue[Any]] = [
            asyncio.Queue(maxsize=4) for _ in range(config.concurrency)
        ]
        labels = asyncio.create_task(run.post_labels())
        await asyncio.gather(run.dispatch(txns, queues), *(run.worker(q) for q in queues))
        run.sending = False
        await labels
        run.report.seconds = time.monotonic() - run.started
        if progress is not None:
            progress(run.report)
        return run.report


def replay(
    txns: Sequence[LabelledTransaction],
    config: ReplayConfig,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Send `txns` to the gateway at `config.url` as live traffic; labels follow later.

    Returns when the data, `max_requests` or `max_seconds` is used up or `stop` is set, and
    every label due for an answered prediction has been posted (at most
    `feedback_delay_s` after the last answer).
    """
    return asyncio.run(replay_async(txns, config, stop, progress))
