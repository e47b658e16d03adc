"""MLflow: track training runs, register models and gate who gets which alias.

Call `configure(settings)` once before anything else here; importing this module sets
nothing. Aliases: ``champion`` serves all traffic, ``challenger`` is the candidate a rollout
may promote. `register_and_gate` is the only function that writes to the registry, and it
scores everything it needs *before* its first write, so a failure leaves the registry as it
was.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hearth.config import CHALLENGER, CHAMPION, Settings
from hearth.features.definitions import FEATURES
from hearth.lineage import Lineage
from hearth.params import RegistryParams, ThresholdParams
from hearth.schema import LABEL

# lazy: training, evaluation and the pyfunc (torch, scikit-learn) load where a model is logged
# or scored, not on import: `hearth rollback` needs only the aliases, and fast.
if TYPE_CHECKING:
    import pandas as pd

    from hearth.model.train import TrainResult

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
MODEL_URI_TAG = "hearth.model_uri"
# What the served model needs and nothing more: MLflow's inference of requirements is slow
# and pulls in the whole Hearth environment.
PIP_REQUIREMENTS = [
    f"mlflow=={mlflow.__version__}",
    "torch==2.13.0",
    "numpy",
    "pandas",
]
_INPUT_EXAMPLE_ROWS = 5
# A path, not an import: importing the entry point would register a model as a side effect.
PYFUNC_ENTRY = Path(__file__).parent / "model" / "pyfunc_entry.py"


@dataclass
class _State:
    artifact_root: Path | None = None
    tracking_uri: str | None = None


_state = _State()


# -- setup -------------------------------------------------------------------------------
def configure(settings: Settings, experiment: str | None = None) -> None:
    """Point MLflow at `settings` and, when named, create `experiment` if it is new."""
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    _state.tracking_uri = settings.mlflow_uri
    # A tracking *server* places artifacts itself; only a local store needs to be told.
    local = not settings.mlflow_uri.startswith(("http://", "https://", "databricks"))
    _state.artifact_root = settings.mlflow_artifact_root if local else None
    if experiment is not None:
        ensure_experiment(experiment)


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created (artifacts under the Hearth home) when new."""
    if _state.tracking_uri is None:
        raise RuntimeError("call hearth.registry.configure(settings) before using MLflow")
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = None
    if _state.artifact_root is not None:
        location = (_state.artifact_root / name).resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:
        # Parallel sweep tasks may race to create it; the loser reads the winner's.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return str(existing.experiment_id)


