"""The model service's batching lanes and the internal hop, in-process (no servers)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hearth.serving.batching import Batcher, Overloaded
from hearth.serving.internal_client import _target
from hearth.serving.schemas import Score, ScoreItem


def _item(i: int) -> ScoreItem:
    return ScoreItem(variant="champion", features={"amount": float(i)})


class SlowScorer:
    """Scores in `delay_s`, remembering each call's size; the score echoes the amount."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s, self.sizes = delay_s, []
        self.threads: set[str] = set()

    def __call__(self, items: list[ScoreItem]) -> list[Score]:
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return [
            Score(variant=i.variant, model_version="1", data_version="d",
                  probability=float(i.features["amount"]))
            for i in items
        ]  # fmt: skip


def test_concurrent_requests_share_forward_passes_and_get_their_own_scores() -> None:
    scorer = SlowScorer()
    lane = Batcher("champion", scorer)

    async def main() -> list[list[Score]]:
        return await asyncio.gather(*(lane.submit([_item(i), _item(-i)]) for i in range(40)))

    answers = asyncio.run(main())
    for i, scores in enumerate(answers):
        assert [s.probability for s in scores] == [float(i), float(-i)]
    assert sum(scorer.sizes) == 80
    assert len(scorer.sizes) < 10  # the first alone, then what queued behind it
    assert len(scorer.threads) == 1


def test_a_lone_request_is_scored_at_once() -> None:
    scorer = SlowScorer(delay_s=0.0)
    lane = Batcher("champion", scorer)
    started = time.perf_counter()
    (score,) = asyncio.run(lane.submit([_item(3)]))
    assert score.probability == 3.0
    assert time.perf_counter() - started < 0.5  # no batching window to wait out
    assert scorer.sizes == [1]


def test_batches_stop_at_max_batch_size() -> None:
    scorer = SlowScorer()
    lane = Batcher("champion", scorer, max_batch_size=8)

    async def main() -> None:
        await asyncio.gather(*(lane.submit([_item(i)]) for i in range(30)))

    asyncio.run(main())
    assert max(scorer.sizes) <= 8 and sum(scorer.sizes) == 30


def test_requests_queued_past_the_shed_limit_fail_as_unavailable() -> None:
    lane = Batcher("champion", SlowScorer(delay_s=0.2), shed_after_s=0.05)

    async def main() -> list[object]:
        first = asyncio.create_task(lane.submit([_item(0)]))
        await asyncio.sleep(0.02)  # the first is in its forward pass: the next ones queue
        later = [lane.submit([_item(i)]) for i in (1, 2)]
        return await asyncio.gather(first, *later, return_exceptions=True)

    first, *rest = asyncio.run(main())
    assert isinstance(first, list)  # scored at once
    assert rest and all(isinstance(r, Overloaded) for r in rest)  # waited 0.2 s > 0.05 s


def test_a_failed_forward_pass_fails_its_requests_only() -> None:
    calls = []

    def flaky(items: list[ScoreItem]) -> list[Score]:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return SlowScorer(0.0)(items)

    lane = Batcher("champion", flaky)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await lane.submit([_item(1)])
        assert (await lane.submit([_item(2)]))[0].probability == 2.0

    asyncio.run(main())


def test_unbatched_lane_scores_each_request_alone() -> None:
    scorer = SlowScorer(delay_s=0.01)
    lane = Batcher("champion", scorer, batching=False)

    async def main() -> None:
        await asyncio.gather(*(lane.submit([_item(i)]) for i in range(5)))

    asyncio.run(main())
    assert scorer.sizes == [1] * 5


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # (Host header, host, port, Unix socket, TLS)
        ("http://features:3000/", ("features:3000", "features", 3000, None, False)),
        ("https://model.example", ("model.example", "model.example", 443, None, True)),
        ("tcp://127.0.0.1:4001", ("127.0.0.1:4001", "127.0.0.1", 4001, None, False)),
        ("file:///tmp/bentoml-uds-x/1.sock",
         ("localhost", "localhost", 0, "/tmp/bentoml-uds-x/1.sock", False)),
    ],
)  # fmt: skip
def test_service_addresses(url: str, expected: tuple[object, ...]) -> None:
    t = _target(url)
    assert (t.host, t.hostname, t.port, t.socket_path, t.ssl is not None) == expected


def test_small_batches_score_on_the_loop_large_ones_in_the_lane_thread() -> None:
    scorer = SlowScorer(delay_s=0.0)
    lane = Batcher("champion", scorer, inline_max_items=2)

    async def main() -> None:
        await lane.submit([_item(1)])
        await lane.submit([_item(i) for i in range(5)])

    asyncio.run(main())
    assert scorer.sizes == [1, 5]
    assert scorer.threads == {"MainThread", *(t for t in scorer.threads if "batch-" in t)}
    assert len(scorer.threads) == 2
