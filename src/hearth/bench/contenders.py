"""The contenders: each a real server on loopback (or, for the floor, the model in-process).

Every server runs in its own process group with its own log, is polled until ready, and is
measured as a process tree (the server and every worker it starts). Hearth's topologies
each get a fresh HEARTH_HOME so that their online stores see the same stream.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hearth.bench.latency_stats import ProcessTree
from hearth.bench.load import Endpoint, Sample
from hearth.config import NO_TELEMETRY_ENV, Settings
from hearth.launch.hearth_server import wait_workers
from hearth.launch.launcher import Launched, free_port, launch
from hearth.launch.topologies import serve_command
from hearth.serving.auth import INTERNAL_TOKEN_HEADER
from hearth.serving.internal_client import PREDICT, PREFIX
from hearth.serving.model_cache import CACHE_DIR
from hearth.traffic.state_sqlite import STATE_FILE, SQLiteStateStore

HOST = "127.0.0.1"
# The model-service contenders are driven on the route the gateway calls (the lean internal
# hop), not on the BentoML API of the same lane, whose per-request work would hide batching.
MODEL_ROUTE = PREFIX + PREDICT
BENCH_KEY = "bench-key"
BENCH_INTERNAL_TOKEN = "bench-internal-token"  # what the model-service contenders require


@dataclass(frozen=True)
class Spec:
    """What a contender is, for the report."""

    name: str
    label: str
    group: str  # floor | peer | hearth | store | batching | workers
    body: str  # a workload body kind
    note: str
    workers: int = 1  # serving processes (`hearth serve --workers N`) of a Hearth contender


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("model", "forward pass, in-process", "floor", "features",
             "FraudScorer.predict_records on one row; no HTTP, no JSON"),
        Spec("echo", "Starlette echo", "floor", "transaction",
             "uvicorn + Starlette parsing and echoing the transaction's JSON"),
        Spec("mlflow", "mlflow models serve", "peer", "dataframe_split",
             "models:/fraud-detector@champion, --env-manager local; takes the feature row"),
        Spec("bentoml", "plain BentoML service", "peer", "features",
             "bentos/bench_plain.py, BentoML defaults; takes the feature row"),
        Spec("monolith", "Hearth monolith", "hearth", "transaction",
             "auth, validation, online features, routing, model, lineage log, one process"),
        Spec("microservices", "Hearth microservices", "hearth", "transaction",
             "the same path across gateway, features and model services"),
        Spec("monolith-w2", "Hearth monolith, 2 workers", "workers", "transaction",
             "the monolith served by two processes on one port (`hearth serve --workers 2`), "
             "sharing the online store, the rollout state and the prediction log", workers=2),
        Spec("monolith-redis", "Hearth monolith, Redis store", "store", "transaction",
             "the monolith with its online store in Redis (a redis-server of its own on "
             "loopback, counted in its CPU and memory), as machines that share one have it"),
        Spec("model-batched", "model service, batched", "batching", "score_items",
             "Hearth's model service alone, adaptive batching on (the default)"),
        Spec("model-unbatched", "model service, unbatched", "batching", "score_items",
             "the same service with HEARTH_MODEL_BATCHING=false"),
    )
}  # fmt: skip


def server_env(
    source: Settings, root: Path, home: Path | None = None, **extra: str
) -> dict[str, str]:
    """Environment of a contender: no telemetry, the project's registry and data, and
    Hearth's code from `root` (so a benchmark can serve another checkout's code)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "BENTOML_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root)])
    env.update(NO_TELEMETRY_ENV)
    env.update(
        MLFLOW_TRACKING_URI=source.mlflow_uri,
        HEARTH_MLFLOW_TRACKING_URI=source.mlflow_uri,
        HEARTH_DATA_DIR=str(source.data_dir.resolve()),
        HEARTH_PARAMS_FILE=str(source.params_file.resolve()),
        HEARTH_API_KEY=BENCH_KEY,
        HEARTH_INTERNAL_TOKEN=BENCH_INTERNAL_TOKEN,
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        # mlflow models serve execs `uvicorn` by name: this interpreter's scripts come first.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if home is not None:
        env.update(HEARTH_HOME=str(home), BENTOML_HOME=str(home / "bentoml"))
    env.update(extra)
    return env


@dataclass
class Server:
    """A contender served by a child process (see `hearth.launch.launcher`)."""

    spec: Spec
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    path: str
    ready_path: str
    port: int = field(default_factory=free_port)
    headers: tuple[tuple[str, str], ...] = ()
    process: Launched | None = None

    def start(self) -> None:
        ready = f"http://{HOST}:{self.port}{self.ready_path}"
        self.process = launch(self.spec.name, self.command(), self.env, self.cwd, self.log_path,
                              ready)  # fmt: skip

    def command(self) -> list[str]:
        return [*self.cmd, "--host", HOST, "--port", str(self.port)]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(HOST, self.port, self.path, self.headers)

    def _started(self) -> Launched:
        assert self.process is not None, "not started"
        return self.process

    def tree(self) -> ProcessTree:
        return ProcessTree(self._started().pid)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the readiness path until 200; the launcher's error (a RuntimeError, with the
        log's tail) on death or timeout."""
        self._started().wait_ready(timeout_s, poll_s=0.3)

    def log_tail(self, chars: int = 3000) -> str:
        return self._started().log_tail(chars)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        if self.process is not None:
            self.process.stop(timeout_s)


class MlflowServer(Server):
    def command(self) -> list[str]:
        return [*self.cmd, "-h", HOST, "-p", str(self.port)]


class HearthServer(Server):
    """`hearth serve --topology … --workers N` (adopts the champion, fills the store, then
    serves); ready once /readyz answers and all N workers say they are ready."""

    @property
    def topology(self) -> str:
        return self.spec.name.removesuffix(BASELINE).split("-w")[0]

    def command(self) -> list[str]:
        workers = self.spec.workers
        if workers == 1 and not takes_workers(self.cwd):
            return serve_command(self.topology, self.port)  # a checkout from before --workers
        return serve_command(self.topology, self.port, workers=workers)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        super().wait_ready(timeout_s)
        if self.spec.workers > 1:
            url = f"http://{HOST}:{self.port}"
            wait_workers(self._started(), url, self.spec.workers, deadline - time.monotonic())

    def predictions_counted(self) -> dict[str, int]:
        """variant → predictions its /metrics counted (all workers together)."""
        return predictions_counted(f"http://{HOST}:{self.port}")


class RedisBackedServer(HearthServer):
    """The monolith with `HEARTH_STORE_BACKEND=redis` on a redis-server (Debian's package)
    that it starts first, on a free loopback port, without persistence, and stops last;
    `hearth serve` fills it from the processed data as it fills the SQLite store."""

    redis: Launched | None = None

    @property
    def topology(self) -> str:
        return "monolith"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                f"{self.spec.name} needs redis-server (`make system-deps`, or apt-get install "
                "redis-server); leave it out with --contender"
            )
        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
               "--dir", str(self.log_path.parent)]  # fmt: skip
        log = self.log_path.with_name("redis.log")
        self.redis = launch("redis", cmd, {}, self.cwd, log, lambda: _redis_answers(port))
        self.redis.wait_ready(30, poll_s=0.1)
        self.env |= {
            "HEARTH_STORE_BACKEND": "redis",
            "HEARTH_REDIS_URL": f"redis://{HOST}:{port}/0",
        }
        super().start()

    def tree(self) -> ProcessTree:
        return ProcessTree(self._started().pid, [self.redis.pid] if self.redis else [])

    def stop(self, timeout_s: float = 20.0) -> None:
        super().stop(timeout_s)
        if self.redis is not None:
            self.redis.stop(timeout_s)


