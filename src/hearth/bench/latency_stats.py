"""Figures from samples: latency percentiles, throughput, CPU and memory of a process tree."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from hearth.bench.load import Sample


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted values, nearest-rank; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (not idle, not waiting on
    I/O), everyone's together, including time the hypervisor gave to other machines (steal)."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


class ProcessTree:
    """A server's process and all its descendants (BentoML workers, uvicorn, …), and any
    `also` processes it needs that it did not start (a contender's own redis-server)."""

    def __init__(self, pid: int, also: Sequence[int] = ()) -> None:
        self.root = psutil.Process(pid)
        self.also = [psutil.Process(p) for p in also]

    def _members(self) -> list[psutil.Process]:
        members = []
        for root in (self.root, *self.also):
            try:
                members += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return members

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by every live member."""
        total = 0.0
        for proc in self._members():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def rss_bytes(self) -> int:
        """Resident memory summed over the members (shared pages count once per process)."""
        total = 0
        for proc in self._members():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def count(self) -> int:
        return len(self._members())


@dataclass
class Cell:
    """One contender at one concurrency: the pooled samples of every round."""

    contender: str
    concurrency: int
    latencies_s: list[float]
    statuses: dict[str, int]
    elapsed_s: float
    cpu_s: float
    retry_after: set[str]

    @classmethod
    def empty(cls, contender: str, concurrency: int) -> Cell:
        return cls(contender, concurrency, [], {}, 0.0, 0.0, set())

    def add(self, sample: Sample, cpu_s: float) -> None:
        self.latencies_s += sample.latencies_s
        for status, n in sample.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.elapsed_s += sample.elapsed_s
        self.cpu_s += cpu_s
        self.retry_after |= sample.retry_after

    def summary(self) -> dict[str, object]:
        """JSON-able figures: ms percentiles and the slowest, req/s, errors by status, CPU s
        per 1000 requests, seconds driven."""
        lat = sorted(self.latencies_s)
        requests = sum(self.statuses.values())
        ok = self.statuses.get("200", 0)
        return {
            "contender": self.contender,
            "concurrency": self.concurrency,
            "requests": requests,
            "ok": ok,
            "errors": {s: n for s, n in sorted(self.statuses.items()) if s != "200"},
            "p50_ms": 1000 * percentile(lat, 0.50),
            "p90_ms": 1000 * percentile(lat, 0.90),
            "p99_ms": 1000 * percentile(lat, 0.99),
            "max_ms": 1000 * lat[-1] if lat else math.nan,
            "rps": ok / self.elapsed_s if self.elapsed_s else math.nan,
            "cpu_s_per_1000": 1000 * self.cpu_s / requests if requests else math.nan,
            "retry_after": sorted(self.retry_after),
            "seconds": round(self.elapsed_s, 2),
        }
