"""Adaptive batching for the model service: requests that queue during a forward pass go
together into the next one.

There is no fixed window: a request that finds the lane idle is scored at once (no added
latency at low load), and under load every forward pass takes whatever queued while the
previous one ran, up to `max_batch_size` items. The forward pass runs in the lane's own
thread, so the event loop keeps reading requests (and the queue keeps filling) meanwhile.

A request that already waited longer than `shed_after_s` is not scored: its caller (the
gateway, whose timeout is the same setting) has given up on it, and scoring it would only
delay the requests behind it. It fails with `Overloaded` (→ 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hearth.serving.errors import Unavailable
from hearth.serving.schemas import Score, ScoreItem

Scorer = Callable[[list[ScoreItem]], list[Score]]
# A champion lane scores batches this small on the event loop (see `Batcher`): a lone
# request skips two thread hand-offs. A challenger lane never does (drills make it slow).
INLINE_MAX_ITEMS = 8


class Overloaded(Unavailable):
    """A request waited in the batch queue past the point where its caller gives up."""


@dataclass
class _Pending:
    items: Sequence[ScoreItem]
    future: asyncio.Future[list[Score]]
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """One batching lane over `score` (a blocking forward pass); `submit` from the loop.

    `batching=False` scores every request on its own (in a shared thread pool): the
    unbatched service that `hearth bench` compares against.

    `inline_max_items`: a batch of at most this many items is scored on the event loop, as
    the monolith scores its champion: a forward pass on a few rows (~0.2 ms) costs less
    than handing it to the lane's thread and waking the loop when it is done, which is most
    of a lone request's time in the model service. Larger batches (load) use the thread.
    Leave it at 0 for a lane whose model may be slow on purpose (the challenger's drills).
    """

    def __init__(
        self,
        name: str,
        score: Scorer,
        max_batch_size: int = 256,
        shed_after_s: float = 1.0,
        batching: bool = True,
        inline_max_items: int = 0,
    ) -> None:
        self.name, self._score = name, score
        self.max_batch_size, self.shed_after_s, self.batching = (
            max_batch_size, shed_after_s, batching,
        )  # fmt: skip
        self.inline_max_items = inline_max_items
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread per lane: its forward passes run one after another, which is what lets
        # the next batch fill up. A slow challenger lane never holds the champion's thread.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")

    async def submit(self, items: Sequence[ScoreItem]) -> list[Score]:
        """The scores of `items`, in order, from a forward pass shared with other requests."""
        if not items:
            return []
        if not self.batching:
            return await asyncio.to_thread(self._score, list(items))
        loop = asyncio.get_running_loop()
        pending = _Pending(items, loop.create_future())
        self._queue.append(pending)
        self._ensure_worker().set()
        return await pending.future

    def _ensure_worker(self) -> asyncio.Event:
        # Created on first use: both belong to the server's event loop, not the importer's
        # (and again if this lane is used from another loop: tests run one per client).
        loop = asyncio.get_running_loop()
        if (
            self._wakeup is None
            or self._worker is None
            or self._worker.done()
            or self._loop is not loop
        ):
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run(self._wakeup), name=f"batch-{self.name}")
        return self._wakeup

    async def _run(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wakeup.wait()
            wakeup.clear()
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                items = [item for p in batch for item in p.items]
                try:
                    if len(items) <= self.inline_max_items:
                        scores = self._score(items)
                    else:
                        scores = await loop.run_in_executor(self._thread, self._score, items)
                except Exception as exc:  # the whole pass failed: every request in it fails
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                start = 0
                for p in batch:
                    end = start + len(p.items)
                    if not p.future.done():  # a caller that gave up has a cancelled future
                        p.future.set_result(scores[start:end])
                    start = end

    def _take(self) -> list[_Pending]:
        """The next batch: queued requests up to max_batch_size items (at least one request);
        those whose caller gave up, or that waited past shed_after_s, are dropped."""
        now, size = time.monotonic(), 0
        batch: list[_Pending] = []
        while self._queue:
            p = self._queue[0]
            if batch and size + len(p.items) > self.max_batch_size:
                break
            self._queue.popleft()
            if p.future.done():
                continue
            if now - p.queued_at > self.shed_after_s:
                waited = f"{now - p.queued_at:.2f}s"
                p.future.set_exception(Overloaded(f"{self.name}: queued {waited}, shed"))
                continue
            batch.append(p)
            size += len(p.items)
        return batch
