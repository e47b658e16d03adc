"""What Hearth does: the models of `params.yaml` (DVC's params), validated on load.

Where Hearth keeps things and how it reaches its servers is `hearth.config.Settings`; this
module is what a run is asked to do (data size, splits, training, thresholds, the rollout's
analysis and its named profiles, monitoring). `load_params` reads the file; a missing file
means every default.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConfigError(ValueError):
    """A configuration file or setting is invalid; the message says which and how to fix it."""


# -- the models ---------------------------------------------------------------------------
class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataParams(_Frozen):
    """Size and shape of the generated default data."""

    days: int = Field(30, ge=1)
    customers: int = Field(2000, ge=1)
    seed: int = 7
    start_date: date = date(2026, 1, 1)
    tx_per_customer_day: float = Field(1.5, gt=0)
    fraud_rate: float = Field(0.01, ge=0, le=0.2)
    dirty_rate: float = Field(0.005, ge=0, le=0.5)


class SplitParams(_Frozen):
    """Time split: the last days are held out, never the other way round."""

    valid_days: int = Field(5, ge=1)
    test_days: int = Field(5, ge=1)


class EtlParams(_Frozen):
    memory_limit: str = "2GB"
    threads: int = Field(2, ge=1)


class ValidationParams(_Frozen):
    raw_max_bad_fraction: float = Field(0.05, ge=0, le=1)
    label_rate_min: float = Field(0.002, ge=0, le=1)
    label_rate_max: float = Field(0.05, ge=0, le=1)
    feature_mean_tolerance: float = Field(
        0.5, gt=0, description="Allowed drift of a feature's mean, in reference std units."
    )


class TrainParams(_Frozen):
    experiment: Path = Path("experiments/default.yaml")


class RegistryParams(_Frozen):
    model_name: str = "fraud-detector"
    promotion_metric: Literal["pr_auc", "roc_auc"] = "pr_auc"
    promotion_margin: float = Field(0.005, ge=0)


class ThresholdParams(_Frozen):
    """How the decision thresholds are picked on validation data."""

    decline_precision: float = Field(0.8, gt=0, le=1)
    review_recall: float = Field(0.9, gt=0, le=1)
    report_precision: float = Field(
        0.9, gt=0, le=1, description="Recall is reported at this precision."
    )


class RolloutParams(_Frozen):
    """How a rollout moves traffic and when its analysis promotes, holds or rolls back.

    Sample minimums are per variant. Guard rails (``guard_*``, ``max_p99_latency_ms``, and
    non-finite scores) act on any sample size; every other check waits for the minimums.
    """

    mode: Literal["canary", "ab", "shadow"] = "canary"
    steps: tuple[float, ...] = Field((5.0, 25.0, 50.0, 100.0), min_length=1)
    buckets: int = Field(10_000, ge=100, description="Hash buckets customers are spread over.")
    refresh_interval_s: float = Field(
        0.5, gt=0, le=1.0, description="How stale a replica's view of the state may get."
    )
    step_wait_s: float = Field(60.0, gt=0, description="Least time a step runs before analysis.")
    ab_split_percent: float = Field(50.0, gt=0, lt=100, description="Challenger share in A/B.")
    min_samples: int = Field(200, ge=1, description="Requests per variant before any verdict.")
    min_labelled: int = Field(500, ge=1, description="Labelled requests per variant for quality.")
    min_positives: int = Field(10, ge=1, description="Labelled frauds per variant for quality.")
    min_fraud_customers: int = Field(
        10,
        ge=1,
        description="Customers with a labelled fraud per variant for quality: frauds come in "
        "bursts per customer, and the quality bootstrap resamples customers.",
    )
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)
    max_p99_ratio: float = Field(1.5, ge=1, description="Challenger p99 / champion p99 allowed.")
    p99_slack_ms: float = Field(
        20.0, ge=0, description="A p99 increase this small (ms) passes whatever the ratio."
    )
    max_p99_latency_ms: float = Field(500.0, gt=0, description="Hard limit: a guard rail.")
    guard_error_rate: float = Field(0.2, gt=0, le=1, description="Error-rate spike: a guard rail.")
    guard_min_events: int = Field(
        3, ge=1, description="Errors (or too-slow requests) a guard rail needs to act."
    )
    max_psi: float = Field(0.25, gt=0, description="Score-distribution shift allowed (PSI).")
    psi_bins: int = Field(10, ge=2, le=100)
    pr_auc_tolerance: float = Field(0.02, ge=0, le=1, description="Non-inferiority margin.")
    recall_tolerance: float = Field(0.05, ge=0, le=1, description="Non-inferiority margin.")
    significance: float = Field(0.05, gt=0, lt=0.5, description="One-sided test level (alpha).")
    bootstrap_resamples: int = Field(400, ge=50)
    quality_test: Literal["bootstrap", "sequential", "paired"] = Field(
        "bootstrap",
        description="How quality differences are bounded: `bootstrap` (a fixed-sample "
        "customer-cluster bootstrap interval, valid for one look) or `sequential` (an "
        "always-valid confidence sequence, valid however often the rounds look).",
    )
    sequential_tau: float = Field(
        0.05,
        gt=0,
        description="Spread of the normal mixture over differences (sequential test): the "
        "bounds are tightest (~3 standard errors) when the standard error is about tau / 3.",
    )
    jackknife_groups: int = Field(
        20, ge=5, le=200, description="Customer groups of the sequential test's jackknife."
    )
    ab_budget_labelled: int = Field(
        20_000, ge=1, description="A/B ends without a clear win after this many labels/variant."
    )
    seed: int = 0
    profiles: dict[str, RolloutParams] = Field(
        default_factory=dict,
        description="Named variants of these values: each states only what it changes and "
        "takes the rest from above; a rollout picks one by name (e.g. the main job's `demo`).",
    )

    @model_validator(mode="before")
    @classmethod
    def _profiles_start_from_these_values(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("profiles"):
            return data
        base = {k: v for k, v in data.items() if k != "profiles"}
        profiles = {}
        for name, changes in data["profiles"].items():
            changes = dict(changes or {})
            if changes.get("profiles"):
                raise ValueError(f"rollout profile {name!r} cannot hold profiles of its own")
            profiles[name] = {**base, **changes, "profiles": {}}
        return {**data, "profiles": profiles}

    def profile(self, name: str | None) -> RolloutParams:
        """The values a rollout runs with: the profile `name`, or these (None); no profiles."""
        if name is None:
            return self.model_copy(update={"profiles": {}})
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(
                f"params.yaml has no rollout profile {name!r} (rollout.profiles: {known})"
            ) from None

    @model_validator(mode="after")
    def _steps_ascend_to_100(self) -> Self:
        steps = self.steps
        if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"rollout steps must ascend strictly within (0, 100], got {steps}")
        if steps[-1] != 100:
            raise ValueError(f"the last rollout step must be 100, got {steps[-1]}")
        return self


class MonitoringParams(_Frozen):
    """When live traffic has drifted far enough from the training reference to retrain."""

    window_hours: float = Field(24.0, gt=0, description="Live predictions looked at.")
    min_live_rows: int = Field(200, ge=1, description="Fewer live rows: no verdict.")
    reference_rows: int = Field(20_000, ge=100, description="Sample of the train split.")
    psi_bins: int = Field(10, ge=2, le=100)
    psi_threshold: float = Field(0.2, gt=0, description="A feature with PSI above drifted.")
    min_drifted_features: int = Field(1, ge=1, description="Drifted features to retrain.")
    ks_threshold: float = Field(0.1, gt=0, le=1, description="KS statistic on scores to retrain.")
    ks_alpha: float = Field(0.01, gt=0, lt=1, description="KS p-value must also be below this.")
    retrain_deployment: str = Field(
        "train/train-weekly", description="Prefect deployment run when drift calls for it."
    )


class Params(_Frozen):
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    etl: EtlParams = EtlParams()
    validation: ValidationParams = ValidationParams()
    train: TrainParams = TrainParams()
    registry: RegistryParams = RegistryParams()
    thresholds: ThresholdParams = ThresholdParams()
    rollout: RolloutParams = RolloutParams()
    monitoring: MonitoringParams = MonitoringParams()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return loaded


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and validate `params.yaml`; a missing file means all defaults."""
    if not path.exists():
        return Params()
    try:
        return Params.model_validate(_read_yaml(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
