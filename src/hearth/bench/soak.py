"""The soak test: the monolith at a constant 80 % of its measured capacity for ten minutes.

It starts `hearth serve --topology monolith` on loopback (a fresh home, the project's
registry and data, as `hearth bench` does), measures its capacity with a short closed-loop
run, then drives it open loop: request *i* is sent at ``start + i / rate`` whether or not
the earlier ones have answered, each one a new transaction (a fresh id, the timestamp of its
send time, the fields of a real transaction from ``data/processed``). Latency counts from
the scheduled send time, so a server that falls behind shows it (no coordinated omission).

Per window (a minute in the full run) it reports p50/p99, errors and the serving process
tree's RSS; the verdict needs zero errors, the last window's p99 within `max_p99_ratio` of
the first's, and RSS growth from the end of the first window to the end of the last under
`max_rss_growth`. The report (`soak.md`, `soak.json`, `soak.png`) goes to the reports dir.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from hearth.bench.contenders import Server, build_server
from hearth.bench.latency_stats import percentile
from hearth.bench.load import REQUEST_TIMEOUT_S, Connection, Endpoint, attempt, drive
from hearth.bench.run import machine
from hearth.bench.workload import DataPace, data_pace, load_workload
from hearth.config import Settings
from hearth.launch.launcher import stop_all
from hearth.schema import TIMESTAMP_FORMAT

# How the stream dates its transactions (TransactionStream): the population's own pace, or
# the send time.
CLOCKS = ("data", "wall")


@dataclass(frozen=True)
class SoakConfig:
    """How long, how hard, and what passes."""

    duration_s: float = 600.0
    fraction: float = 0.8  # of the measured capacity
    window_s: float = 60.0  # the per-window figures ("per minute")
    capacity_s: float = 20.0  # the closed-loop run: a first estimate of the capacity
    capacity_concurrency: int = 16
    # The capacity itself: open-loop steps at these fractions of the closed-loop estimate,
    # `probe_s` each, ascending; the highest step the monolith kept up with (see `kept_up`).
    probe_fractions: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    probe_s: float = 15.0
    warmup_requests: int = 300  # before the capacity run: first calls allocate
    rate: float | None = None  # a fixed rate (req/s) instead of fraction × capacity
    # Open loop: connections it may open when answers lag, as a client's pool (see open_loop).
    max_connections: int = 64
    preconnect: int = 16  # open loop: connections opened before the clock starts
    rss_every_s: float = 5.0
    pool: int = 5000  # real transactions the stream cycles through (fresh id and time each)
    max_p99_ratio: float = 1.5  # last window's p99 / first window's
    max_rss_growth: float = 0.10  # end of the last window vs end of the first
    ready_timeout_s: float = 300.0
    clock: str = "data"  # see CLOCKS and TransactionStream

    @classmethod
    def short(cls, duration_s: float = 60.0) -> SoakConfig:
        """The in-suite version: two windows (halves) and a shorter capacity run."""
        return cls(duration_s=duration_s, window_s=duration_s / 2, capacity_s=6.0,
                   probe_fractions=(0.6, 0.8, 1.0), probe_s=4.0, warmup_requests=200,
                   pool=2000)  # fmt: skip


class TransactionStream:
    """Each body a new transaction: a real one's fields, id ``soak-<run>-<n>``, and a timestamp
    from the stream's clock (see `CLOCKS`).

    ``data`` (the default) replays the generated population's traffic at its own pace:
    transaction *n* is dated ``pace.gap_s`` after transaction *n-1*, the first one right
    after the data's last, whatever the request rate. Each customer then transacts as often
    as in the data, so the history its state keeps (30 days) stays the length it has after
    materialisation, as under real traffic, where a customer's history is bounded by its own
    pace and the horizon, not by the server's request rate. A date never passes the wall
    clock (the server refuses the future).

    ``wall`` dates each transaction at its send time: at hundreds of requests a second over
    a few thousand customers, each one transacts every few seconds and its history grows
    through the whole run (about 200 entries per customer in ten minutes): a stress of the
    online store's per-customer cost, not the traffic of a real population.
    """

    def __init__(
        self, transactions: list[dict[str, Any]], clock: str = "wall", pace: DataPace | None = None
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock {clock!r}: expected one of {', '.join(CLOCKS)}")
        if clock == "data" and pace is None:
            raise ValueError("the data clock needs the data's pace (workload.data_pace)")
        self.transactions = transactions
        self.clock, self.pace = clock, pace
        self.run = uuid.uuid4().hex[:8]
        self.sent = 0

    def body(self, when: float) -> bytes:
        """The next transaction; `when` is its send time (the wall clock's date for it)."""
        txn = dict(self.transactions[self.sent % len(self.transactions)])
        txn["transaction_id"] = f"soak-{self.run}-{self.sent}"
        if self.pace is not None and self.clock == "data":
            when = min(when, self.pace.end_s + (self.sent + 1) * self.pace.gap_s)
        txn["timestamp"] = datetime.fromtimestamp(when, UTC).strftime(TIMESTAMP_FORMAT)
        self.sent += 1
        return json.dumps(txn).encode()

    def unsend(self, n: int) -> None:
        """Forget the last `n` bodies (made but never sent): their ids and dates come again."""
        self.sent -= max(0, min(n, self.sent))


@dataclass
class Window:
    """What the requests scheduled in one window saw."""

    index: int
    latencies_s: list[float] = field(default_factory=list)
    # How late the load generator started each request (it shares the machine); waiting for
    # a free connection is not in it (that is the server's backlog, in the latency).
    lags_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    rss_mib: float = math.nan  # the serving tree's RSS at the window's end (by the clock)
    server_cores: float = math.nan  # the serving tree's CPU seconds per second in the window

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "200")

    def summary(self, window_s: float) -> dict[str, Any]:
        lat, lag = sorted(self.latencies_s), sorted(self.lags_s)
        ms = lambda seq, q: round(percentile(seq, q) * 1000, 2)  # noqa: E731
        return {
            "window": self.index + 1,
            "requests": sum(self.statuses.values()),
            "rps": round(sum(self.statuses.values()) / window_s, 1),
            "p50_ms": ms(lat, 0.50),
            "p99_ms": ms(lat, 0.99),
            "max_ms": ms(lat, 1.0),
            "client_lag_p99_ms": ms(lag, 0.99),
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "rss_mib": round(self.rss_mib, 1),
            "server_cores": round(self.server_cores, 2),
        }