def _redis_answers(port: int) -> bool:
    from hearth.storage.redis import connect, ping  # lazy: the bench's other contenders

    client = connect(f"redis://{HOST}:{port}/0", retries=0)
    try:
        return ping(client)
    finally:
        client.close()


def takes_workers(root: Path) -> bool:
    """Whether the checkout at `root` has `hearth serve --workers` (a baseline may not)."""
    serve = root / "src" / "hearth" / "cli" / "serve.py"
    return not serve.exists() or "workers" in serve.read_text()


def predictions_counted(url: str) -> dict[str, int]:
    """variant → `hearth_predictions_total` at `url`/metrics, summed over its other labels."""
    from prometheus_client.parser import text_string_to_metric_families  # lazy: bench only

    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}  # reported as counting nothing: the check fails, the bench goes on
    counted: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hearth_predictions_total":
                variant = sample.labels["variant"]
                counted[variant] = counted.get(variant, 0) + int(sample.value)
    return counted


BASELINE = "@base"


def spec_of(name: str) -> Spec:
    """The spec of `name`; ``<name>@base`` is the same contender run from a baseline checkout."""
    base, suffix = name.split("@", 1) if "@" in name else (name, "")
    spec = SPECS[base]
    if not suffix:
        return spec
    return Spec(name, f"{spec.label} (baseline)", spec.group, spec.body, spec.note, spec.workers)


