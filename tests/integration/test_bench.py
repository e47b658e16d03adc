"""`hearth bench --quick` on a tiny trained project: the report is complete and well-formed.

Timings are not asserted (the machine is shared); the test checks that every contender of
the quick run is measured, every figure is a finite number and every file is written, that
the rollback under load was measured without a failed request, and that the project's
registry, rollout state and model store are as they were before the benchmark.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from hearth.bench.bench_report import FILES
from hearth.bench.rollback_report import rollback_section
from hearth.bench.run import BenchConfig
from hearth.cli import app
from hearth.params import Params
from tests.projects import project_paths, registry_uri

pytestmark = pytest.mark.slow

FIGURES = ("p50_ms", "p90_ms", "p99_ms", "rps", "cpu_s_per_1000")


Snapshot = tuple[dict[str, int], list[str], list[tuple[str, int]]]


def _snapshot(root: Path) -> Snapshot:
    """The registry's aliases and versions, and every file (with its mtime) of the project's
    serving state and BentoML store: what a rollout or a rollback would change."""
    from mlflow.tracking import MlflowClient

    home = root / ".hearth"
    uri = registry_uri(root)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = Params().registry.model_name
    aliases = dict(client.get_registered_model(name).aliases)
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
    files = sorted(
        (str(f.relative_to(home)), f.stat().st_mtime_ns)
        for folder in (home / "serving", home / "bentoml")
        for f in folder.rglob("*")
        if f.is_file()
    )
    return aliases, versions, files


@pytest.fixture(scope="module")
def registry_before(project: Path) -> Snapshot:
    return _snapshot(project)


@pytest.fixture(scope="module")
def bench_report(
    project: Path,
    registry_before: Snapshot,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("reports")
    env = project_paths(project) | {"HEARTH_MLFLOW_TRACKING_URI": registry_uri(project)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(project)
        result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(out)])
        # `hearth` exported MLflow/BentoML variables into this process: put them back.
        for key in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "PREFECT_HOME"):
            os.environ.pop(key, None)
    assert result.exit_code == 0, result.output
    return out


def test_quick_bench_writes_every_file(bench_report: Path) -> None:
    for name in FILES:
        assert (bench_report / name).stat().st_size > 0, name


def test_every_contender_at_every_level_with_finite_figures(bench_report: Path) -> None:
    report = json.loads((bench_report / "bench.json").read_text())
    quick = BenchConfig.quick()
    rows = {(r["contender"], r["concurrency"]): r for r in report["results"]}
    for name in quick.contenders:
        levels = (1,) if name == "model" else quick.levels
        for level in levels:
            row = rows[(name, level)]
            assert row["requests"] > 0, (name, level)
            for key in FIGURES:
                assert math.isfinite(row[key]), (name, level, key)
        assert report["memory_mib"][name] > 0


def test_markdown_has_the_tables_and_a_verdict(bench_report: Path) -> None:
    text = (bench_report / "bench.md").read_text()
    for heading in ("## Latency", "## Ratios", "## The cost of one extra hop", "## Targets",
                    "## Verdict", "## Adaptive batching",
                    "## The online store in Redis"):  # fmt: skip
        assert heading in text
    for label in ("mlflow models serve", "Hearth monolith", "Hearth microservices"):
        assert label in text
    assert "feature row" in text  # says that the bare model servers take features
    assert "One hop measured alone" in text  # the quick run has the model-service contenders


def test_the_redis_contender_answered_and_its_server_is_gone(bench_report: Path) -> None:
    report = json.loads((bench_report / "bench.json").read_text())
    assert report["metrics_counted"]["monolith-redis"]["exact"] is True
    assert report["metrics_counted"]["monolith-redis"]["answered"] > 0
    # redis-server rewrites its command line, but it runs in its --dir, the bench's own.
    left = [
        p.pid
        for p in psutil.process_iter(["name", "cwd"])
        if p.info["name"] == "redis-server" and "hearth-bench-" in (p.info["cwd"] or "")
    ]
    assert not left  # stopped with the monolith it served


def test_every_target_is_judged(bench_report: Path) -> None:
    """The quick run measures every contender a target needs: each has a verdict."""
    report = json.loads((bench_report / "bench.json").read_text())
    judged = {t["target"]: t["met"] for t in report["targets"]}
    for target in ("monolith p50 at c=1 ≤ mlflow models serve", "one hop ≤ 1 ms at p50 (c=1)",
                   "monolith: zero errors"):  # fmt: skip
        assert judged.get(target) in (True, False), (target, judged)
    # c=128 is not in the quick levels: the batching target waits for the full run.
    assert "adaptive batching ≥ 3× faster at c=128" not in judged


def test_rollback_under_load_is_measured_on_the_monolith(bench_report: Path) -> None:
    section = json.loads((bench_report / "bench.json").read_text())["rollback"]
    assert section["skipped"] is None
    assert section["topologies"] == list(BenchConfig.quick().rollback) == ["monolith"]
    (row,) = section["results"]
    assert row["error"] is None, row["error"]
    assert row["challenger_version"] != row["champion_version"]
    assert row["requests"] > row["challenger_responses"] > 0
    assert row["failed"] == 0, row["errors"]  # a rollback fails no request
    for key in ("window_s", "rollback_cli_s", "last_challenger_after_start_s",
                "last_challenger_after_exit_s", "state_write_after_start_s",
                "last_challenger_after_state_write_s"):  # fmt: skip
        assert math.isfinite(row[key]), key
    # Challenger responses flowed before the command started, so the last one is after it;
    # the command wrote the rollout state (its history event) while it ran.
    assert 0 < row["last_challenger_after_start_s"] < row["window_s"]
    assert 0 < row["state_write_after_start_s"] < row["rollback_cli_s"]
    assert row["last_challenger_after_exit_s"] == pytest.approx(
        row["last_challenger_after_start_s"] - row["rollback_cli_s"], abs=0.002
    )
    assert 0 <= row["challenger_after_exit"] <= row["challenger_responses"]
    text = (bench_report / "bench.md").read_text()
    section = text.split("## Rollback under load", 1)[1].split("\n## ", 1)[0]
    assert "| monolith | 16 |" in section
    assert "not measured" not in section
    assert "rollback under load, monolith (information)" in text  # in the targets, as info


def test_the_projects_registry_and_serving_state_are_unchanged(
    project: Path,
    registry_before: Snapshot,
    bench_report: Path,
) -> None:
    aliases, versions, _ = registry_before
    assert aliases == {"champion": 1} and versions == ["1"]  # the tiny project, as made
    assert _snapshot(project) == registry_before


def test_a_registry_that_is_not_a_sqlite_file_is_not_touched(tmp_path: Path) -> None:
    from hearth.bench.rollback import Rollbacks
    from hearth.config import Settings

    server = Settings(home=tmp_path / "home", mlflow_tracking_uri="http://127.0.0.1:9/")
    rollbacks = Rollbacks.prepare(["monolith"], server, tmp_path, tmp_path / "work")
    assert rollbacks.rigs == {}
    assert rollbacks.skipped is not None and "not a SQLite file" in rollbacks.skipped
    section = rollbacks.measure("fraud-detector", [], print)
    assert section["results"] == [] and section["skipped"] == rollbacks.skipped
    text = "\n".join(rollback_section({"rollback": section}))
    assert f"(not measured: {rollbacks.skipped})" in text
