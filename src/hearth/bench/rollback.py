"""Rollback under load: from `hearth rollback` to the last challenger response.

Per Hearth topology, a server of its own on a throwaway home and a copy of the project's
SQLite registry, in which the challenger is registered from the champion's own model: the
switch is measured, not a different model, and the user's registry, rollout state and
serving state are never touched. The operator's own commands run as subprocesses:
`hearth rollout start` at 50 %, closed-loop load on POST /predict recording each response's
time, status and variant, then, once challenger responses flow, `hearth rollback` while the
load goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.bench.contenders import BENCH_KEY, SPECS, HearthServer, server_env
from hearth.bench.load import Connection, attempt
from hearth.config import Settings
from hearth.launch.launcher import stop_all
from hearth.traffic.state_sqlite import STATE_FILE, SQLiteStateStore

TOPOLOGIES = ("monolith", "microservices")
CONCURRENCY = 16
STEPS = "50,100"
REASON = "hearth bench"
# Challenger responses must flow this soon after the rollout starts (the model pool loads
# the challenger on its first request), or the measurement fails with a clear error.
CHALLENGER_WAIT_S = 60.0
LEAD_S = 1.0  # mixed traffic before the rollback, so the switch happens under load
AFTER_S = 3.0  # load after the command exits: late challenger responses would show here
TWIN_TAG = "hearth.bench.twin_of"

Say = Callable[[str], None]


class RollbackError(RuntimeError):
    """The measurement could not be made; the message says why (it goes into the report)."""


def describe() -> str:
    """What was measured and how, for the report."""
    return (
        f"`hearth rollout start --challenger N --mode canary --steps {STEPS}`, then "
        f"closed-loop load at c={CONCURRENCY} on POST /predict; once challenger responses "
        f'flow (and {LEAD_S:g} s more), `hearth rollback --reason "{REASON}"` runs as a '
        f"subprocess while the load goes on for {AFTER_S:g} s after it exits. Each topology "
        "runs on its own throwaway home with its own copy of the project's SQLite registry, "
        "where the challenger is a new version registered from the champion's own model: "
        "the switch is measured, not a different model. The project's registry and serving "
        "state are not touched."
    )


# -- the registry copy ------------------------------------------------------------------------
def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` MLflow URI; None for any other registry."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def copy_registry(uri: str, dst: Path) -> str:
    """Copy the SQLite registry at `uri` to `dst` (read-only on the source); the copy's URI.

    SQLite's backup API gives a consistent copy even while MLflow writes to the source. The
    artifact locations inside are absolute file URIs, so the copy reads the same artifacts.
    """
    src = sqlite_file(uri)
    if src is None:
        raise RollbackError(
            f"not measured: the registry {uri} is not a SQLite file, and the benchmark does "
            "not change a registry it cannot copy"
        )
    if not src.is_file():
        raise RollbackError(f"not measured: no registry database at {src}")
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
    copy = sqlite3.connect(dst)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    return f"sqlite:///{dst.resolve()}"


def register_twin(uri: str, model_name: str) -> tuple[str, str]:
    """In the registry at `uri` (a copy), register the champion's model again as a new
    version: (champion version, challenger version)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(model_name, "champion")
    twin = client.create_model_version(
        model_name,
        source=str(champion.source),
        run_id=champion.run_id,
        tags={**champion.tags, TWIN_TAG: str(champion.version)},
        description=f"hearth bench: v{champion.version}'s model again, to measure a rollback",
        model_id=getattr(champion, "model_id", None),
    )
    return str(champion.version), str(twin.version)


# -- one topology's rig -----------------------------------------------------------------------
@dataclass
class Rig:
    """One topology's server on its own home and registry copy."""

    topology: str
    home: Path
    registry_uri: str
    server: HearthServer

    @classmethod
    def build(cls, topology: str, source: Settings, root: Path, work: Path) -> Rig:
        home = work / "rollback" / topology
        home.mkdir(parents=True, exist_ok=True)
        uri = copy_registry(source.mlflow_uri, home / "mlflow.db")
        env = server_env(
            source, root, home,
            HEARTH_MLFLOW_TRACKING_URI=uri,
            MLFLOW_TRACKING_URI=uri,
            # Pinned, never taken from a .env file: the rollout state, the stores and the
            # BentoML models live in this throwaway home, not in the user's Redis or store.
            HEARTH_STORE_BACKEND="sqlite",
            HEARTH_BENTOML_DIR=str(home / "bentoml"),
            HEARTH_REPORTS_DIR=str(home / "reports"),
        )  # fmt: skip
        key = (("X-API-Key", BENCH_KEY),)
        log = home / "server.log"
        server = HearthServer(
            SPECS[topology], [], env, root, log, "/predict", "/readyz", headers=key
        )
        return cls(topology, home, uri, server)

    def hearth(self, *args: str) -> list[str]:
        """The command line of `hearth <args>` as the user would run it against this rig."""
        return [sys.executable, "-m", "hearth", *args]


