"""The Prefect UI in a real browser, on a real `prefect server` with its UI: a rollout
round's verdict, posted by the rollout flow's own `post_round` from a flow run, shows under
its stable key (Artifacts → rollout-verdict) with its decision."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from flows import _artifacts as posts
from hearth.observability.artifacts import ROLLOUT_VERDICT
from hearth.params import RolloutParams
from hearth.rollout.flow_steps import RoundResult
from hearth.rollout.statistics import RequestRecord
from hearth.rollout.verdict import analyse
from hearth.traffic.rollout_state import new_rollout
from tests import prefect_api
from tests.browser.conftest import Servers, foreign, requested_urls, screenshot

pytestmark = pytest.mark.slow


def _requests(variant: str, quality: float, seed: int, n: int = 4000) -> list[RequestRecord]:
    """`n` labelled requests of a model whose separation of fraud grows with `quality`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    scores = 1 / (1 + np.exp(-(-4.0 + 4.0 * quality * y + rng.normal(0, 1.2, n))))
    latency = rng.lognormal(math.log(5.0), 0.3, n)
    return [
        RequestRecord(variant, True, float(latency[i]), float(scores[i]), int(y[i]))
        for i in range(n)
    ]


def _last_round() -> RoundResult:
    """The last round of a canary whose challenger is clearly better: judged as the rollout
    flow judges it (`analyse`), the state it leaves."""
    params = RolloutParams()
    state = new_rollout("1", "2", params)
    rows = _requests("champion", 1.0, 1) + _requests("challenger", 1.6, 2)
    verdict = analyse(rows, params, 0.5, last_step=True)
    ended = state.ended("promoted") if verdict.decision == "promote" else state
    return RoundResult(3, verdict, verdict.decision, ended, len(rows), 0.5, 50.0)


@flow(name="rollout-round", persist_result=False)
def _post(result: RoundResult) -> bool:
    return posts.post_round(result)


def test_the_prefect_ui_shows_the_rollout_verdict(
    browser: WebDriver, servers: Servers, tmp_path: Path
) -> None:
    result = _last_round()
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
