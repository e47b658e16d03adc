"""The live period as traffic: a monolith to send it to, and a replay beside a rollout."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from hearth.config import Settings, project_root
from hearth.demo.drifted_period import DriftPeriod
from hearth.launch.hearth_server import ServerProcess
from hearth.rollout.replay import (
    LabelledTransaction,
    ReplayConfig,
    ReplayReport,
    load_transactions,
    replay,
)
from hearth.serving.schemas import transaction_payload

REPLAY_RATE_PER_S = 200.0
REPLAY_CONCURRENCY = 8
FEEDBACK_DELAY_S = 3.0
SERVER_LOG = "serve-main-job.log"

Say = Callable[[str], None]
T = TypeVar("T")


@contextmanager
def serving(settings: Settings, say: Say) -> Iterator[ServerProcess]:
    """`hearth serve --topology monolith` on a free loopback port, ready; stopped on exit."""
    logs = settings.home_abs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.environment()}
    server = ServerProcess.start("monolith", env, project_root(), logs / SERVER_LOG)
    say(f"serving monolith on {server.url} (log {server.log_path}); waiting for /readyz")
    try:
        began = time.monotonic()
        server.wait_ready()
        say(f"server ready in {time.monotonic() - began:.1f}s")
        yield server
    finally:
        server.stop()
        say("server stopped")


class LiveTraffic:
    """The live period's transactions, handed out in order across rollouts."""

    def __init__(self, txns: Sequence[LabelledTransaction]) -> None:
        self.txns = txns
        self.offset = 0

    @classmethod
    def of(cls, period: DriftPeriod) -> LiveTraffic:
        return cls(load_transactions(period.live_files, transaction_payload).transactions)

    def rest(self) -> Sequence[LabelledTransaction]:
        return self.txns[self.offset :]

    def consume(self, n: int) -> None:
        self.offset = min(len(self.txns), self.offset + n)


def _progress_printer(say: Say, every_s: float = 5.0) -> Callable[[ReplayReport], None]:
    last = [0.0]

    def show(r: ReplayReport) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            variants = ", ".join(f"{k} {v}" for k, v in sorted(r.variants.items()))
            failed = sum(r.failed.values())
            say(
                f"  replay: {r.sent} sent, {r.answered} answered ({variants}), {failed} failed, "
                f"{r.labels_posted} labels, {r.requests_per_s:.0f} req/s"
            )

    return show


def with_live_traffic(
    action: Callable[[], T],
    server: ServerProcess,
    settings: Settings,
    traffic: LiveTraffic,
    say: Say,
) -> tuple[T, ReplayReport]:
    """Run `action` (a rollout) while the rest of the live period is replayed through
    `server`; the replay stops when the action ends. (action's result, the replay)."""
    config = ReplayConfig(
        url=server.url,
        api_key=settings.api_key.get_secret_value(),
        concurrency=REPLAY_CONCURRENCY,
        rate_per_s=REPLAY_RATE_PER_S,
        feedback_delay_s=FEEDBACK_DELAY_S,
    )
    stop = threading.Event()
    result: list[ReplayReport] = []
    txns = traffic.rest()

    def send() -> None:
        result.append(replay(txns, config, stop, _progress_printer(say)))

    sender = threading.Thread(target=send, name="replay", daemon=True)
    sender.start()
    try:
        outcome = action()
    finally:
        stop.set()  # the rollout has ended (or failed): no more traffic for it
        sender.join(timeout=FEEDBACK_DELAY_S + 30)
    report = result[0] if result else ReplayReport(stopped_by="replay thread did not finish")
    traffic.consume(report.sent)
    return outcome, report
