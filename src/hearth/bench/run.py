"""Run the benchmark: start the contenders, warm them up, drive them interleaved, collect.

At each concurrency the contenders take turns in rounds (the order rotating each round), so
a burst of noise from other work on the machine falls on all of them alike; each cell pools
its rounds.
"""

from __future__ import annotations

import asyncio
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from hearth.bench import wrk
from hearth.bench.contenders import (
    BASELINE,
    SPECS,
    HearthServer,
    InProcessModel,
    Server,
    build_server,
    scorer_dir,
    spec_of,
)
from hearth.bench.latency_stats import Cell, machine_busy_s
from hearth.bench.load import Endpoint, drive
from hearth.bench.rollback import TOPOLOGIES, Rollbacks
from hearth.bench.workload import Workload, load_workload
from hearth.config import Settings
from hearth.launch.launcher import stop_all
from hearth.params import load_params

ALL = tuple(SPECS)
QUICK = ("model", "echo", "mlflow", "monolith", "microservices", "monolith-redis",
         "model-batched", "model-unbatched")  # fmt: skip
# Contenders that need a server from a Debian package: left out, with a note, without it.
_NEEDS_BINARY = {"monolith-redis": "redis-server"}
# The model-service contenders run on the monolith's home: it must start first.
_NEEDS_MONOLITH = {"model", "model-batched", "model-unbatched"}


