"""The MLflow UI in a real browser, served by a real `mlflow server` over the project's
registry: the registered model's champion version shows its `champion` alias."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from hearth.params import Params
from tests.browser.conftest import Servers, foreign, requested_urls, screenshot
from tests.projects import registry_uri

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
