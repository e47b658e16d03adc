"""Drift monitoring: PSI/KS on their own, then a whole pass over generated drifted data."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hearth.config import HearthContext, Settings
from hearth.data.etl import run_etl
from hearth.data.generate import generate
from hearth.monitoring.drift import categorical_psi, compare, numeric_psi
from hearth.monitoring.monitor import RetrainUnavailable, run_monitor
from hearth.params import MonitoringParams, Params
from hearth.traffic.prediction_log import DB_FILE, PredictionLog, PredictionRecord

BASE_DAYS, LIVE_DAYS = 14, 5
PARAMS = Params.model_validate(
    {
        "data": {"days": BASE_DAYS, "customers": 300, "seed": 11, "tx_per_customer_day": 2.0},
        "split": {"valid_days": 2, "test_days": 2},
    }
)


# -- the statistics -----------------------------------------------------------------------
def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 20_000)
    assert numeric_psi(ref, rng.normal(0, 1, 20_000), 10) < 0.01
    assert numeric_psi(ref, rng.normal(1, 1, 20_000), 10) > 0.5


def test_psi_handles_binary_features_and_unseen_levels() -> None:
    ref = np.array([0.0] * 900 + [1.0] * 100)
    assert numeric_psi(ref, ref.copy(), 10) == pytest.approx(0.0)
    assert numeric_psi(ref, np.array([0.0] * 500 + [1.0] * 500), 10) > 0.5
    assert categorical_psi(["web"] * 50, ["web"] * 50, ["web", "pos"]) == pytest.approx(0.0)
    assert categorical_psi(["web"] * 50, ["martian"] * 50, ["web", "pos"]) > 1.0


def test_too_few_live_rows_gives_no_verdict() -> None:
    ref = pd.DataFrame({"log_amount": np.arange(1000.0)})
    report = compare(ref, ref.head(10), None, None, MonitoringParams(min_live_rows=200))
    assert not report.retrain and report.skipped and "10 live rows" in report.skipped


# -- a whole pass over generated data ---------------------------------------------------------
def toy_score(frame: pd.DataFrame, version: str = "1") -> np.ndarray:
    """A fixed, monotone stand-in for the model: big, new-device, bursty → higher score."""
    z = (
        0.8 * (frame["log_amount"] - 4)
        + 1.5 * frame["is_new_device"]
        + 0.3 * frame["n_tx_1h"]
        + (frame["channel"] == "online") * 0.5
    )
    return np.asarray(1 / (1 + np.exp(-(z - 3))), dtype=float)


@pytest.fixture(scope="module")
def periods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    """Features of a 14-day base period followed by 5 days of each drift (offline ETL)."""
    root = tmp_path_factory.mktemp("drift")
    generate(root / "base", PARAMS.data)
    live_start = pd.Timestamp(PARAMS.data.start_date) + pd.Timedelta(days=BASE_DAYS)
    out = {}
    for drift in ("none", "spending"):
        raw = root / drift
        shutil.copytree(root / "base", raw)
        later = PARAMS.data.model_copy(update={"days": LIVE_DAYS})
        generate(raw, later, drift=drift, start_date=live_start.date())
        run_etl(raw, root / f"processed-{drift}", root / f"quarantine-{drift}", PARAMS)
        splits = [pd.read_parquet(root / f"processed-{drift}" / f"{s}.parquet") for s in
                  ("train", "valid", "test")]  # fmt: skip
        frame = pd.concat(splits, ignore_index=True)
        out[drift] = frame[frame["timestamp"] >= live_start].reset_index(drop=True)
        if drift == "none":
            # The reference: base days with full history windows (as the train split would).
            base = frame[frame["timestamp"] < live_start]
            out["reference"] = base[base["timestamp"] >= base["timestamp"].min() + timedelta(7)]
    return out


def _project(settings: Settings, reference: pd.DataFrame, live: pd.DataFrame) -> HearthContext:
    """A Hearth home whose train split is `reference` and whose prediction log holds `live`."""
    settings.processed_dir.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(settings.processed_dir / "train.parquet")
    log = PredictionLog(settings.serving_dir / DB_FILE)
    scores = toy_score(live)
    keys = ("transaction_id", "timestamp", "customer_id", "is_fraud")
    features = live.loc[:, [c for c in live.columns if c not in keys]]
    rows = features.to_dict("records")
    preds = [
        PredictionRecord(
            transaction_id=str(tid), request_id="r", variant="champion", model_version="1",
            score=float(p), decision="approve", latency_ms=None, features=row,
        )
        for tid, p, row in zip(live["transaction_id"], scores, rows, strict=True)
    ]  # fmt: skip
    log.record_entries(preds)
    log.close()
    return HearthContext(settings, PARAMS)


class Triggers:
    """Captures retraining triggers instead of starting a Prefect deployment."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, deployment: str, parameters: dict[str, Any]) -> str:
        self.calls.append((deployment, parameters))
        return "flow-run-id"


def test_spending_drift_is_detected_and_triggers_retraining(
    settings: Settings, periods: dict[str, pd.DataFrame]
) -> None:
    ctx = _project(settings, periods["reference"], periods["spending"])
    triggers = Triggers()
    result = run_monitor(ctx, score=toy_score, trigger=triggers)
    assert result.report.retrain, result.report
    assert {"log_amount"} <= set(result.report.drifted_features)
    assert result.report.scores is not None and result.report.scores.statistic >= 0.1
    assert triggers.calls == [("train/train-weekly", {})]
    assert result.triggered == "flow-run-id"
    text = result.markdown_path.read_text()
    assert "**retrain**" in text and "log_amount" in text
    assert result.png_path.read_bytes()[:4] == b"\x89PNG"


def test_stable_data_triggers_nothing(settings: Settings, periods: dict[str, pd.DataFrame]) -> None:
    ctx = _project(settings, periods["reference"], periods["none"])
    triggers = Triggers()
    result = run_monitor(ctx, score=toy_score, trigger=triggers)
    assert not result.report.retrain, result.report.reasons
    assert max(result.report.psi.values()) < ctx.params.monitoring.psi_threshold
    assert triggers.calls == []
    assert "no action" in result.markdown_path.read_text()


def test_an_unreachable_prefect_is_reported_not_raised(
    settings: Settings, periods: dict[str, pd.DataFrame]
) -> None:
    ctx = _project(settings, periods["reference"], periods["spending"])

    def unreachable(deployment: str, parameters: dict[str, Any]) -> str:
        raise RetrainUnavailable(f"could not start {deployment!r}: connection refused")

    result = run_monitor(ctx, score=toy_score, trigger=unreachable)
    assert result.report.retrain and result.triggered is None
    assert result.trigger_error and "connection refused" in result.trigger_error


def test_old_prediction_logs_without_features_are_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / DB_FILE
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE predictions (transaction_id TEXT NOT NULL, request_id TEXT NOT NULL,"
        " variant TEXT NOT NULL, model_version TEXT NOT NULL, score REAL NOT NULL,"
        " decision TEXT NOT NULL, at REAL NOT NULL)"
    )
    con.commit()
    con.close()
    log = PredictionLog(db)
    assert log.rows("predictions") == []
    log.close()
