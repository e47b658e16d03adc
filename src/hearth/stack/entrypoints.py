"""Hearth's Prefect flows by entrypoint: what `hearth run`/`monitor` run, what prefect.yaml
deploys.

An entrypoint is ``<file under the project root>:<flow function>``, the form prefect.yaml
and Prefect's workers load flows by; so the library runs its flows without importing the
``flows`` package (the adapters sit above it). Each entry also names the type its flow
returns, and `run_flow` checks it, so a caller gets a typed result, not ``Any``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from hearth.config import Settings, project_root
from hearth.data.etl import EtlReport
from hearth.demo.closed_loop import MainJobSummary
from hearth.monitoring.monitor import MonitorResult
from hearth.rollout.flow_steps import RolloutOutcome
from hearth.stack.prefect_api import flows_in_this_process
from hearth.steps import PipelineSummary, TrainSummary

if TYPE_CHECKING:
    from prefect import Flow

R = TypeVar("R")


@dataclass(frozen=True)
class FlowEntry(Generic[R]):
    """A flow's entrypoint and the type of what it returns."""

    entrypoint: str
    returns: type[R]

    @property
    def path(self) -> Path:
        """The flow's file, relative to the project root."""
        return Path(self.entrypoint.rsplit(":", 1)[0])


ETL = FlowEntry("flows/etl.py:etl_flow", EtlReport)
VALIDATE = FlowEntry("flows/validate.py:validate_flow", str)
TRAIN = FlowEntry("flows/train.py:train_flow", TrainSummary)
PIPELINE = FlowEntry("flows/pipeline.py:pipeline_flow", PipelineSummary)
MONITOR = FlowEntry("flows/monitor.py:monitor_flow", MonitorResult)
ROLLOUT = FlowEntry("flows/rollout.py:rollout_flow", RolloutOutcome)
MAIN_JOB = FlowEntry("flows/main_job.py:main_job_flow", MainJobSummary)
ENTRYPOINTS: tuple[FlowEntry[Any], ...] = (
    ETL,
    VALIDATE,
    TRAIN,
    PIPELINE,
    MONITOR,
    ROLLOUT,
    MAIN_JOB,
)


def load_flow(entry: FlowEntry[Any], root: Path | None = None) -> Flow[..., Any]:
    """The flow at `entry`, loaded from its file under `root` (default: the project root)."""
    # lazy: Prefect takes a second to import; only the commands that run a flow need it
    from prefect.flows import load_flow_from_entrypoint

    function = entry.entrypoint.rsplit(":", 1)[1]
    where = (root or project_root()) / entry.path
    return load_flow_from_entrypoint(f"{where}:{function}", use_placeholder_flow=False)


def run_flow(entry: FlowEntry[R], /, **parameters: object) -> R:
    """Run the flow at `entry` with `parameters`, in this process, reporting to `hearth up`'s
    Prefect server when it runs (`flows_in_this_process`); its typed result."""
    with flows_in_this_process(Settings()):
        result = load_flow(entry)(**parameters)
    if not isinstance(result, entry.returns):
        raise TypeError(
            f"{entry.entrypoint} returned {type(result).__name__}, not {entry.returns.__name__}"
        )
    return result
