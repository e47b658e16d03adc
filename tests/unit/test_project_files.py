"""Every experiment YAML, every Prefect deployment and every DVC stage is loaded and checked."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from typer.main import get_command

from hearth.cli import app
from hearth.config import Settings
from hearth.model.experiment import load_experiment
from hearth.params import load_params
from hearth.stack import supervisor
from hearth.stack.services import GPU_WORK_POOL, WORK_POOLS, Stack

ROOT = Path(__file__).parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_files_load(path: Path) -> None:
    experiment = load_experiment(path)
    runs = experiment.configurations()
    assert runs, f"{path.name} defines no run"
    assert len({name for name, _ in runs}) == len(runs), "run names must be unique"


def test_default_experiment_is_the_one_params_names() -> None:
    params = load_params(ROOT / "params.yaml")
    assert (ROOT / params.train.experiment).exists()


def test_sweep_expands_to_one_run_per_variant() -> None:
    experiment = load_experiment(ROOT / "experiments" / "sweep-width.yaml")
    configs = [c for _, c in experiment.configurations()]
    assert [c.hidden_sizes for c in configs] == [(32,), (64, 32), (128, 64)]
    assert configs[2].dropout == 0.2 and configs[0].dropout == experiment.train.dropout


def test_experiment_typo_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  epoch: 3\n")
    with pytest.raises(ValueError, match="epoch"):
        load_experiment(bad)
    bad.write_text("name: x\nsweep:\n  - {hiden_sizes: [8]}\n")
    with pytest.raises(ValueError, match="hiden_sizes"):
        load_experiment(bad)


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["name"])
def test_prefect_deployments_point_at_real_flows(
    deployment: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    accepted = set(inspect.signature(flow.fn).parameters)
    assert set(deployment.get("parameters", {})) <= accepted
    assert deployment["work_pool"]["name"] in WORK_POOLS
    for schedule in deployment.get("schedules", []):
        assert len(schedule["cron"].split()) == 5


def test_deployments_name_the_work_pools_that_hearth_up_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hearth up` (its Prefect CLI calls recorded, nothing started) creates every pool a
    deployment names, and the GPU pool serves only a training deployment on CUDA."""
    created: list[str] = []

    def prefect_cli(stack: Stack, args: list[str], what: str) -> None:
        if args[:2] == ["work-pool", "create"]:
            created.append(args[2])

    monkeypatch.setattr(supervisor, "prefect_cli", prefect_cli)
    monkeypatch.setattr(supervisor, "_check_ports", lambda stack: None)
    monkeypatch.setattr(supervisor, "_start", lambda *args: None)
    supervisor.up(Stack(Settings(home=tmp_path)), serve=False, say=lambda line: None)

    named = {d["work_pool"]["name"] for d in _deployments()}
    assert named == set(created) == set(WORK_POOLS)
    gpu = [d for d in _deployments() if d["work_pool"]["name"] == GPU_WORK_POOL]
    assert [d["entrypoint"] for d in gpu] == ["flows/train.py:train_flow"]
    assert gpu[0]["parameters"]["device"] == "cuda"
    # Its variants stay on the GPU machine, not on a Dask scheduler named elsewhere.
    assert gpu[0]["work_pool"]["job_variables"]["env"]["HEARTH_DASK_ADDRESS"] == ""


def test_dvc_stages_call_real_hearth_commands() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["generate", "etl", "validate", "train"]
    cli = get_command(app)
    params = load_params(ROOT / "params.yaml").model_dump()
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "hearth", name
        command = cli
        for word in argv[1:]:
            command = command.commands[word]  # type: ignore[attr-defined]
        for section in stage.get("params", []):
            assert section in params, f"stage {name} reads unknown params section {section}"
        missing = [
            d for d in stage.get("deps", []) if d.startswith("src/") and not (ROOT / d).exists()
        ]
        assert not missing, f"stage {name} depends on code that is not there: {missing}"


def test_every_package_is_listed_in_pyproject() -> None:
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "hearth").rglob("*")
        if p.suffix in {".py", ".json"} and "__pycache__" not in p.parts
    }
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_lock_pins_every_package_with_a_hash() -> None:
    """`make install` runs `pip install --require-hashes -r requirements.lock`: one unhashed or
    unpinned line and the whole install stops, so catch it here. pip pins itself from the lock
    and setuptools (the build backend) is there for the editable install."""
    import re
    import tomllib

    line_re = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)( --hash=sha256:[0-9a-f]{64})+$")
    canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = line_re.match(line)
        assert match, f"requirements.lock: not `name==version --hash=sha256:…`: {line!r}"
        locked[canonical(match[1])] = match[2]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {canonical(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in direct}
    assert names | {"pip", "setuptools"} <= set(locked), sorted(names - set(locked))
    assert "hearth" not in locked, "Hearth itself is installed editable, not from the lock"
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements.lock" in makefile
    assert f"PIP_VERSION := {locked['pip']}" in makefile, "Makefile's PIP_VERSION ≠ the lock's pip"
