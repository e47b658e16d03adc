"""The main job as a Prefect flow on a real (temporary) Prefect server, end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from hearth.config import Settings
from hearth.params import Params
from hearth.steps import PipelineSummary
from hearth.validation import ValidationFailed
from tests.helpers import write_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_home(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None
) -> tuple[Path, PipelineSummary]:
    """Run the whole pipeline flow once on tiny data; later tests start from a copy of it."""
    from flows.pipeline import pipeline_flow

    root = tmp_path_factory.mktemp("project")
    params = Params.model_validate(
        {
            "data": {"days": 14, "customers": 400, "seed": 3, "tx_per_customer_day": 2.0},
            "split": {"valid_days": 3, "test_days": 3},
        }
    )
    write_project(root, params)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEARTH_HOME", str(root / ".hearth"))
        summary = pipeline_flow()
    return root, summary


def _client(root: Path) -> MlflowClient:
    uri = Settings(home=root / ".hearth").mlflow_uri
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def test_pipeline_registers_a_champion_with_metrics_artifacts_and_lineage(
    trained_home: tuple[Path, PipelineSummary],
) -> None:
    root, summary = trained_home
    client = _client(root)
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    metrics = run.data.metrics
    for name in ("test_pr_auc", "test_roc_auc", "test_log_loss"):
        assert name in metrics
    assert any(k.startswith("test_recall_at_p") for k in metrics)
    # Clearly better than chance: PR-AUC well above the fraud rate.
    assert metrics["test_pr_auc"] > 3 * summary.train.best.test_metrics["fraud_rate"]
    # The summary says what each step did: data generated (there was none), ETL, the gates.
    assert summary.generated is not None and summary.generated.transactions > 0
    assert summary.etl.rows_clean > 0 and "processed passed" in summary.validation
    assert summary.train.registration is not None
    assert summary.train.registration.version == 1
    tags = run.data.tags
    assert len(tags["hearth.data_version"]) >= 32
    assert tags["hearth.git_commit"]
    assert "raw passed" in tags["hearth.validation"]
    assert tags["hearth.experiment_file"].endswith("tiny.yaml")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert any(p.endswith(".png") for p in artifacts), artifacts
    history = client.get_metric_history(run.info.run_id, "valid_pr_auc")
    assert len(history) >= 2, "per-epoch metrics are logged"
    # The registered model loads back and scores the processed features.
    model = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
    import pandas as pd

    test = pd.read_parquet(root / "data" / "processed" / "test.parquet")
    scores = model.predict(test.head(20))
    assert len(scores) == 20


def test_flow_runs_are_recorded_in_prefect(trained_home: tuple[Path, PipelineSummary]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def runs() -> list:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"]))
            )

    import asyncio

    found = asyncio.run(runs())
    assert found and all(r.state.is_completed() for r in found)


def test_the_gate_and_training_post_prefect_artifacts(
    trained_home: tuple[Path, PipelineSummary],
) -> None:
    from tests import prefect_api

    _, summary = trained_home
    best = summary.train.best
    gate = prefect_api.table(prefect_api.artifacts("validation-gate")[0])
    assert {(r["suite"], r["result"]) for r in gate} == {("raw", "passed"), ("processed", "passed")}
    trained = prefect_api.table(prefect_api.artifacts("training-metrics")[0])
    assert [(r["mlflow_run_id"], r["best"]) for r in trained] == [(best.run_id, True)]
    assert trained[0]["test_pr_auc"] == pytest.approx(best.test_metrics["pr_auc"], abs=1e-4)
    link = prefect_api.artifacts("training-mlflow-run")[0]
    assert f"/runs/{best.run_id})" in link.data
    registration = prefect_api.artifacts("model-registration")[0]
    assert "decision: **champion**" in registration.data and "v1: champion" in (
        registration.description
    )


CORRUPTIONS = {
    "wrong_header": lambda p: p.write_text(
        p.read_text().replace("transaction_id,timestamp", "txn,ts", 1)
    ),
    "empty_drop": lambda p: p.write_text(""),
    "third_malformed": lambda p: _malform_third(p),
}


def _malform_third(path: Path) -> None:
    lines = path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    for i in range(0, len(rows), 3):
        cells = rows[i].split(",")
        cells[5] = "12,5x".replace(",", ";")  # malformed amount, CSV stays valid
        rows[i] = ",".join(cells)
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_drop_stops_the_flow_and_leaves_the_registry_untouched(
    case: str, trained_home: tuple[Path, PipelineSummary], tmp_path: Path
) -> None:
    from flows.pipeline import pipeline_flow

    src, _ = trained_home
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    drop = sorted((root / "data" / "raw" / "transactions").glob("*.csv"))[-1]
    CORRUPTIONS[case](drop)
    client = _client(root)
    before = [(v.version, v.aliases) for v in client.search_model_versions()]

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEARTH_HOME", str(root / ".hearth"))
        with pytest.raises(ValidationFailed) as failure:
            pipeline_flow()
    message = str(failure.value)
    assert drop.name in message, message
    assert "expect_" in message, message
    from tests import prefect_api  # the gate's table names the failed drop too

    gate = prefect_api.table(prefect_api.artifacts("validation-gate")[0])
    assert any(r["result"] == "failed" and drop.name in r["drop"] for r in gate), gate
    after = [(v.version, v.aliases) for v in _client(root).search_model_versions()]
    assert after == before


def test_sweep_runs_variants_as_parallel_tasks_under_one_parent_run(
    trained_home: tuple[Path, PipelineSummary], tmp_path: Path
) -> None:
    from flows.train import train_flow

    src, _ = trained_home
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    sweep = root / "experiments" / "sweep.yaml"
    sweep.write_text(
        "name: tiny-sweep\ntrain: {seed: 1, epochs: 3, batch_size: 256, patience: 2}\n"
        "sweep:\n  - {hidden_sizes: [16]}\n  - {hidden_sizes: [32, 16]}\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEARTH_HOME", str(root / ".hearth"))
        summary = train_flow(experiment=str(sweep))

    assert len(summary.runs) == 2
    client = _client(root)
    experiment = client.get_experiment_by_name("tiny-sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hearth.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len(children) == 2
    # The winner was chosen on validation, and went through the registration gate.
    best = max(summary.runs, key=lambda r: r.valid_metrics["pr_auc"])
    assert summary.best.run_id == best.run_id
    assert summary.registration is not None
    assert str(summary.registration.version) == "2"


def test_the_monitor_posts_its_drift_table(trained_home: tuple[Path, PipelineSummary]) -> None:
    """No live traffic yet: the pass measures nothing and says why, in its artifact too."""
    from flows.monitor import monitor_flow
    from tests import prefect_api

    root, _ = trained_home
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HEARTH_HOME", str(root / ".hearth"))
        result = monitor_flow(trigger_retraining=False)
    posted = prefect_api.artifacts("drift-psi")[0]
    assert result.report.skipped and posted.description.startswith("drift: no action — ")
    assert result.report.skipped in posted.description
    assert prefect_api.table(posted) == []