@dataclass(frozen=True)
class Reply:
    """One response seen by the load: when (monotonic), its status, the variant it names."""

    at: float
    status: str  # the HTTP status, or "timeout" / "connection"
    variant: str | None


@dataclass
class Window:
    """What the load saw around one `hearth rollback`."""

    replies: list[Reply] = field(default_factory=list)
    called: float = 0.0  # monotonic: the command started
    called_wall: float = 0.0  # the same instant by the wall clock (the history's clock)
    switched_wall: float | None = None  # wall clock: the rollout state's "rollback" event
    exited: float = 0.0  # monotonic: the command exited
    returncode: int | None = None
    output: str = ""


def switched_at(home: Path) -> float | None:
    """When the rollback ended the rollout (wall clock): its event in the rollout history.

    The command's own time is mostly Python starting and importing; this is the instant
    the gateways can see, so the report can split the two.
    """
    store = SQLiteStateStore(home / STATE_FILE)
    try:
        events = [e for e in store.history(limit=20) if e.action == "rollback"]
    finally:
        store.close()
    return events[-1].at.timestamp() if events else None


def summarise(topology: str, champion: str, challenger: str, window: Window) -> dict[str, Any]:
    """The report's row for one topology."""
    replies = window.replies
    failed = Counter(r.status for r in replies if r.status != "200")
    challenger_at = [r.at for r in replies if r.variant == "challenger"]
    last = max(challenger_at)
    # The state write on the monotonic clock (None when the history has no rollback event).
    write = None
    if window.switched_wall is not None:
        write = window.called + (window.switched_wall - window.called_wall)
    return {
        "topology": topology,
        "champion_version": champion,
        "challenger_version": challenger,
        "concurrency": CONCURRENCY,
        "requests": len(replies),
        "failed": sum(failed.values()),
        "errors": dict(failed),
        "window_s": round(replies[-1].at - replies[0].at, 3),
        "challenger_responses": len(challenger_at),
        "rollback_cli_s": round(window.exited - window.called, 3),
        "last_challenger_after_start_s": round(last - window.called, 3),
        "last_challenger_after_exit_s": round(last - window.exited, 3),
        "state_write_after_start_s": None if write is None else round(write - window.called, 3),
        "last_challenger_after_state_write_s": None if write is None else round(last - write, 3),
        "challenger_after_exit": sum(1 for at in challenger_at if at > window.exited),
        "error": None,
    }


# -- the measurement ----------------------------------------------------------------------------
def measure(rig: Rig, model_name: str, bodies: Sequence[bytes], say: Say) -> dict[str, Any]:
    """Roll out the twin, roll it back under load; the report's row (or one with an error)."""
    try:
        champion, challenger = register_twin(rig.registry_uri, model_name)
        say(f"  {rig.topology:<16} `hearth rollout start` of v{challenger} (twin of v{champion})")
        _run(rig, "rollout", "start", "--challenger", challenger, "--mode", "canary",
             "--steps", STEPS, "--reason", REASON)  # fmt: skip
        window = asyncio.run(_under_load(rig, bodies, say))
        if window.returncode != 0:
            raise RollbackError(f"`hearth rollback` failed:\n{window.output[-2000:]}")
        window.switched_wall = switched_at(rig.home)
        row = summarise(rig.topology, champion, challenger, window)
    except Exception as exc:  # one failed measurement must not lose the others' figures
        say(f"  {rig.topology:<16} rollback not measured: {exc}")
        return {"topology": rig.topology, "error": f"{type(exc).__name__}: {exc}"}
    say(
        f"  {rig.topology:<16} rollback: {row['requests']} requests, {row['failed']} failed; "
        f"command {row['rollback_cli_s']:.2f} s, last challenger response "
        f"{row['last_challenger_after_start_s']:.2f} s after its start, "
        f"{_signed(row['last_challenger_after_state_write_s'])} s after its state write, "
        f"{row['last_challenger_after_exit_s']:+.2f} s after its exit"
    )
    return row


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _run(rig: Rig, *args: str) -> None:
    """Run `hearth <args>` to completion; RollbackError with its output if it fails."""
    done = subprocess.run(
        rig.hearth(*args), cwd=rig.server.cwd, env=rig.server.env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise RollbackError(f"`hearth {' '.join(args[:2])}` failed:\n{tail}")


async def _under_load(rig: Rig, bodies: Sequence[bytes], say: Say) -> Window:
    """Load at CONCURRENCY; once challenger responses flow, `hearth rollback` under it."""
    endpoint = rig.server.endpoint
    requests = itertools.cycle([endpoint.request(b) for b in bodies])
    window = Window()
    stop = asyncio.Event()
    connections = [Connection(endpoint.host, endpoint.port) for _ in range(CONCURRENCY)]
    clients = [asyncio.create_task(_client(c, requests, window.replies, stop)) for c in connections]
    try:
        await _challenger_flows(window.replies, rig)
        say(f"  {rig.topology:<16} challenger answering at c={CONCURRENCY}; `hearth rollback`")
        await asyncio.sleep(LEAD_S)
        window.called, window.called_wall = time.monotonic(), time.time()
        window.returncode, window.output = await _subprocess(rig, "rollback", "--reason", REASON)
        window.exited = time.monotonic()
        await asyncio.sleep(AFTER_S)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        for conn in connections:
            await conn.close()
    return window


async def _client(
    conn: Connection, requests: Iterator[bytes], replies: list[Reply], stop: asyncio.Event
) -> None:
    """Closed loop: the next request goes when the previous one has answered."""
    while not stop.is_set():
        status, response = await attempt(conn, next(requests))
        variant = _variant(response.body) if response and response.status == 200 else None
        replies.append(Reply(time.monotonic(), status, variant))


def _variant(body: bytes) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body)["variant"])
    return None


