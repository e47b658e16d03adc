"""The API page in a real browser, on a real monolith: fill the API key, try `/predict`
out with the page's own example, and read the answer on the page; nothing the page loads
leaves the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hearth import __version__
from tests.browser.conftest import Servers, foreign, requested_urls, screenshot
from tests.projects import API_KEY

pytestmark = pytest.mark.slow

PREDICT = "#operations-default-predict_predict_post"


def _css(driver: WebDriver, selector: str, timeout: float = 30) -> object:
    return WebDriverWait(driver, timeout).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, selector))
    )


def test_the_api_page_sends_a_predict_and_shows_the_answer(
    browser: WebDriver, servers: Servers, tmp_path: Path
) -> None:
    origin = servers.api_url
    requested_urls(browser)  # only this page's requests from here
    browser.get(f"{origin}/")
    title = _css(browser, ".information-container .title")
    assert "Hearth fraud scoring API" in title.text and __version__ in title.text  # type: ignore[attr-defined]
    assert browser.title == f"Hearth fraud scoring API {__version__}"

    # Authorize: the API key into its scheme (X-API-Key), then close the dialog.
    _css(browser, ".auth-wrapper .authorize").click()  # type: ignore[attr-defined]
    schemes = WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".auth-container")
    )
    (api_key,) = [s for s in schemes if "X-API-Key" in s.text]
    api_key.find_element(By.CSS_SELECTOR, "input").send_keys(API_KEY)
    api_key.find_element(By.CSS_SELECTOR, "button.authorize").click()
    _css(browser, ".auth-btn-wrapper .btn-done").click()  # type: ignore[attr-defined]

    # /predict: Try it out with the example as it is, Execute.
    _css(browser, f"{PREDICT} .opblock-summary").click()  # type: ignore[attr-defined]
    _css(browser, f"{PREDICT} .try-out__btn").click()  # type: ignore[attr-defined]
    _css(browser, f"{PREDICT} .execute").click()  # type: ignore[attr-defined]
    answer = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"{PREDICT} .live-responses-table")
    )
    status = answer.find_element(By.CSS_SELECTOR, ".response .response-col_status").text
    body = answer.find_element(By.CSS_SELECTOR, ".response .response-col_description").text
    assert status == "200", body
    assert '"transaction_id": "tx-docs-1"' in body and '"fraud_probability"' in body
    assert '"variant": "champion"' in body

    screenshot(browser, tmp_path, "api-page", down_to=f"{PREDICT} .live-responses-table")
    urls = requested_urls(browser)
    assert f"{origin}/openapi.json" in urls and f"{origin}/predict" in urls
    assert foreign(urls, origin) == []
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []  # no request refused by the page's Content-Security-Policy, no error