def _rss_mib(server: Server) -> float:
    return server.tree().rss_bytes() / 2**20


# uvicorn closes a keep-alive connection idle for 5 s; one idle for longer than this is
# closed here instead of being reused (a request written to a connection the server has
# just closed would fail without the server ever seeing it).
MAX_IDLE_S = 2.0


async def _reuse(idle: list[tuple[Connection, float]]) -> Connection | None:
    """The most recently used idle connection still fresh; stale ones are closed."""
    while idle:
        conn, last = idle.pop()
        if time.perf_counter() - last < MAX_IDLE_S:
            return conn
        await conn.close()
    return None


async def open_loop(
    stream: TransactionStream,
    endpoint: Endpoint,
    server: Server,
    rate: float,
    config: SoakConfig,
    say: Callable[[str], None],
) -> tuple[list[Window], list[tuple[float, float]]]:
    """Send `rate` requests a second for `config.duration_s`; the windows and RSS samples.

    Connections come from a pool of at most `config.max_connections`, as a real client's
    would (64; httpx's default pool is 100): at a rate the server sustains, Little's law
    needs rate × latency of them (~300 req/s × 50 ms ≈ 15). It used to open up to 256 once
    answers lagged, which only moved the backlog into the server (256 requests in progress
    at once, each holding memory and a slot in its thread pools, measured ~20 % more CPU
    per request than at c=16) where the client cannot see or bound it. A request waiting
    for a free connection still counts its wait in its latency (from its scheduled time).
    """
    n_windows = max(1, math.ceil(config.duration_s / config.window_s))
    windows = [Window(i) for i in range(n_windows)]
    pending = [0] * n_windows
    closed = [asyncio.Event() for _ in range(n_windows)]  # every request of the window ended
    reported = [asyncio.Event() for _ in range(n_windows)]  # its line printed (in order)
    sampled = [asyncio.Event() for _ in range(n_windows)]  # its RSS and CPU measured
    idle: list[tuple[Connection, float]] = []  # with when each was last used
    slots = asyncio.Semaphore(config.max_connections)
    rss: list[tuple[float, float]] = []
    t0, wall0 = time.perf_counter(), time.time()  # reset when the connections are open

    async def one(scheduled: float, w: Window) -> None:
        """One request; "timeout" when it has no answer REQUEST_TIMEOUT_S after its
        scheduled time (waiting for a free connection included)."""

        def left() -> float:
            return max(0.001, REQUEST_TIMEOUT_S - (time.perf_counter() - scheduled))

        w.lags_s.append(time.perf_counter() - scheduled)  # the load generator's own lateness
        try:
            await asyncio.wait_for(slots.acquire(), left())
        except TimeoutError:
            w.statuses["timeout"] = w.statuses.get("timeout", 0) + 1
            return
        try:
            conn = await _reuse(idle) or Connection(endpoint.host, endpoint.port)
            raw = endpoint.request(stream.body(wall0 + scheduled - t0))
            try:
                status, response = await asyncio.wait_for(attempt(conn, raw), left())
            except TimeoutError:  # the connection closed itself (Connection.send)
                status, response = "timeout", None
            if response is not None:
                w.latencies_s.append(time.perf_counter() - scheduled)
            w.statuses[status] = w.statuses.get(status, 0) + 1
            idle.append((conn, time.perf_counter()))  # a failed one reconnects on next send
        finally:
            slots.release()

    async def at_boundaries() -> None:
        """RSS and CPU of the serving tree at each window's end (by the clock), and RSS every
        `rss_every_s` in between."""
        cpu = server.tree().cpu_s()
        for k in range(n_windows):
            end = t0 + min(config.duration_s, (k + 1) * config.window_s)
            while (now := time.perf_counter()) < end - 1e-3:
                await asyncio.sleep(min(config.rss_every_s, end - now))
                rss.append((time.perf_counter() - t0, _rss_mib(server)))
            windows[k].rss_mib = rss[-1][1]
            cpu, before = server.tree().cpu_s(), cpu
            span = time.perf_counter() - t0 - (k * config.window_s)
            windows[k].server_cores = (cpu - before) / span if span > 0 else math.nan
            sampled[k].set()

    async def report(k: int) -> None:
        await closed[k].wait()
        await sampled[k].wait()
        if k:
            await reported[k - 1].wait()
        s = windows[k].summary(config.window_s)
        say(
            f"  window {k + 1:>2}/{n_windows}  {s['rps']:6.0f} req/s  p50 {s['p50_ms']:7.2f} ms"
            f"  p99 {s['p99_ms']:7.2f} ms  errors {s['errors']}  RSS {s['rss_mib']:6.0f} MiB"
            f"  server CPU {s['server_cores']:.2f} cores"
        )
        reported[k].set()

    def done(k: int) -> Callable[[asyncio.Task[None]], None]:
        def callback(_: asyncio.Task[None]) -> None:
            pending[k] -= 1
            if pending[k] == 0 and k < current:
                closed[k].set()

        return callback

    # Connected before the clock starts, as a long-lived client would be (fresh: see _reuse).
    for conn in [Connection(endpoint.host, endpoint.port) for _ in range(config.preconnect)]:
        await conn.connect()
        idle.append((conn, time.perf_counter()))
    rss.append((0.0, _rss_mib(server)))
    t0, wall0 = time.perf_counter(), time.time()
    sampler = asyncio.create_task(at_boundaries())
    reporters, tasks = [], set()
    current = 0
    total = int(config.duration_s * rate)
    for i in range(total):
        scheduled = t0 + i / rate
        k = min(n_windows - 1, int((i / rate) // config.window_s))
        while k > current:  # the previous window has all its requests: close when answered
            current += 1
            if pending[current - 1] == 0:
                closed[current - 1].set()
            reporters.append(asyncio.create_task(report(current - 1)))
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending[k] += 1
        task = asyncio.create_task(one(scheduled, windows[k]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(done(k))
    current = n_windows
    for k in range(n_windows):
        if pending[k] == 0:
            closed[k].set()
    reporters += [asyncio.create_task(report(k)) for k in range(len(reporters), n_windows)]
    try:
        # Every request ends by REQUEST_TIMEOUT_S after its scheduled time (see `one`).
        await asyncio.wait_for(asyncio.gather(*reporters), REQUEST_TIMEOUT_S + 15)
    finally:
        sampler.cancel()
        for task in list(tasks):
            task.cancel()
        for conn, _ in idle:
            await conn.close()
    return windows, sorted(rss)


def closed_loop(stream: TransactionStream, server: Server, config: SoakConfig) -> dict[str, Any]:
    """Closed loop at `capacity_concurrency` for `capacity_s` (after a warm-up): the requests
    a second it answered with 200. An upper bound of what it sustains open loop, not that."""
    now, c, endpoint = time.time(), config.capacity_concurrency, server.endpoint
    warm = [stream.body(now) for _ in range(config.warmup_requests)]
    asyncio.run(drive(endpoint, warm, c, 60.0))
    # More bodies than the monolith can answer in capacity_s: the run ends on the clock.
    bodies = [stream.body(now) for _ in range(int(config.capacity_s * 3000))]
    cpu0 = server.tree().cpu_s()
    sample = asyncio.run(drive(endpoint, bodies, c, config.capacity_s))
    stream.unsend(len(bodies) - sample.requests)  # the data clock goes on from the last sent
    cores = (server.tree().cpu_s() - cpu0) / sample.elapsed_s if sample.elapsed_s else math.nan
    ok = sample.statuses.get("200", 0)
    lat = sorted(sample.latencies_s)
    return {
        "rps": round(ok / sample.elapsed_s, 1) if sample.elapsed_s else 0.0,
        "concurrency": c,
        "seconds": round(sample.elapsed_s, 1),
        "requests": sample.requests,
        "errors": sample.requests - ok,
        "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
        "server_cores": round(cores, 2),
    }


def kept_up(quarters: list[dict[str, Any]]) -> bool:
    """Whether an open-loop step (its four quarters' summaries) was sustained: every request
    answered 200, and no backlog built up: the last quarter's p50 at most twice the first's
    plus 100 ms. A rate r above what the server sustains (μ) grows the latency by
    (r - μ) / r per second: at 5 % over, 0.75 s in a 15 s step; noise on a quiet machine
    moves a quarter's p50 by tens of ms."""
    first, last = quarters[0], quarters[-1]
    errors = sum(q["errors"] for q in quarters)
    return errors == 0 and last["p50_ms"] <= 2 * first["p50_ms"] + 100


def measure_capacity(
    stream: TransactionStream, server: Server, config: SoakConfig, say: Callable[[str], None]
) -> dict[str, Any]:
    """The highest rate the monolith sustains open loop, as the soak then loads it.

    A closed loop at c=16 measures a server that always has 16 requests queued: every
    forward pass is a full batch and every wake-up of its event loop finds work. The soak's
    open loop sends one request every 1/rate s on its own, so the same server does more per
    request (measured: ~8 % more CPU per request on the 2-core machine), and at 80 % of the
    closed-loop figure it queued from its first minute (#11). So the closed loop only gives
    the first estimate; the capacity is the highest of the open-loop steps at
    `probe_fractions` of it (ascending, `probe_s` each, stopping at the first that was not
    `kept_up`). When none is, the lowest step's rate is used and the report says so.
    """
    closed = closed_loop(stream, server, config)
    say(
        f"  closed loop: {closed['rps']:.0f} req/s at c={closed['concurrency']} (p50 "
        f"{closed['p50_ms']} ms, p99 {closed['p99_ms']} ms, errors {closed['errors']}, server "
        f"CPU {closed['server_cores']:.2f} cores)"
    )
    probes: list[dict[str, Any]] = []
    step = replace(config, duration_s=config.probe_s, window_s=config.probe_s / 4)
    for fraction in config.probe_fractions:
        rate = round(fraction * closed["rps"], 1)
        if rate <= 0:
            break
        windows, _ = asyncio.run(open_loop(stream, server.endpoint, server, rate, step, _quiet))
        quarters = [w.summary(step.window_s) for w in windows]
        held = kept_up(quarters)
        probes.append({
            "rate_rps": rate, "kept_up": held,
            "p50_first_ms": quarters[0]["p50_ms"], "p50_last_ms": quarters[-1]["p50_ms"],
            "p99_ms": max(q["p99_ms"] for q in quarters),
            "errors": sum(q["errors"] for q in quarters),
        })  # fmt: skip
        say(
            f"  open loop {rate:.0f} req/s for {step.duration_s:.0f} s: p50 "
            f"{quarters[0]['p50_ms']} → {quarters[-1]['p50_ms']} ms, errors "
            f"{probes[-1]['errors']}: {'kept up' if held else 'fell behind'}"
        )
        if not held:
            break
    if not probes:  # no steps asked for (`hearth soak --rate`): the closed loop's figure
        return {"rps": closed["rps"], "method": "closed loop", "kept_up": True,
                "closed_loop": closed, "probes": probes}  # fmt: skip
    held_rates = [p["rate_rps"] for p in probes if p["kept_up"]]
    rps = max(held_rates) if held_rates else probes[0]["rate_rps"]
    say(f"  capacity: {rps:.0f} req/s open loop" + ("" if held_rates else " (no step kept up)"))
    return {"rps": rps, "method": "open loop", "kept_up": bool(held_rates),
            "closed_loop": closed, "probes": probes}  # fmt: skip


def clock_summary(clock: str, pace: DataPace | None, rate: float) -> dict[str, Any]:
    """How the soak dated its transactions, for the report."""
    if clock != "data" or pace is None:
        return {"clock": clock}
    return {
        "clock": clock,
        "data_transactions": pace.transactions,
        "gap_s": round(pace.gap_s, 2),
        "starts": datetime.fromtimestamp(pace.end_s, UTC).isoformat(timespec="seconds"),
        "speedup": round(rate * pace.gap_s),  # simulated seconds per second of the soak
    }


def _quiet(_: str) -> None:
    """The probes' per-window lines are not printed (their summary is)."""


def criteria(windows: list[dict[str, Any]], config: SoakConfig) -> list[dict[str, Any]]:
    """The verdict's criteria: each with its value, its limit and whether it is met."""
    first, last = windows[0], windows[-1]
    errors = sum(w["errors"] for w in windows)
    p99_ratio = last["p99_ms"] / first["p99_ms"] if first["p99_ms"] else math.nan
    growth = last["rss_mib"] / first["rss_mib"] - 1 if first["rss_mib"] else math.nan
    return [
        {"criterion": "errors", "value": errors, "limit": "= 0", "met": errors == 0},
        {"criterion": "p99 last window / first window", "value": round(p99_ratio, 3),
         "limit": f"≤ {config.max_p99_ratio}", "met": p99_ratio <= config.max_p99_ratio},
        {"criterion": "RSS growth, end of first window → end of last", "value": round(growth, 4),
         "limit": f"< {config.max_rss_growth:.0%}", "met": growth < config.max_rss_growth},
    ]  # fmt: skip


def run_soak(
    config: SoakConfig, source: Settings, root: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Start the monolith, measure its capacity, soak it; the report's data."""
    created = datetime.now(UTC).isoformat(timespec="seconds")
    before = machine()
    pool = load_workload(source.processed_dir, config.pool).transactions
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-soak-") as tmp:
        server = build_server("monolith", source, root, Path(tmp))
        server.start()
        try:
            server.wait_ready(config.ready_timeout_s)
            say(f"  monolith ready in {time.monotonic() - started:.1f}s on :{server.port}")
            pace = data_pace(source.processed_dir) if config.clock == "data" else None
            stream, endpoint = TransactionStream(pool, config.clock, pace), server.endpoint
            capacity = measure_capacity(stream, server, config, say)
            rate = config.rate or config.fraction * capacity["rps"]
            if rate <= 0:
                raise RuntimeError(f"the monolith answered no request: {server.log_tail()}")
            how = "as asked" if config.rate else f"{config.fraction:.0%} of capacity"
            say(f"  soak: {rate:.0f} req/s ({how}) open loop for {config.duration_s:.0f} s")
            windows, rss = asyncio.run(open_loop(stream, endpoint, server, rate, config, say))
            processes = server.tree().count()
        finally:
            stop_all([server])
    rows = [w.summary(config.window_s) for w in windows]
    checks = criteria(rows, config)
    return {
        "created": created,
        "machine": before,
        "load_average_after": [round(x, 2) for x in psutil.getloadavg()],
        "config": asdict(config),
        "capacity": capacity,
        "rate_rps": round(rate, 1),
        "clock": clock_summary(config.clock, pace, rate),
        "serving_processes": processes,
        "windows": rows,
        "rss_series": [[round(t, 1), round(m, 1)] for t, m in rss],
        "rss_start_mib": rss[0][1] if rss else math.nan,
        "criteria": checks,
        "passed": all(c["met"] for c in checks),
        "seconds": round(time.monotonic() - started, 1),
    }