async def _challenger_flows(replies: list[Reply], rig: Rig) -> None:
    """Return once a challenger response arrives; RollbackError after CHALLENGER_WAIT_S."""
    deadline = time.monotonic() + CHALLENGER_WAIT_S
    seen = 0
    while time.monotonic() < deadline:
        if any(r.variant == "challenger" for r in replies[seen:]):
            return
        seen = len(replies)
        await asyncio.sleep(0.05)
    statuses = dict(Counter(r.status for r in replies))
    raise RollbackError(
        f"no challenger response within {CHALLENGER_WAIT_S:.0f} s of the rollout's start "
        f"({len(replies)} responses, statuses {statuses}); server log:\n"
        f"{rig.server.log_tail(1500)}"
    )


async def _subprocess(rig: Rig, *args: str) -> tuple[int, str]:
    """Run `hearth <args>` without blocking the load; its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *rig.hearth(*args), cwd=rig.server.cwd, env=rig.server.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return (proc.returncode if proc.returncode is not None else -1), out.decode(errors="replace")


# -- every topology: started with the other servers, measured after them -------------------------
@dataclass
class Rollbacks:
    """The rigs of the chosen topologies, or why none runs (`skipped`).

    Their servers start with the throughput contenders (start-up is mostly imports) and are
    ready before the throughput rounds begin, so they disturb none; they are measured one
    after the other once the throughput servers are stopped.
    """

    rigs: dict[str, Rig] = field(default_factory=dict)
    skipped: str | None = None
    failed: dict[str, str] = field(default_factory=dict)  # topology → why it did not start

    @classmethod
    def prepare(
        cls, topologies: Sequence[str], source: Settings, root: Path, work: Path
    ) -> Rollbacks:
        """Copy the registry for each topology; `skipped` says why when that is impossible."""
        if not topologies:
            return cls(skipped="not asked for (no Hearth topology chosen, or --no-rollback)")
        try:
            return cls({t: Rig.build(t, source, root, work) for t in topologies})
        except RollbackError as exc:
            return cls(skipped=str(exc))

    def start(self) -> None:
        for rig in self.rigs.values():
            rig.server.start()

    def wait_ready(self, timeout_s: float, say: Say) -> None:
        """Wait for each server; one that fails is reported, not raised."""
        for topology, rig in self.rigs.items():
            t0 = time.monotonic()
            try:
                rig.server.wait_ready(timeout_s)
            except (RuntimeError, TimeoutError) as exc:
                self.failed[topology] = f"{type(exc).__name__}: {exc}"
                rig.server.stop()
                say(f"  {topology + ' (rollback)':<24} did not start: {exc}")
                continue
            say(f"  {topology + ' (rollback)':<24} ready in {time.monotonic() - t0:5.1f}s")

    def measure(self, model_name: str, bodies: Sequence[bytes], say: Say) -> dict[str, Any]:
        """The report's rollback section: one row per topology (a row may carry an error)."""
        results = [{"topology": t, "error": why} for t, why in self.failed.items()]
        for topology, rig in self.rigs.items():
            if topology not in self.failed:
                results.append(measure(rig, model_name, bodies, say))
                rig.server.stop()  # frees its CPU and memory for the next topology
        return {
            "what": describe(),
            "skipped": self.skipped,
            "topologies": list(self.rigs),
            "results": results,
        }

    def stop(self) -> None:
        stop_all(rig.server for rig in self.rigs.values())
