"""Browser checks: headless Chromium (Debian's `chromium`) driven by Selenium through
Debian's `chromium-driver`, against real servers. Skipped, with the reason, where either is
missing (`make system-deps` installs both). One browser, one tiny project and one set of
servers per session, the servers started side by side.

Each test saves what it shows under its tmp_path (`screenshot`); with
HEARTH_SCREENSHOTS_DIR set (`make screenshots`) the picture is copied there too, under the
name the README uses.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from hearth.launch.hearth_server import ServerProcess
from hearth.launch.launcher import free_port, launched
from hearth.rollout.flow_steps import RoundResult
from tests.browser.rollout_round import last_round
from tests.projects import clean_environ, mlflow_server, project_servers, trained_copy

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = (
    "chromium and chromedriver are not both installed (`make system-deps`, or "
    "apt-get install chromium chromium-driver)"
)
# No first-run, sync, component updates or other background calls to Google's servers.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
    "--window-size=1280,943", "--hide-scrollbars", "--force-device-scale-factor=1",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--disable-domain-reliability", "--metrics-recording-only",
)  # fmt: skip


@pytest.fixture(scope="session")
def project(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny project with a registered champion for every browser test: a copy of the
    session's `tiny_project` (tests/conftest.py)."""
    return trained_copy(tiny_project, tmp_path_factory.mktemp("browser-project"))


@pytest.fixture(scope="session")
def rollout_round() -> RoundResult:
    """One judged rollout round (a promotion), for the Prefect and MLflow pages."""
    return last_round()


@dataclass(frozen=True)
class Servers:
    api: ServerProcess  # a monolith serving the project's champion
    mlflow: str  # the URL of an MLflow server (UI and API) over the project's registry
    prefect: str  # the URL of a Prefect server with its UI (its API under /api)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"


@contextmanager
def prefect_ui_server(home: Path, port: int) -> Iterator[str]:
    """`prefect server start` with its UI on loopback `port` and its own home (the test
    harness's server has no UI); its URL. Stopped (its process group) when the block ends."""
    url = f"http://127.0.0.1:{port}"
    env = clean_environ("PREFECT_", "HEARTH_")
    # The UI calls the API it is told of (default: port 4200), not the one serving it.
    env.update(PREFECT_HOME=str(home), PREFECT_UI_API_URL=f"{url}/api")
    cmd = [sys.executable, "-m", "prefect", "server", "start",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log, ready = home / "prefect-server.log", f"{url}/api/health"
    with launched("Prefect", cmd, env, home, log, ready, timeout_s=180, append=True):
        yield url


@pytest.fixture(scope="session")
def servers(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The servers the browser tests look at, started together (each stopped after)."""
    mlflow_port = free_port()
    mlflow_log = tmp_path_factory.mktemp("browser-mlflow") / "mlflow.log"
    prefect_home = tmp_path_factory.mktemp("browser-prefect")
    with ExitStack() as stack, ThreadPoolExecutor(3) as pool:
        mlflow = pool.submit(stack.enter_context, mlflow_server(project, mlflow_port, mlflow_log))
        prefect = pool.submit(stack.enter_context, prefect_ui_server(prefect_home, free_port()))
        api = pool.submit(
            stack.enter_context,
            project_servers(project, tmp_path_factory, "browser", ("monolith",)),
        )
        mlflow.result()
        yield Servers(api.result()["monolith"], f"http://127.0.0.1:{mlflow_port}", prefect.result())


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium through /usr/bin/chromedriver; Selenium Manager never downloads."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(NO_BROWSER)
    os.environ["SE_OFFLINE"] = "true"

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=CHROMEDRIVER, log_output=str(log))
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str, down_to: str = "") -> Path:
    """`name`.png under `tmp_path` (and in HEARTH_SCREENSHOTS_DIR): the window as it shows,
    or with `down_to` (a CSS selector) the page from its top to that element's bottom."""
    path = tmp_path / f"{name}.png"
    if down_to:
        bottom = driver.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return Math.ceil(r.bottom + window.scrollY) + 16;",
            down_to,
        )
        width = driver.execute_script("return document.documentElement.clientWidth;")
        clip = {"x": 0, "y": 0, "width": width, "height": bottom, "scale": 1}
        shot = driver.execute_cdp_cmd(  # type: ignore[attr-defined]
            "Page.captureScreenshot", {"clip": clip, "captureBeyondViewport": True}
        )
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        assert driver.save_screenshot(str(path)), path
    target = os.environ.get("HEARTH_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)
    return path


def requested_urls(driver: WebDriver) -> list[str]:
    """The URLs the browser requested since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign(urls: list[str], origin: str) -> list[str]:
    """Those of `urls` that leave `origin` (data: and about: URLs stay in the page)."""
    here = urlsplit(origin).netloc
    return [u for u in urls if urlsplit(u).scheme not in ("data", "about", "blob")
            and urlsplit(u).netloc != here]  # fmt: skip