@dataclass(frozen=True)
class BenchConfig:
    """What to run: contenders, concurrency levels, requests per cell, rounds."""

    contenders: tuple[str, ...] = ALL
    levels: tuple[int, ...] = (1, 8, 32, 128)
    requests: int = 1500  # per contender and level, over all rounds
    rounds: int = 3
    warmup: int = 100  # per contender and level, before the rounds
    max_cell_s: float = 60.0  # a round stops sending after this many seconds
    ready_timeout_s: float = 300.0
    # The in-process forward pass has no concurrency: it runs at c=1 only.
    model_requests: int = 2000
    # Another checkout whose Hearth contenders run too, as "<name>@base" (before/after).
    baseline: Path | None = None
    # Hearth topologies (among the contenders) on which `hearth rollback` is timed under load.
    rollback: tuple[str, ...] = TOPOLOGIES
    # Cells long enough for tails to show, at these concurrencies: (c, requests, seconds); such
    # a cell ends at the first of its requests or its seconds, counted over its rounds.
    # At c=1, 10 000 requests are what the tail target is judged over: 40 s lets a contender
    # as slow as 250 req/s reach them.
    long_cells: tuple[tuple[int, int, float], ...] = ((1, 10_000, 40.0), (32, 20_000, 20.0))
    # The cross-check with wrk (`hearth.bench.wrk`): every server contender, one cell at this
    # concurrency for this long (0 s: none).
    wrk_concurrency: int = 1
    wrk_s: float = 10.0
    # One worker against two under wrk at c=32 (the workers' target): this many rounds of
    # `wrk_s` each, alternating which goes first, so the machine's drift falls on both.
    workers_rounds: int = 5

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(QUICK, (1, 32), requests=240, rounds=2, warmup=40, max_cell_s=15.0,
                   model_requests=500, rollback=("monolith",), long_cells=(),
                   wrk_s=1.0, workers_rounds=1)  # fmt: skip

    def cell(self, level: int) -> tuple[int, float]:
        """Requests of the cell at `level` (over all rounds) and the seconds a round may
        take: it ends at whichever comes first."""
        for c, requests, seconds in self.long_cells:
            if c == level:
                return requests, seconds / self.rounds
        return self.requests, self.max_cell_s

    def per_round(self, level: int) -> int:
        """Requests of one round at `level`: the cell's requests over its rounds, rounded up
        (10 000 in 3 rounds is 3 334 each, not 9 999 in all)."""
        return max(1, -(-self.cell(level)[0] // self.rounds))

    def choose(
        self,
        contenders: Sequence[str] | None = None,
        levels: Sequence[int] | None = None,
        requests: int | None = None,
        baseline: Path | None = None,
        rollback: bool = True,
        wrk_s: float | None = None,
        wrk_concurrency: int | None = None,
    ) -> BenchConfig:
        """This config narrowed to what `hearth bench` was asked for; None (or empty) keeps
        this config's value, `rollback=False` times no rollback."""
        changes: dict[str, Any] = {}
        if contenders:
            changes["contenders"] = tuple(contenders)
        if levels:
            changes["levels"] = tuple(sorted(set(levels)))
        if requests:  # every cell, the long ones too
            changes["requests"] = requests
            changes["long_cells"] = tuple((c, requests, s) for c, _, s in self.long_cells)
        if baseline:
            changes["baseline"] = baseline.resolve()
        if not rollback:
            changes["rollback"] = ()
        if wrk_s is not None:
            changes["wrk_s"] = wrk_s
        if wrk_concurrency is not None:
            changes["wrk_concurrency"] = wrk_concurrency
        return replace(self, **changes)


@dataclass
class Progress:
    """Where progress lines go (the CLI prints them; tests collect them)."""

    say: Callable[[str], None] = print
    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)


def machine() -> dict[str, Any]:
    """The machine the figures belong to."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }


def run_bench(config: BenchConfig, source: Settings, root: Path, say: Progress) -> dict[str, Any]:
    """Measure every contender of `config`; the report's data (see `hearth.bench.bench_report`)."""
    names, left_out = _runnable(_ordered(config.contenders))
    for line in left_out:
        say(line)
    if config.baseline is not None:
        names += [
            f"{n}{BASELINE}" for n in names if SPECS[n].group in ("hearth", "store", "batching")
        ]
    per_level = [config.warmup + config.per_round(level) * config.rounds for level in config.levels]
    workload = load_workload(source.processed_dir, sum(per_level))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as tmp:
        measured = _run_all(names, source, root, Path(tmp), workload, config, say)
    cells, memory, counted, cross_check, rollback = measured
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {**asdict(config), "baseline": str(config.baseline or "")},
        "contenders": [asdict(spec_of(n)) for n in names],
        "results": [c.summary() for c in cells],
        "memory_mib": memory,
        "metrics_counted": counted,
        "cross_check": cross_check,
        "limits": overload_limits(source),
        "rollback": rollback,
        "notes": left_out + _notes(config),
        "workload": {
            "transactions": len(workload),
            "customers": len({t["customer_id"] for t in workload.transactions}),
            "step_s": round(workload.step_for(range(len(workload))), 2),
        },
        "seconds": round(time.monotonic() - started, 1),
    }


