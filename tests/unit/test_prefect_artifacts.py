"""What the flows post as Prefect artifacts: the tables and Markdown, and that posting is a
no-op outside a flow run and never fails one (the posting itself: tests/integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows import _artifacts as posts
from hearth.observability import artifacts as art
from hearth.registry import RegistrationDecision
from hearth.validation.results import FailedExpectation, ValidationResult


def test_outside_a_flow_run_nothing_is_posted(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.artifacts

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no artifact outside a run")

    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", never)
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", never)
    assert not art.in_prefect_run()
    assert art.post_table(art.VALIDATION_GATE, [{"a": 1}]) is False
    assert art.post_markdown(art.ROLLOUT_REPORT, "# x") is False


def test_a_failed_post_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import prefect.artifacts

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Prefect API unreachable")

    monkeypatch.setattr(art, "in_prefect_run", lambda: True)
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", down)
    assert art.post_markdown(art.ROLLOUT_REPORT, "# x") is False
    assert "rollout-report not posted: Prefect API unreachable" in caplog.text


def test_keys_are_what_prefect_accepts() -> None:
    import re

    keys = [v for k, v in vars(art).items() if k.isupper() and isinstance(v, str)]
    assert len(keys) == 7 and all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys), keys


def test_validation_table_has_every_suite_and_failed_expectation_per_drop() -> None:
    failed = FailedExpectation("raw", "2026-03-02.csv", "expect_column_values_to_be_between",
                               "amount", "3.1 % unexpected")  # fmt: skip
    results = [
        ValidationResult("raw", False, 3, 40, (failed,), None),
        ValidationResult("processed", True, 1, 12, (), None),
    ]
    rows = posts.validation_rows(results)
    assert rows[0] == {"suite": "raw", "drop": "2026-03-02.csv", "column": "amount",
                       "expectation": "expect_column_values_to_be_between",
                       "details": "3.1 % unexpected", "result": "failed"}  # fmt: skip
    assert (rows[1]["suite"], rows[1]["result"]) == ("processed", "passed")
    assert "12 expectations passed" in rows[1]["details"]


def test_registration_markdown_says_the_decision_and_why() -> None:
    md = posts.registration_markdown(
        RegistrationDecision(2, None, "PR-AUC below the champion's", "test_pr_auc", 0.41, 1, 0.6)
    )
    assert "**rejected**" in md and "PR-AUC below the champion's" in md and "v1 (" in md


def test_mlflow_links_point_at_the_ui() -> None:
    assert art.mlflow_ui_base("sqlite:////x/mlflow.db", "0.0.0.0", 5001) == "http://127.0.0.1:5001"
    assert art.mlflow_ui_base("http://mlflow:5000/", "h", 1) == "http://mlflow:5000"
    assert art.mlflow_run_url("http://m", "3", "abc") == "http://m/#/experiments/3/runs/abc"


def test_png_is_embedded_as_a_data_uri(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n")
    assert art.png_data_uri(png) == "data:image/png;base64,iVBORw0K"


def test_drift_table_lists_each_feature_by_psi_and_the_score_test() -> None:
    from hearth.monitoring.drift import DriftReport, ScoreShift

    report = DriftReport(1000, 300, {"amount": 0.02, "hour": 0.41, "merchant": float("nan")},
                         ScoreShift(0.2, 0.001, 0.05, 0.09), ["hour"], True,
                         ["PSI of hour 0.41 > 0.2", "score KS p=0.001"])  # fmt: skip
    rows = posts.drift_rows(report)
    assert [(r["feature"], r["drifted"]) for r in rows[:3]] == [
        ("hour", True), ("amount", False), ("merchant", False)
    ]  # fmt: skip
    assert rows[3]["feature"] == "model score (KS)" and rows[3]["ks_pvalue"] == 0.001
