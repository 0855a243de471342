"""The web app in a real browser (headless system Chromium through Selenium) on the bundled demo model: an oversized
upload refused, then upload, mask preview, accept, plan, run, and the video and manifest downloaded.

Screenshots of each step are kept in $SCAIL2_SCREENSHOTS (default: a folder of the test's tmp_path). Skipped when
Chromium, its driver, Selenium or Gradio are missing (`.ci/run` installs them)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("gradio")
if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
    pytest.skip("no system Chromium/chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from scail2.app.ui import AppConfig, launch  # noqa: E402
from scail2.app.workflow import UploadLimits  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2400",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("SCAIL2_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def app_url(tmp_path):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port = _free_port()
    config = AppConfig(limits=UploadLimits(max_side=256), root=tmp_path / "sessions")
    blocks = launch(config, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _upload(browser, elem_id: str, path: Path) -> None:
    field = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
    field.send_keys(str(path))


def _wait_text(browser, elem_id: str, text: str, timeout: float = 60) -> str:
    def shown(driver):
        content = driver.find_element(By.ID, elem_id).text
        return content if text in content else False

    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(shown)


def _click(browser, elem_id: str) -> None:
    button = browser.find_element(By.ID, elem_id)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def test_the_whole_flow_in_a_browser(app_url, browser, app_inputs, screenshots, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(big)
    browser.get(app_url)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ref_upload input[type=file]"))

    _upload(browser, "ref_upload", big)  # over the 256-pixel limit: refused before any work
    _wait_text(browser, "upload_status", "over the 256-pixel limit")
    browser.save_screenshot(str(screenshots / "1-oversized-refused.png"))

    browser.find_element(By.CSS_SELECTOR, "#ref_upload button[aria-label='Clear']").click()
    _upload(browser, "ref_upload", app_inputs["ref"])
    _upload(browser, "driving_upload", app_inputs["video"])
    _wait_text(browser, "upload_status", "Inputs accepted (17 driving frames)")

    _click(browser, "make_masks")
    _wait_text(browser, "mask_status", "Masks by motion: 1 character(s) (blue)")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#identities img"))
    browser.save_screenshot(str(screenshots / "2-mask-preview.png"))

    _click(browser, "accept_masks")
    _wait_text(browser, "mask_status", "Masks accepted")
    _click(browser, "plan")
    _wait_text(browser, "plan_text", "1 segment(s) x 10 steps")
    browser.save_screenshot(str(screenshots / "3-plan.png"))

    _click(browser, "run")
    _wait_text(browser, "run_status", "Done: segment 1/1, step 10/10", timeout=120)
    browser.save_screenshot(str(screenshots / "4-result.png"))

    links = {
        Path(link.get_attribute("href").split("?")[0]).name: link.get_attribute("href")
        for link in browser.find_elements(By.CSS_SELECTOR, "#downloads a[href]")
    }
    assert {"output.mp4", "output.json"} <= set(links), links
    with urllib.request.urlopen(links["output.json"], timeout=30) as response:
        manifest = json.loads(response.read())
    assert manifest["frames"] == 17 and manifest["bundled_model"]  # the bundled demo model ran
    with urllib.request.urlopen(links["output.mp4"], timeout=30) as response:
        assert response.read(12)[4:8] == b"ftyp"  # an MP4
