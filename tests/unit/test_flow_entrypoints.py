"""The library's table of flow entrypoints: every entry loads, returns its declared type,
and covers every deployment in prefect.yaml."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prefect import Flow

from hearth.stack import entrypoints
from hearth.stack.entrypoints import ENTRYPOINTS, FlowEntry, load_flow, run_flow

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("entry", ENTRYPOINTS, ids=lambda e: e.entrypoint)
def test_every_entrypoint_loads_a_flow_that_returns_the_declared_type(entry: FlowEntry) -> None:
    flow = load_flow(entry, ROOT)
    assert isinstance(flow, Flow)
    assert inspect.signature(flow.fn, eval_str=True).return_annotation is entry.returns


def test_prefect_yaml_deploys_only_flows_of_the_table() -> None:
    deployed = {d["entrypoint"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())[
        "deployments"
    ]}  # fmt: skip
    assert deployed <= {e.entrypoint for e in ENTRYPOINTS}


def test_every_flow_file_is_in_the_table() -> None:
    files = {p.relative_to(ROOT) for p in (ROOT / "flows").glob("*.py")}
    flows_files = {f for f in files if not f.name.startswith("_")}
    assert flows_files == {e.path for e in ENTRYPOINTS}


def test_run_flow_refuses_a_result_of_another_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entrypoints, "load_flow", lambda entry: lambda **params: {"a": 1})
    with pytest.raises(TypeError, match=r"flows/pipeline\.py:pipeline_flow returned dict"):
        run_flow(entrypoints.PIPELINE, experiment=None)


def test_run_flow_passes_the_parameters_and_returns_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[FlowEntry, dict]] = []

    def fake_load(entry: FlowEntry) -> Callable[..., str]:  # a stand-in for a Flow
        def run(**params: object) -> str:
            seen.append((entry, params))
            return "raw passed"

        return run

    monkeypatch.setattr(entrypoints, "load_flow", fake_load)
    assert run_flow(entrypoints.VALIDATE, suites=("raw",)) == "raw passed"
    assert seen == [(entrypoints.VALIDATE, {"suites": ("raw",)})]