def build_server(name: str, source: Settings, root: Path, work: Path) -> Server:
    """The server contender `name`, not started; its files live under `work/name`."""
    spec = spec_of(name)
    suffix = BASELINE if name.endswith(BASELINE) else ""
    home = work / name
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    py = sys.executable
    bentoml_serve = [py, "-m", "bentoml", "serve", "--working-dir", str(root)]
    name = name.removesuffix(BASELINE)
    # A baseline checkout reads its own params.yaml: its schema may be older than this one's.
    params = {"HEARTH_PARAMS_FILE": str(root / "params.yaml")} if suffix else {}
    if name == "echo":
        cmd = [py, "-m", "uvicorn", "hearth.bench.echo:app", "--log-level", "warning",
               "--no-access-log"]  # fmt: skip
        return Server(spec, cmd, server_env(source, root), root, log, "/echo", "/readyz")
    if name == "mlflow":
        cmd = [py, "-m", "mlflow", "models", "serve", "-m", "models:/fraud-detector@champion",
               "--env-manager", "local"]  # fmt: skip
        return MlflowServer(spec, cmd, server_env(source, root), root, log, "/invocations", "/ping")
    if name == "bentoml":
        cmd = [*bentoml_serve, "bentos.bench_plain:Plain"]
        return Server(spec, cmd, server_env(source, root, home), root, log, "/predict", "/readyz")
    if name in ("monolith", "microservices", "monolith-w2", "monolith-redis"):
        key = (("X-API-Key", BENCH_KEY),)
        env = server_env(source, root, home, **params)
        kind = RedisBackedServer if name == "monolith-redis" else HearthServer
        return kind(spec, [], env, root, log, "/predict", "/readyz", headers=key)
    if name in ("model-batched", "model-unbatched"):
        # Hearth's model service alone, on the monolith's home (its state and model cache).
        batching = "false" if name == "model-unbatched" else "true"
        monolith_home = work / f"monolith{suffix}"
        env = server_env(source, root, monolith_home, HEARTH_MODEL_BATCHING=batching, **params)
        cmd = [*bentoml_serve, "bentos.model:Model"]
        token = ((INTERNAL_TOKEN_HEADER, BENCH_INTERNAL_TOKEN),)
        return Server(spec, cmd, env, root, log, MODEL_ROUTE, "/readyz", headers=token)
    raise KeyError(name)


class InProcessModel:
    """The floor: the champion's forward pass on one row, in this process."""

    spec = SPECS["model"]

    def __init__(self, scorer_dir: Path) -> None:
        from hearth.model.scorer import FraudScorer  # lazy: torch, for this contender only

        self.scorer = FraudScorer.from_dir(scorer_dir)

    def run(self, rows: Sequence[dict[str, Any]]) -> tuple[Sample, float]:
        """Score each row alone; the sample and the CPU seconds it took."""
        sample = Sample()
        cpu0, started = time.process_time(), time.perf_counter()
        for row in rows:
            t0 = time.perf_counter()
            self.scorer.predict_records([row])
            sample.latencies_s.append(time.perf_counter() - t0)
            sample.count("200")
        sample.elapsed_s = time.perf_counter() - started
        return sample, time.process_time() - cpu0


def scorer_dir(home: Path) -> Path:
    """The champion's scorer directory in a Hearth home's model cache: the version the
    rollout state of that home names, as its server loaded it."""
    store = SQLiteStateStore(home / STATE_FILE)
    try:
        champion = store.served().champion_version
    finally:
        store.close()
    found = sorted((home / CACHE_DIR).glob(f"*/{champion}/model.pt")) if champion else []
    if not found:
        raise FileNotFoundError(f"no champion (v{champion}) in {home / CACHE_DIR}")
    return found[0].parent
