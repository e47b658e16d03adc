"""The MLflow UI in a real browser, served by a real `mlflow server` over the project's
registry: the registered model's champion version shows its `champion` alias, and a
rollout's run (experiment `rollouts`, logged by the rollout flow's own calls) its verdict."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from hearth.params import Params
from hearth.rollout.flow_steps import (
    MLFLOW_EXPERIMENT,
    RolloutPlan,
    RoundResult,
    log_round,
    start_mlflow_run,
)
from tests.browser.conftest import Servers, foreign, requested_urls, screenshot
from tests.projects import project_settings, registry_uri

pytestmark = pytest.mark.slow

NAME = Params().registry.model_name
ALIAS = "//*[text()='champion']"  # the alias tag ("@ champion") next to "Aliases:"
SOURCE_RUN = "a[href*='/runs/']"


def test_the_mlflow_ui_shows_the_champion_alias(
    browser: WebDriver, project: Path, servers: Servers, tmp_path: Path
) -> None:
    champion = MlflowClient(registry_uri(project)).get_model_version_by_alias(NAME, "champion")
    mlflow_url = servers.mlflow
    requested_urls(browser)
    browser.get(f"{mlflow_url}/#/models/{NAME}/versions/{champion.version}")
    # The version page names the model and version, and shows its aliases as tags.
    WebDriverWait(browser, 60).until(
        lambda d: f"Version {champion.version}" in d.find_element(By.TAG_NAME, "body").text
    )
    WebDriverWait(browser, 30).until(
        lambda d: any(e.is_displayed() for e in d.find_elements(By.XPATH, ALIAS))
    )
    WebDriverWait(browser, 30).until(  # and the link to the run that logged it
        lambda d: any(e.is_displayed() for e in d.find_elements(By.CSS_SELECTOR, SOURCE_RUN))
    )
    screenshot(browser, tmp_path, "mlflow-model-version")
    assert foreign(requested_urls(browser), mlflow_url) == []


def _log_rollout_run(project: Path, result: RoundResult) -> str:
    """The rollout's MLflow run as the rollout flow logs it (one round); its id."""
    plan = RolloutPlan.make(Params(), step_wait_s=1, max_wait_s=60)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        run_id = start_mlflow_run(project_settings(project), result.state, plan, NAME)
        log_round(run_id, result)
        MlflowClient().set_terminated(run_id, "FINISHED")  # as end_mlflow_run closes it
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    return run_id


def test_the_mlflow_ui_shows_the_rollout_run(
    browser: WebDriver,
    project: Path,
    servers: Servers,
    rollout_round: RoundResult,
    tmp_path: Path,
) -> None:
    run_id = _log_rollout_run(project, rollout_round)
    client = MlflowClient(registry_uri(project))
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    assert experiment is not None
    requested_urls(browser)
    browser.get(f"{servers.mlflow}/#/experiments/{experiment.experiment_id}/runs/{run_id}")
    rollout_id, decision = rollout_round.state.rollout_id, rollout_round.verdict.decision
    # The run page: named after the rollout, its verdict among the tags.
    WebDriverWait(browser, 60).until(
        lambda d: rollout_id in d.find_element(By.TAG_NAME, "body").text
    )
    WebDriverWait(browser, 30).until(
        lambda d: "rollout.decision" in d.find_element(By.TAG_NAME, "body").text
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert decision in body and "hearth.challenger_version" in body
    screenshot(browser, tmp_path, "mlflow-rollout-run")
    assert foreign(requested_urls(browser), servers.mlflow) == []
