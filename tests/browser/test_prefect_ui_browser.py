"""The Prefect UI in a real browser, on a real `prefect server` with its UI: a rollout
round's verdict, posted by the rollout flow's own `post_round` from a flow run, shows under
its stable key (Artifacts → rollout-verdict) with its decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from flows import _artifacts as posts
from hearth.observability.artifacts import ROLLOUT_VERDICT
from hearth.rollout.flow_steps import RoundResult
from tests import prefect_api
from tests.browser.conftest import Servers, foreign, requested_urls, screenshot

pytestmark = pytest.mark.slow


@flow(name="rollout-round", persist_result=False)
def _post(result: RoundResult) -> bool:
    return posts.post_round(result)


def test_the_prefect_ui_shows_the_rollout_verdict(
    browser: WebDriver, servers: Servers, rollout_round: RoundResult, tmp_path: Path
) -> None:
    result = rollout_round
    decision = result.verdict.decision
    with temporary_settings({PREFECT_API_URL: f"{servers.prefect}/api"}):
        assert _post(result)
        (artifact,) = prefect_api.artifacts(ROLLOUT_VERDICT)
    assert prefect_api.items(artifact)["decision"] == decision

    # Artifacts → rollout-verdict: the key's history, the newest description on top.
    requested_urls(browser)
    browser.get(f"{servers.prefect}/artifacts/key/{ROLLOUT_VERDICT}")
    WebDriverWait(browser, 60).until(
        lambda d: f"round 3 at 50 %: {decision}" in d.find_element(By.TAG_NAME, "body").text
    )
    # The artifact itself: the verdict's table, its decision row among them.
    browser.get(f"{servers.prefect}/artifacts/artifact/{artifact.id}")
    row = f"//tr[td[normalize-space()='decision'] and td[normalize-space()='{decision}']]"
    WebDriverWait(browser, 60).until(
        lambda d: any(e.is_displayed() for e in d.find_elements(By.XPATH, row))
    )
    screenshot(browser, tmp_path, "prefect-rollout-verdict")
    assert foreign(requested_urls(browser), servers.prefect) == []
