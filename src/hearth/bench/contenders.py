"""The contenders: each a real server on loopback (or, for the floor, the model in-process).

Every server runs in its own process group with its own log, is polled until ready, and is
measured as a process tree (the server and every worker it starts). Hearth's topologies
each get a fresh HEARTH_HOME so that their online stores see the same stream.
"""

from __future__ import annotations

import os
import signal
import subprocess
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
from hearth.serving.internal import PREDICT, PREFIX
from hearth.serving.launch import ServerProcess, free_port

HOST = "127.0.0.1"
# The model-service contenders are driven on the route the gateway calls (the lean internal
# hop), not on the BentoML API of the same lane, whose per-request work would hide batching.
MODEL_ROUTE = PREFIX + PREDICT
BENCH_KEY = "bench-key"


@dataclass(frozen=True)
class Spec:
    """What a contender is, for the report."""

    name: str
    label: str
    group: str  # floor | peer | hearth | batching
    body: str  # a workload body kind
    note: str


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
    """A contender served by a child process; `stop` ends its whole process group."""

    spec: Spec
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    path: str
    ready_path: str
    port: int = field(default_factory=free_port)
    headers: tuple[tuple[str, str], ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.cmd, *self._port_args()],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _port_args(self) -> list[str]:
        return ["--host", HOST, "--port", str(self.port)]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(HOST, self.port, self.path, self.headers)

    def tree(self) -> ProcessTree:
        assert self.proc is not None, "not started"
        return ProcessTree(self.proc.pid)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the readiness path until 200; raise with the log's tail on death or timeout."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}{self.ready_path}", timeout=5).is_success:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.3)
        raise TimeoutError(f"{self.spec.name} not ready in {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass


class MlflowServer(Server):
    def _port_args(self) -> list[str]:
        return ["-h", HOST, "-p", str(self.port)]


class HearthServer(Server):
    """`hearth serve --topology …` (imports the champion, fills the store, then serves)."""

    def start(self) -> None:
        topology = self.spec.name.removesuffix(BASELINE)
        self.proc = ServerProcess.start(topology, self.env, self.cwd, self.log_path, self.port).proc


BASELINE = "@base"


def spec_of(name: str) -> Spec:
    """The spec of `name`; ``<name>@base`` is the same contender run from a baseline checkout."""
    base, suffix = name.split("@", 1) if "@" in name else (name, "")
    spec = SPECS[base]
    if not suffix:
        return spec
    return Spec(name, f"{spec.label} (baseline)", spec.group, spec.body, spec.note)


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
    if name in ("monolith", "microservices"):
        key = (("X-API-Key", BENCH_KEY),)
        env = server_env(source, root, home)
        return HearthServer(spec, [], env, root, log, "/predict", "/readyz", headers=key)
    if name in ("model-batched", "model-unbatched"):
        # Hearth's model service alone, on the monolith's home (its imported models).
        batching = "false" if name == "model-unbatched" else "true"
        monolith_home = work / f"monolith{suffix}"
        env = server_env(source, root, monolith_home, HEARTH_MODEL_BATCHING=batching)
        cmd = [*bentoml_serve, "bentos.model:Model"]
        return Server(spec, cmd, env, root, log, MODEL_ROUTE, "/readyz")
    raise KeyError(name)


class InProcessModel:
    """The floor: the champion's forward pass on one row, in this process."""

    spec = SPECS["model"]

    def __init__(self, scorer_dir: Path) -> None:
        from hearth.model.scorer import FraudScorer

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
    """The champion's scorer directory in a Hearth home's BentoML model store."""
    found = sorted((home / "bentoml" / "models").glob("*/*/model.pt"))
    if not found:
        raise FileNotFoundError(f"no model in {home / 'bentoml' / 'models'}")
    return found[-1].parent
