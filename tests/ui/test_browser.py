"""The page in a real browser (Debian's headless Chromium through Selenium): upload a Flickr8k JPEG, choose
"Both", read the captions from the page; they equal the SDK's. Nothing is fetched beyond loopback. A page
started with logins shows Gradio's login form first: a wrong password stays out, the right one captions."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}
USER, PASSWORD = "tester", "correct horse battery staple"


@pytest.fixture(scope="module")
def page_url(server):
    from captioning.server.launcher import free_port
    from captioning.ui.app import launch

    port = free_port()
    page = launch(server.grpc_url, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def auth_page_url(server):
    from captioning.server.launcher import free_port
    from captioning.ui.app import launch

    port = free_port()
    page = launch(server.grpc_url, "127.0.0.1", port, block=False, auth=[(USER, PASSWORD)])
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail(
            "chromium and chromium-driver are not installed (scripts/install-system-deps.sh installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        "--lang=en",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    yield driver
    driver.quit()


def _value(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).get_attribute("value") or ""


def _caption_in_page(driver, image: Path) -> tuple[str, str]:
    """Upload `image` on the Caption tab, choose "Both", press Caption: the (English, Arabic) it shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image-input input[type=file]")))
    upload.send_keys(str(image))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image-input img")))
    driver.find_element(
        By.XPATH, "//*[@id='lang']//label[.//*[normalize-space()='Both'] or normalize-space()='Both']"
    ).click()
    driver.find_element(By.CSS_SELECTOR, "#caption-button").click()
    wait.until(lambda d: _value(d, "#caption-ar textarea") != "")
    return _value(driver, "#caption-en textarea"), _value(driver, "#caption-ar textarea")


def test_caption_both_languages_in_a_real_browser(server, page_url, browser, flickr_images, tmp_path):
    from captioning.client import CaptionClient

    image = flickr_images[5]
    with CaptionClient(server.grpc_url) as client:
        expected = client.caption(str(image))
    browser.get(page_url)
    assert _caption_in_page(browser, image) == (expected.english, expected.arabic)
    assert _value(browser, "#caption-time textarea").endswith(" s")
    shot = tmp_path / "ui.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("CAPTIONING_SAVE_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(shot, ROOT / "docs" / "images" / "ui.png")


def test_an_unreadable_image_shows_the_servers_reason(page_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    browser.get(page_url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(broken))
    time.sleep(1.0)
    browser.find_element(By.CSS_SELECTOR, "#caption-button").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#caption-message").text)
    message = browser.find_element(By.CSS_SELECTOR, "#caption-message").text
    assert message.startswith("The request was refused:") and "not a decodable image" in message
    assert "Traceback" not in browser.page_source


def test_nothing_is_fetched_beyond_loopback(page_url, browser):
    browser.get(page_url)
    time.sleep(3)
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.startswith(("http://", "https://", "ws://", "wss://")):
                hosts.add(urlparse(url).hostname or "")
    assert hosts and hosts <= LOOPBACK, hosts


def _log_in(driver, url: str, password: str) -> None:
    """Fill Gradio's login form (a fresh session: no cookie from an earlier login) and submit it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    driver.get(url)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
    assert not driver.find_elements(By.CSS_SELECTOR, "#image-input"), "the page showed before a login"
    driver.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys(USER)
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
    driver.find_element(By.XPATH, "//button[normalize-space()='Login']").click()


def test_a_page_with_logins_lets_in_only_the_right_password(server, auth_page_url, browser, flickr_images):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from captioning.client import CaptionClient

    _log_in(browser, auth_page_url, "wrong password")
    WebDriverWait(browser, 30).until(lambda d: "incorrect" in d.page_source.lower())
    time.sleep(1.0)
    assert browser.find_elements(By.CSS_SELECTOR, "input[type=password]")
    assert not browser.find_elements(By.CSS_SELECTOR, "#image-input")

    image = flickr_images[7]
    with CaptionClient(server.grpc_url) as client:
        expected = client.caption(str(image))
    _log_in(browser, auth_page_url, PASSWORD)
    assert _caption_in_page(browser, image) == (expected.english, expected.arabic)
    browser.delete_all_cookies()