def start_parent_run(experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create a (sweep) parent run and return its id; pass it as `parent_run_id`."""
    client = MlflowClient()
    run = client.create_run(ensure_experiment(experiment), run_name=run_name, tags=tags or {})
    return str(run.info.run_id)


def end_run(run_id: str, failed: bool = False) -> None:
    """Close a run made by `start_parent_run`."""
    MlflowClient().set_terminated(run_id, "FAILED" if failed else "FINISHED")


# -- tracking ----------------------------------------------------------------------------
def recall_metric_name(report_precision: float) -> str:
    """``recall_at_p90`` for 0.9: the name says at which precision recall was measured."""
    return f"recall_at_p{round(report_precision * 100):d}"


def _final_metrics(
    result: TrainResult, test_metrics: dict[str, float], report_precision: float
) -> dict[str, float]:
    recall_name = recall_metric_name(report_precision)
    metrics: dict[str, float] = {}
    # "best_valid_": the per-epoch curves already own the plain "valid_pr_auc" name.
    for prefix, values in (("test", test_metrics), ("best_valid", result.valid_metrics)):
        for key, value in values.items():
            name = recall_name if key == "recall_at_precision" else key
            metrics[f"{prefix}_{name}"] = value
    metrics.update(
        best_epoch=float(result.best_epoch),
        epochs_run=float(len(result.history)),
        train_seconds=result.seconds,
        threshold_review=result.thresholds.review,
        threshold_decline=result.thresholds.decline,
    )
    return metrics


def _params(result: TrainResult, report_precision: float) -> dict[str, Any]:
    params: dict[str, Any] = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in result.config.model_dump().items()
    }
    params.update(result.data_sizes)
    params.update(
        pos_weight_used=round(result.pos_weight, 4),
        device_used=result.device,
        report_precision=report_precision,
    )
    return params


def _epoch_metrics(result: TrainResult) -> list[Metric]:
    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, int(entry["epoch"]))
        for entry in result.history
        for key, value in entry.items()
        if key != "epoch"
    ]


def log_training_run(
    result: TrainResult,
    lineage: Lineage,
    experiment: str,
    run_name: str,
    test_df: pd.DataFrame,
    thresholds: ThresholdParams,
    out_dir: Path,
    parent_run_id: str | None = None,
) -> str:
    """Log one training run (params, curves, test metrics, artifacts, model); its run id.

    Writes its artifacts under `out_dir` first, then logs them. Test metrics are computed
    here on `test_df`, so they describe exactly the frame the gate will use.
    """
    from hearth.model.evaluate import evaluate, pr_curve_png  # lazy: see the imports above

    experiment_id = ensure_experiment(experiment)
    scorer = result.scorer
    scorer_dir = scorer.save(Path(out_dir) / "scorer")
    test_scores = scorer.predict_proba(test_df)
    test_metrics = evaluate(test_df[LABEL], test_scores, thresholds.report_precision)
    png = pr_curve_png(
        test_df[LABEL],
        test_scores,
        Path(out_dir) / "pr_curve_test.png",
        title=f"{run_name}: test precision-recall",
        thresholds=result.thresholds,
    )
    thresholds_file = Path(out_dir) / "thresholds.json"
    thresholds_file.write_text(json.dumps(result.thresholds.to_dict(), indent=2))

    tags = {**lineage.as_tags(), "hearth.device": result.device}
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        parent_run_id=parent_run_id,
        # Only a run already active in this thread has to be declared nested.
        nested=mlflow.active_run() is not None,
        tags=tags,
    ) as run:
        run_id = str(run.info.run_id)
        client = MlflowClient()
        mlflow.log_params(_params(result, thresholds.report_precision))
        client.log_batch(run_id, metrics=_epoch_metrics(result))
        mlflow.log_metrics(_final_metrics(result, test_metrics, thresholds.report_precision))
        mlflow.log_artifact(str(png))
        mlflow.log_artifact(str(thresholds_file))
        mlflow.log_dict({"history": result.history}, "history.json")
        model_uri = _log_model(scorer_dir, test_df, test_scores)
        mlflow.set_tag(MODEL_URI_TAG, model_uri)
    log.info("logged run %s (%s): test pr_auc %.4f", run_name, run_id, test_metrics["pr_auc"])
    return run_id


def _log_model(scorer_dir: Path, test_df: pd.DataFrame, test_scores: Any) -> str:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from hearth.model.scorer import FraudPyfunc  # lazy: see the imports above

    example = test_df.loc[:, list(FEATURES)].head(_INPUT_EXAMPLE_ROWS).reset_index(drop=True)
    signature = infer_signature(example, test_scores[: len(example)])
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        # Models from code, not a cloudpickle of the object: nothing opaque is deserialised.
        python_model=str(PYFUNC_ENTRY),
        artifacts={FraudPyfunc.ARTIFACT: str(scorer_dir)},
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        # Declared so that a loader may override it: load_model(uri,
        # model_config={"inference_device": "cuda"}) scores on the GPU.
        model_config={"inference_device": "cpu"},
    )
    return str(info.model_uri)


# -- registration ------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrationDecision:
    """What the gate did with a newly registered version, and why."""

    version: int
    alias: str | None
    reason: str
    metric: str
    candidate_metric: float
    champion_version: int | None = None
    champion_metric: float | None = None

    @property
    def decision(self) -> str:
        return self.alias or "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


def model_uri_of_run(run_id: str) -> str:
    """The URI of the model that `log_training_run` logged in run `run_id`."""
    run = MlflowClient().get_run(run_id)
    return run.data.tags.get(MODEL_URI_TAG) or f"runs:/{run_id}/{MODEL_NAME_IN_RUN}"


def score_model(model_uri: str, test_df: pd.DataFrame, metric: str) -> float:
    """`metric` (pr_auc or roc_auc) of the pyfunc at `model_uri` on `test_df`."""
    missing = [c for c in (*FEATURES, LABEL) if c not in test_df.columns]
    if missing:
        raise ValueError(f"the test frame lacks columns: {', '.join(missing)}")
    import mlflow.pyfunc

    from hearth.model.evaluate import evaluate  # lazy: see the imports above

    model = mlflow.pyfunc.load_model(model_uri)
    scores = model.predict(test_df.loc[:, list(FEATURES)])
    value = evaluate(test_df[LABEL], scores, report_precision=0.9)[metric]
    if math.isnan(value):
        raise ValueError(f"{metric} is undefined on this test set (does it hold any fraud?)")
    return value


def _champion_version(client: MlflowClient, name: str) -> int | None:
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(CHAMPION)
    return int(version) if version is not None else None


def _decide(
    candidate: float,
    champion_version: int | None,
    champion: float | None,
    params: RegistryParams,
) -> tuple[str | None, str]:
    """(alias or None, reason) for a candidate scoring `candidate`."""
    metric, margin = params.promotion_metric, params.promotion_margin
    if champion_version is None or champion is None:
        return CHAMPION, f"first version: no {CHAMPION} yet ({metric} {candidate:.4f})"
    comparison = f"champion v{champion_version} {champion:.4f} + margin {margin:g}"
    if candidate >= champion + margin:
        return CHALLENGER, f"{metric} {candidate:.4f} >= {comparison}"
    return None, f"{metric} {candidate:.4f} < {comparison}"


def register_and_gate(
    run_id: str, test_df: pd.DataFrame, params: RegistryParams
) -> RegistrationDecision:
    """Register run `run_id`'s model as ``params.model_name`` and decide its alias.

    No champion yet → it becomes ``champion``. Otherwise both models are scored on the same
    `test_df`; the candidate becomes ``challenger`` only if its metric is at least the
    champion's plus the margin. A rejected version keeps no alias (no alias moves) and
    carries ``hearth.rejected_reason``. Every version carries ``hearth.decision``, the
    compared metrics and the run's lineage tags.
    """
    client = MlflowClient()
    name, metric = params.model_name, params.promotion_metric
    model_uri = model_uri_of_run(run_id)
    # Everything that can fail runs before the first write to the registry.
    candidate = score_model(model_uri, test_df, metric)
    champion_version = _champion_version(client, name)
    champion = None
    if champion_version is not None:
        champion = score_model(f"models:/{name}@{CHAMPION}", test_df, metric)
    alias, reason = _decide(candidate, champion_version, champion, params)

    lineage_tags = {
        k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("hearth.")
    }
    version = mlflow.register_model(model_uri, name, tags=lineage_tags)
    decision = RegistrationDecision(
        version=int(version.version),
        alias=alias,
        reason=reason,
        metric=metric,
        candidate_metric=candidate,
        champion_version=champion_version,
        champion_metric=champion,
    )
    _record(client, name, decision, run_id)
    log.info("%s v%s: %s (%s)", name, decision.version, decision.decision, reason)
    return decision


def _record(client: MlflowClient, name: str, decision: RegistrationDecision, run_id: str) -> None:
    version = str(decision.version)
    tags = {
        "hearth.decision": decision.decision,
        "hearth.reason": decision.reason,
        "hearth.gate_metric": decision.metric,
        f"hearth.candidate_{decision.metric}": f"{decision.candidate_metric:.6f}",
        "hearth.run_id": run_id,
    }
    if decision.champion_version is not None and decision.champion_metric is not None:
        tags["hearth.champion_version"] = str(decision.champion_version)
        tags[f"hearth.champion_{decision.metric}"] = f"{decision.champion_metric:.6f}"
    if decision.alias is None:
        tags["hearth.rejected_reason"] = decision.reason
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=decision.reason)
    if decision.alias is not None:
        client.set_registered_model_alias(name, decision.alias, version)
