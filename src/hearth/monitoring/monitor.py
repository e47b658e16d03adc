"""One monitoring pass: load live and reference data, compare, report, maybe retrain.

The pieces that touch the outside world (scoring the reference with a registered model,
starting a Prefect deployment) are parameters, so a test can pass its own and the flow
passes the real ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hearth.config import HearthContext, Settings
from hearth.monitoring import drift_report
from hearth.monitoring.drift import DriftReport, compare
from hearth.params import MonitoringParams
from hearth.traffic.stores import has_prediction_log, using_prediction_log

log = logging.getLogger(__name__)

ScoreFn = Callable[[pd.DataFrame, str], np.ndarray]
TriggerFn = Callable[[str, dict[str, Any]], str]
REFERENCE_SPLIT = "train"


class RetrainUnavailable(RuntimeError):
    """The retraining deployment could not be started; the message says why and what to do."""


@dataclass(frozen=True)
class LiveData:
    """Recent predictions: their feature rows, scores and the model versions that made them."""

    features: pd.DataFrame
    scores: np.ndarray
    model_versions: list[str]


@dataclass(frozen=True)
class MonitorResult:
    """One monitoring pass: the drift report, where it was written, what it started."""

    report: DriftReport
    markdown_path: Path
    png_path: Path
    triggered: str | None
    trigger_error: str | None = None
    mlflow_run_id: str | None = None  # set once the pass is logged (`log_to_mlflow`)


def load_live(settings: Settings, window_hours: float, now: float | None = None) -> LiveData:
    """Predictions of the last `window_hours` that carry their feature rows."""
    empty = LiveData(pd.DataFrame(), np.array([]), [])
    if not has_prediction_log(settings):
        return empty
    since = (now or time.time()) - window_hours * 3600
    with using_prediction_log(settings) as predictions:
        rows = predictions.answered_since(since)
    if not rows:
        return empty
    features = pd.DataFrame([json.loads(r[0]) for r in rows])
    versions = sorted({str(r[2]) for r in rows})
    return LiveData(features, np.array([r[1] for r in rows], dtype=float), versions)


def load_reference(settings: Settings, params: MonitoringParams) -> pd.DataFrame:
    """A fixed-seed sample of the train split: what the model learned from."""
    path = settings.processed_dir / f"{REFERENCE_SPLIT}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the ETL (`hearth etl`) first")
    df = pd.read_parquet(path)
    if len(df) > params.reference_rows:
        df = df.sample(params.reference_rows, random_state=0)
    return df.reset_index(drop=True)


def registry_scorer(model_name: str) -> ScoreFn:
    """Score a frame with registered version `version` of `model_name` (MLflow pyfunc)."""

    def score(frame: pd.DataFrame, version: str) -> np.ndarray:
        import mlflow

        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
        return np.asarray(model.predict(frame), dtype=float)

    return score


def prefect_trigger(deployment: str, parameters: dict[str, Any]) -> str:
    """Start a Prefect deployment run without waiting for it; its flow-run id."""
    from prefect.deployments import run_deployment

    try:
        run: Any = run_deployment(deployment, parameters=parameters, timeout=0)
    except Exception as exc:  # unreachable API, unknown deployment: both are "cannot retrain"
        raise RetrainUnavailable(
            f"could not start the Prefect deployment {deployment!r}: {type(exc).__name__}: "
            f"{exc}. Is the Prefect server up (`hearth up`) and the deployment deployed?"
        ) from exc
    return str(run.id)


def write_report(
    report: DriftReport, live: LiveData, reference_scores: np.ndarray | None,
    params: MonitoringParams, out_dir: Path,
) -> tuple[Path, Path]:  # fmt: skip
    """drift.md and drift.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "drift.md"
    md.write_text(drift_report.markdown(report, params))
    png = drift_report.plot(report, reference_scores, live.scores, params, out_dir / "drift.png")
    return md, png


def run_monitor(
    ctx: HearthContext,
    score: ScoreFn | None = None,
    trigger: TriggerFn | None = prefect_trigger,
    now: float | None = None,
) -> MonitorResult:
    """Compare the last window of live traffic with the reference; retrain when drifted.

    `trigger=None` measures and reports only. A trigger that cannot reach Prefect does not
    fail the pass: the report is still written and `trigger_error` says what went wrong.
    """
    params = ctx.params.monitoring
    live = load_live(ctx.settings, params.window_hours, now)
    reference = load_reference(ctx.settings, params)
    ref_scores = None
    if live.model_versions and len(live.scores) >= params.min_live_rows:
        # The reference scored by the model that scored most of the live traffic: a score
        # shift then means the inputs moved, not that another model answered.
        scorer = score or registry_scorer(ctx.params.registry.model_name)
        ref_scores = scorer(reference, live.model_versions[-1])
    result = compare(reference, live.features, ref_scores, live.scores, params)
    md, png = write_report(result, live, ref_scores, params, ctx.settings.reports_dir)
    triggered, error = None, None
    if result.retrain and trigger is not None:
        try:
            triggered = trigger(params.retrain_deployment, {})
            log.warning("drift: started %s (flow run %s)", params.retrain_deployment, triggered)
        except RetrainUnavailable as exc:
            error = str(exc)
            log.error("drift calls for retraining, but %s", error)
    return MonitorResult(result, md, png, triggered, error)


def log_to_mlflow(result: MonitorResult, experiment: str = "monitoring") -> str:
    """One MLflow run per pass: PSI/KS metrics, the verdict, the Markdown and the PNG."""
    import mlflow

    mlflow.set_experiment(experiment)
    rep = result.report
    with mlflow.start_run(run_name="drift") as run:
        mlflow.log_metrics({f"psi_{k}": v for k, v in rep.psi.items() if np.isfinite(v)})
        metrics = {"n_live": float(rep.n_live), "retrain": float(rep.retrain)}
        if rep.scores is not None:
            metrics |= {"ks_statistic": rep.scores.statistic, "ks_pvalue": rep.scores.pvalue}
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {"drift.retrain": str(rep.retrain), "drift.triggered": result.triggered or ""}
        )
        mlflow.log_artifact(str(result.markdown_path), "drift")
        mlflow.log_artifact(str(result.png_path), "drift")
    return str(run.info.run_id)
