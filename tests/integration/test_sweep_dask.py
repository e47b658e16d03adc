"""A training sweep on a real Dask scheduler and two `dask worker` processes on loopback.

Each worker trains at least one variant, every variant is a Prefect task run and an MLflow
child run, and the metrics equal those of the same sweep on the default local cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hearth.launch.launcher import free_port, tail
from tests.projects import REPO, clean_environ, copy_project, in_project, project_settings

if TYPE_CHECKING:
    from hearth.steps import TrainSummary

pytestmark = pytest.mark.slow

# Two epochs of the smallest nets: the test is about where variants run, not how well.
SWEEP = (
    "name: dask-sweep\n"
    "train: {seed: 5, epochs: 2, batch_size: 256, patience: 2}\n"
    "sweep:\n"
    "  - {hidden_sizes: [8]}\n"
    "  - {hidden_sizes: [16, 8], dropout: 0.2}\n"
)


@pytest.fixture(scope="module")
def featurised(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with processed features and the sweep's experiment file, nothing trained:
    a copy of the session's tiny data (tests/conftest.py)."""
    root = copy_project(tiny_data, tmp_path_factory.mktemp("dask-project"))
    (root / "experiments" / "sweep.yaml").write_text(SWEEP)
    return root


def _dask(args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    # Started in the project, as on a second machine in its checkout: relative paths (data,
    # params.yaml) resolve there. The flows and the library import from this repository.
    env = clean_environ("HEARTH_", "PREFECT_", "MLFLOW_")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True,
        )  # fmt: skip


@contextmanager
def dask_cluster(
    project: Path, workdir: Path, n_workers: int = 2
) -> Iterator[Callable[[], tuple[str, set[str]]]]:
    """`dask scheduler` and `n_workers` single-threaded `dask worker`s started in `project`,
    logs and spill in `workdir`. Yields `ready()`: it waits for every worker and returns
    (scheduler address, worker addresses). The workers import the flow and the training
    code as they start (--preload), so the caller can do something else meanwhile."""
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = [workdir / "scheduler.log", *(workdir / f"worker-{i}.log" for i in range(n_workers))]
    scheduler = ["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
    worker = ["worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny"]
    preload = ["--preload", "flows.train", "--preload", "hearth.model.train"]
    with ExitStack() as stack:
        procs = [_dask([*scheduler, "--no-dashboard"], logs[0], project)]
        stack.callback(_stop, procs)
        for i in range(n_workers):
            spill = ["--memory-limit", "0", "--local-directory", str(workdir / f"worker-{i}")]
            args = [*worker, "--name", f"worker-{i}", "--no-dashboard", *preload, *spill]
            procs.append(_dask(args, logs[i + 1], project))
        yield lambda: (address, _wait_for_workers(address, n_workers, procs, logs))


def _wait_for_workers(
    address: str, n_workers: int, procs: list[subprocess.Popen[bytes]], logs: list[Path]
) -> set[str]:
    import distributed

    deadline = time.monotonic() + 120
    while True:
        try:
            with distributed.Client(address, timeout=5) as client:
                client.wait_for_workers(n_workers, timeout=max(1, deadline - time.monotonic()))
                return set(client.scheduler_info()["workers"])
        except (OSError, TimeoutError) as exc:
            dead = [p.args for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs_text = "\n".join(f"{log.name}: {tail(log)}" for log in logs)
                message = f"no Dask cluster ({exc}; exited: {dead})\n{logs_text}"
                raise RuntimeError(message) from exc
            time.sleep(0.5)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    # Killed: they hold nothing worth a graceful close, which takes seconds each.
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


def _results(summary: TrainSummary) -> list[tuple[object, ...]]:
    return [(r.run_name, r.best_epoch, r.valid_metrics, r.test_metrics) for r in summary.runs]


def test_sweep_variants_train_on_two_dask_workers_and_equal_a_local_run(
    featurised: Path, prefect_server: None, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from flows.train import DASK_WORKER_TAG, train_flow

    settings = project_settings(featurised)
    experiment = str(featurised / "experiments" / "sweep.yaml")
    t0 = time.monotonic()
    with dask_cluster(featurised, tmp_path) as ready:
        with in_project(featurised, settings):
            local = train_flow(experiment=experiment, register_model=False)
        t1 = time.monotonic()
        address, workers = ready()
        t2 = time.monotonic()
        with in_project(featurised, settings, HEARTH_DASK_ADDRESS=address):
            state = train_flow(experiment=experiment, register_model=False, return_state=True)
            remote = state.result()
        t3 = time.monotonic()
    stopped = time.monotonic() - t3
    print(
        f"sweep on the local cluster {t1 - t0:.1f} s, Dask workers ready {t2 - t1:.1f} s "
        f"later, sweep on them {t3 - t2:.1f} s, cluster stopped in {stopped:.1f} s"
    )

    # Deterministic wherever a variant trains: the same metrics as on the local cluster.
    assert len(remote.runs) == 2
    assert _results(remote) == _results(local)

    # Each worker trained a variant, and each variant is a child of the sweep's parent run.
    client = MlflowClient(settings.mlflow_uri)
    runs = [client.get_run(r.run_id) for r in remote.runs]
    assert {run.data.tags.get(DASK_WORKER_TAG) for run in runs} == workers
    parents = {run.data.tags.get("mlflow.parentRunId") for run in runs}
    assert len(parents) == 1 and None not in parents
    parent = client.get_run(parents.pop())
    assert parent.data.tags["hearth.sweep"] == "true" and parent.info.status == "FINISHED"
    local_tags = {client.get_run(r.run_id).data.tags.get(DASK_WORKER_TAG) for r in local.runs}
    assert all(tag and tag.startswith("inproc://") for tag in local_tags), local_tags

    # Prefect shows every variant as a completed task run of the flow run.
    assert {name for name, ok in _task_runs(state.state_details.flow_run_id) if ok} == {
        f"train {r.run_name}" for r in remote.runs
    }


def _task_runs(flow_run_id: object) -> list[tuple[str, bool]]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[tuple[str, bool]]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return [(r.name, bool(r.state and r.state.is_completed())) for r in runs]

    return asyncio.run(read())