def _run_all(
    names: list[str],
    source: Settings,
    root: Path,
    work: Path,
    workload: Workload,
    config: BenchConfig,
    say: Progress,
) -> tuple[list[Cell], dict[str, float], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Throughput first (then wrk's cross-check, once /metrics is read), rollback after; the
    rollback servers start with the others (start-up is mostly imports) and are ready before
    any round, so they disturb none."""
    topologies = [t for t in config.rollback if t in names]
    rollbacks = Rollbacks.prepare(topologies, source, root, work)
    rollbacks.start()
    try:
        servers = _start_all(names, source, root, work, config, say)
        try:
            rollbacks.wait_ready(config.ready_timeout_s, say)
            cells, memory, answered = _measure(names, servers, workload, work, config, say)
            counted = _metrics_counted(servers, answered)
            cross_check = _cross_check(servers, workload, work, config, say)
        finally:
            stop_all(servers.values())
        if rollbacks.rigs:
            say("rollback under load:")
        model_name = load_params(source.params_file).registry.model_name
        rollback = rollbacks.measure(model_name, workload.bodies("transaction"), say)
    finally:
        rollbacks.stop()
    return cells, memory, counted, cross_check, rollback


def _cross_check(
    servers: dict[str, Server], workload: Workload, work: Path, config: BenchConfig, say: Progress
) -> dict[str, Any]:
    """Each server once more, driven by wrk (`hearth.bench.wrk`), with its CPU per request."""
    c, seconds = config.wrk_concurrency, config.wrk_s
    if seconds <= 0:
        return {"skipped": "not asked for"}
    if not wrk.available():
        return {"skipped": "wrk is not installed (Debian: apt-get install wrk; make system-deps)"}
    say(f"cross-check with wrk at c={c}, {seconds:g} s each:")
    start = wrk.after(workload.transactions)
    rows = [_wrk_row(n, s, workload, start, c, seconds, work, say) for n, s in servers.items()]
    cross: dict[str, Any] = {"tool": "wrk", "concurrency": c, "seconds": seconds, "rows": rows}
    pair = [n for n in ("monolith", "monolith-w2") if n in servers]
    if len(pair) == 2 and c != wrk.WORKERS_CONCURRENCY:
        # The workers' target is at c=32; the bench's own client shares the 2 cores with
        # them, so the ratio is measured again with the lighter external generator, dated
        # after everything the rows above sent, and with the other contenders stopped (idle
        # servers still poll and sweep: a share of the cores that two workers need both of
        # and one worker does not miss). Every measurement that needs them is done.
        say("stopping the other contenders for it")
        stop_all(s for n, s in servers.items() if n not in pair)
        cross["workers"] = _workers_rounds(
            pair, servers, workload, wrk.after_rows(rows), work, config, say
        )
    return cross


def _workers_rounds(
    pair: Sequence[str],
    servers: dict[str, Server],
    workload: Workload,
    start: datetime,
    work: Path,
    config: BenchConfig,
    say: Progress,
) -> dict[str, Any]:
    """One worker and two under wrk at c=32 in `config.workers_rounds` rounds, the order
    alternating (a slow spell of the machine falls on both); each round's transactions are
    new (their own id prefix) and dated after the last round's."""
    c, seconds, n = wrk.WORKERS_CONCURRENCY, config.wrk_s, max(1, config.workers_rounds)
    say(f"one worker and two under wrk at c={c}: {n} round(s) of {seconds:g} s each, alternating:")
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(n):
        by: dict[str, dict[str, Any]] = {}
        for name in pair if r % 2 == 0 else pair[::-1]:
            prefix = f"wrk{c}r{r}-"
            by[name] = _wrk_row(
                name, servers[name], workload, start, c, seconds, work, say, prefix=prefix
            )
        rounds.append(by)
        start = wrk.after_rows(list(by.values()))
    return wrk.rounds_run(c, seconds, pair, rounds)


def _wrk_row(
    name: str,
    server: Server,
    workload: Workload,
    start: datetime,
    c: int,
    seconds: float,
    work: Path,
    say: Progress,
    prefix: str = "",
) -> dict[str, Any]:
    """One contender driven by wrk at `c` for `seconds`, with its CPU per request; its
    transaction ids start with `prefix` (default ``wrk<c>-``): no two runs on one server may
    share one, or the server would answer replays."""
    kind = spec_of(name).body
    picks = wrk.templates(workload.transactions, workload.bodies(kind), kind)
    step = workload.step_for(wrk.chosen(len(workload)))
    script = wrk.lua_script(
        server.endpoint, picks, kind == "transaction", start, prefix or f"wrk{c}-", step_s=step
    )
    tree = server.tree()
    cpu0, busy0 = tree.cpu_s(), machine_busy_s()
    row = wrk.run(server.endpoint, script, c, seconds, work)
    cpu, busy = tree.cpu_s() - cpu0, machine_busy_s() - busy0
    others = max(0.0, busy - cpu - row["wrk_cpu_s"]) / max(row["seconds"], 1e-9)
    row |= {
        "contender": name,
        "cpu_s_per_1000": 1000 * cpu / max(1, row["requests"]),
        "step_s": round(step, 3),
        "others_cores": round(others, 3),  # the rest of the machine, meanwhile
    }
    say(
        f"  {name:<16} c={c:<3} p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
        f"max {row['max_ms']:7.1f} ms  {row['rps']:7.0f} req/s  errors {row['errors'] or 0}"
    )
    return row


def _metrics_counted(servers: dict[str, Server], answered: dict[str, int]) -> dict[str, Any]:
    """Per Hearth contender: the predictions its /metrics counted per variant (every worker
    together) and the 200s the load generator got, which they must equal."""
    out: dict[str, Any] = {}
    for name, server in servers.items():
        if isinstance(server, HearthServer):
            counted = server.predictions_counted()
            out[name] = {
                "answered": answered.get(name, 0),
                "counted": counted,
                "exact": sum(counted.values()) == answered.get(name, 0),
            }
    return out


def overload_limits(settings: Settings) -> dict[str, Any]:
    """Where Hearth stops queueing and answers 503 with Retry-After instead."""
    return {
        "model_timeout_s": settings.model_timeout_s,
        "max_in_flight": settings.max_in_flight,
        "lines": [
            f"Each gateway (and monolith) process works on at most HEARTH_MAX_IN_FLIGHT = "
            f"{settings.max_in_flight} requests at once; the next one gets 503 + Retry-After: 1 "
            "at once, so overload is refused rather than queued without bound. The levels "
            "measured here stay below it, which is why they show no errors.",
            f"Below that, the gateway answers 503 + Retry-After when the model or features "
            f"service takes longer than HEARTH_MODEL_TIMEOUT_S = {settings.model_timeout_s:g} s, "
            "or is down.",
            "The model service's batching queue sheds (503) a request that has waited past "
            f"{settings.model_timeout_s:g} s (hearth.serving.batching: the same "
            "HEARTH_MODEL_TIMEOUT_S), i.e. only once the gateway has given up anyway.",
            "BentoML's own request timeout is 30 s (traffic.timeout on every service).",
        ],
    }


def _notes(config: BenchConfig) -> list[str]:
    notes: list[str] = []
    if config.baseline is not None:
        notes.append(
            "The before/after table compares whole checkouts: everything that changed between "
            "them counts, not only serving fixes. A contender whose code did not change shows "
            "this run's noise there; read changes of that size as noise."
        )
    return notes


def _runnable(names: list[str]) -> tuple[list[str], list[str]]:
    """`names` but those whose server is not installed here, and a note on each left out."""
    missing = {n: b for n, b in _NEEDS_BINARY.items() if n in names and not shutil.which(b)}
    notes = [
        f"{n} was left out: {b} is not installed (`make system-deps`, or apt-get install {b})."
        for n, b in missing.items()
    ]
    return [n for n in names if n not in missing], notes


def _ordered(names: tuple[str, ...]) -> list[str]:
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown contender(s) {unknown}; choose from {', '.join(SPECS)}")
    chosen = [n for n in SPECS if n in names]
    if _NEEDS_MONOLITH & set(chosen) and "monolith" not in chosen:
        chosen.append("monolith")  # holds the imported model they load
    return chosen


def _start_all(
    names: list[str], source: Settings, root: Path, work: Path, config: BenchConfig, say: Progress
) -> dict[str, Server]:
    """Start the servers (those on the monolith's home once it is ready), wait for each."""
    servers = {
        n: build_server(n, source, _root(n, root, config), work) for n in names if n != "model"
    }
    first = [n for n in servers if n.removesuffix(BASELINE) not in _NEEDS_MONOLITH]
    later = [n for n in servers if n not in first]
    pool = ThreadPoolExecutor(max(1, len(servers)))
    try:
        for group in (first, later):
            for name in group:
                servers[name].start()
            # Started together, waited on side by side: start-up is mostly waiting on imports.
            for future in [pool.submit(_wait, servers[n], config, say) for n in group]:
                future.result()
    except BaseException:
        # Stopped before the pool shuts down, so the waits still running end at once: a
        # failed start or a SIGTERM does not wait for the other servers to become ready.
        stop_all(servers.values())
        raise
    finally:
        pool.shutdown()
    return servers


def _root(name: str, root: Path, config: BenchConfig) -> Path:
    return config.baseline if config.baseline and name.endswith(BASELINE) else root


def _wait(server: Server, config: BenchConfig, say: Progress) -> None:
    t0 = time.monotonic()
    server.wait_ready(config.ready_timeout_s)
    say(f"  {server.spec.name:<16} ready in {time.monotonic() - t0:5.1f}s on :{server.port}")


def _measure(
    names: list[str],
    servers: dict[str, Server],
    workload: Workload,
    work: Path,
    config: BenchConfig,
    say: Progress,
) -> tuple[list[Cell], dict[str, float], dict[str, int]]:
    """The cells, each server's largest RSS, and the 200s each server answered."""
    bodies = {n: workload.bodies(spec_of(n).body) for n in names}
    cells: list[Cell] = []
    memory: dict[str, float] = {}
    answered: dict[str, int] = {}
    if "model" in names:
        cells.append(_floor_model(work / "monolith", workload, config, say))
        memory["model"] = psutil.Process().memory_info().rss / 2**20
    lo = 0
    for level in config.levels:
        hi = lo + config.warmup + config.cell(level)[0]
        chunk = {n: b[lo:hi] for n, b in bodies.items()}
        cells += _level(level, servers, chunk, config, say, answered)
        lo = hi
        for name, server in servers.items():
            rss = server.tree().rss_bytes() / 2**20
            memory[name] = max(memory.get(name, 0.0), rss)
    return cells, memory, answered


def _floor_model(home: Path, workload: Workload, config: BenchConfig, say: Progress) -> Cell:
    model = InProcessModel(scorer_dir(home))
    rows = workload.features[: config.model_requests]
    model.run(rows[:50])  # warm-up: first calls allocate
    cell = Cell.empty("model", 1)
    sample, cpu = model.run(rows)
    cell.add(sample, cpu)
    s = cell.summary()
    say(f"  model            c=1   p50 {s['p50_ms']:7.3f} ms  {s['rps']:9.0f} calls/s")
    return cell


def _level(
    level: int,
    servers: dict[str, Server],
    bodies: dict[str, list[bytes]],
    config: BenchConfig,
    say: Progress,
    answered: dict[str, int],
) -> list[Cell]:
    """Every server at one concurrency: warm-up, then `rounds` interleaved rounds (the 200s
    each answered added to `answered`)."""
    order = list(servers)

    def count(name: str, sample: Any) -> Any:
        answered[name] = answered.get(name, 0) + sample.statuses.get("200", 0)
        return sample

    for name in order:
        warmup = bodies[name][: config.warmup]
        count(name, _drive(servers[name].endpoint, warmup, level, config.max_cell_s))
    cells = {name: Cell.empty(name, level) for name in order}
    round_s = config.cell(level)[1]
    per_round = config.per_round(level)
    for r in range(config.rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        lo = config.warmup + r * per_round
        for name in rotated:
            tree = servers[name].tree()
            cpu0 = tree.cpu_s()
            batch = bodies[name][lo : lo + per_round]
            sample = count(name, _drive(servers[name].endpoint, batch, level, round_s))
            cells[name].add(sample, tree.cpu_s() - cpu0)
    for cell in cells.values():
        s = cell.summary()
        say(
            f"  {cell.contender:<16} c={level:<3} p50 {s['p50_ms']:7.2f} ms  "
            f"p99 {s['p99_ms']:7.2f} ms  max {s['max_ms']:7.1f} ms  {s['rps']:7.0f} req/s  "
            f"{s['requests']:6,} in {s['seconds']:5.1f} s  errors {s['errors'] or 0}"
        )
    return list(cells.values())


def _drive(endpoint: Endpoint, bodies: list[bytes], concurrency: int, max_s: float) -> Any:
    return asyncio.run(drive(endpoint, bodies, concurrency, max_s))
