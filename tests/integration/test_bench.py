"""`hearth bench --quick` on a tiny trained project: the report is complete and well-formed.

Timings are not asserted (the machine is shared); the test checks that every contender of
the quick run is measured, every figure is a finite number and every file is written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hearth.bench.report import FILES
from hearth.bench.run import BenchConfig
from hearth.cli import app
from tests.integration.test_serving import project  # noqa: F401 - the shared tiny project

pytestmark = pytest.mark.slow

FIGURES = ("p50_ms", "p90_ms", "p99_ms", "rps", "cpu_s_per_1000")


@pytest.fixture(scope="module")
def bench_report(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("reports")
    env = {
        "HEARTH_HOME": str(project / ".hearth"),
        "HEARTH_DATA_DIR": str(project / "data"),
        "HEARTH_REPORTS_DIR": str(project / "reports"),
        "HEARTH_PARAMS_FILE": str(project / "params.yaml"),
        "HEARTH_MLFLOW_TRACKING_URI": f"sqlite:///{project / '.hearth' / 'mlflow.db'}",
    }
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
                    "## Verdict"):  # fmt: skip
        assert heading in text
    for label in ("mlflow models serve", "Hearth monolith", "Hearth microservices"):
        assert label in text
    assert "feature row" in text  # says that the bare model servers take features
