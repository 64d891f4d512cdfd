"""The web page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, `make system-deps`) driven by selenium, against a real
gateway process, a real mosquitto and the project's camera simulators.

Screenshots of each page go to the test's tmp dir; with
`LPR_UI_SCREENSHOT_DOCS=1` the live page's is also written to
docs/ui-live.png (the README's picture).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.broker import MosquittoProcess
from gateway.simulate.common import plate_jpeg, scene_jpeg
from gateway.simulate.http import HttpCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from tests.helpers import GatewayProcess, free_port, http_camera_entry, tcp_simulator_entry

pytestmark = pytest.mark.slow

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoAlertPresentException,
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver import Chrome as WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
except ImportError:  # pragma: no cover - said by the fixture
    webdriver = None  # type: ignore[assignment]

USER, PASSWORD = "installer", "browser-test-pass"
HOSTILE_PLATE = "<img src=x onerror=alert(1)>"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui-live.png"
# Bounds on waits, not claims about speed; the one claim (a read on screen
# within 2 s of the camera's POST being answered) is the issue's.
PAGE_SECONDS = 30.0
LIVE_SECONDS = 2.0

T = TypeVar("T")

# How chromedriver words a command cut short by the page being replaced under
# it (the cameras and health pages reload themselves every 10 s), besides
# StaleElementReferenceException: seen in CI ("Node with given id does not
# belong to the document", between find_element and .text) and in a probe of
# a reloading page ("aborted by navigation").
PAGE_REPLACED_MESSAGES = (
    "does not belong to the document",
    "aborted by navigation",
    "Cannot find context with specified id",
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class CameraLoop:
    """An asyncio loop on its own thread for the camera simulators (the test
    itself blocks in selenium)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        async def call() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if webdriver is None:
        pytest.fail("selenium is not installed: run `make venv` (the test extra has it)")
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("chromium / chromedriver missing: run `make system-deps` (Debian packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: WebDriver, authorization: str) -> None:
    """Every request of the browser carries this Basic login, the live stream's too
    (what the browser does after its login prompt; headless has no prompt)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": authorization}}
    )


def wait_for(what: str, check: Callable[[], T | None], timeout: float = PAGE_SECONDS) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (NoSuchElementException, StaleElementReferenceException):
            result = None  # the page is being replaced (after a click)
        except WebDriverException as error:
            if not page_replaced(error):
                raise
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout} s"
        time.sleep(0.05)


def page_replaced(error: WebDriverException) -> bool:
    return any(message in (error.msg or "") for message in PAGE_REPLACED_MESSAGES)


def click(driver: WebDriver, find: Callable[[], WebElement]) -> None:
    """Click what `find` finds, as a user does (at its place on screen), again
    if the page moved under the pointer: the live list grows while the test
    runs (the TCP camera keeps reading), the cameras page reloads itself."""

    def attempt() -> bool:
        try:
            find().click()
        except ElementClickInterceptedException:
            return False
        return True

    wait_for("a click on its target", attempt)


def live_row(driver: WebDriver, plate: str) -> WebElement | None:
    for row in driver.find_elements(By.CSS_SELECTOR, "#live li.read"):
        if row.find_element(By.CSS_SELECTOR, ".plate").text == plate:
            return row
    return None


def picture_loaded(driver: WebDriver, image: WebElement) -> bool:
    return bool(
        driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
    )


def statuses_seen(driver: WebDriver) -> dict[str, int]:
    """URL → HTTP status of the responses the browser got since the last call
    (from its performance log)."""
    seen = {}
    entries: list[dict[str, Any]] = driver.get_log("performance")  # type: ignore[no-untyped-call]
    for entry in entries:
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if response["url"].startswith("http"):
                seen[response["url"]] = response["status"]
    return seen


def no_alert(driver: WebDriver) -> bool:
    """True when no JavaScript alert is open (a script of a hostile plate ran)."""
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    raise AssertionError(f"an alert is open: {alert.text!r}")


def read_body(plate: str) -> bytes:
    """A read as an HTTP camera posts it, with its plate crop and scene."""
    return json.dumps(
        {
            "device": "Network Camera",
            "plate": plate,
            "confidence": 0.97,
            "direction": "Approach",
            "plate_image": base64.b64encode(plate_jpeg()).decode(),
            "full_image": base64.b64encode(scene_jpeg()).decode(),
        }
    ).encode()


def test_the_web_page_in_a_browser(
    browser: WebDriver, mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    started = time.monotonic()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    cameras = CameraLoop()
    tcp = TcpCameraSimulator(rate=0.5, camera="gate_in", seed=7)
    try:
        tcp_port = cameras.run(tcp.start)
        ui_port = free_port()
        config: dict[str, Any] = {
            "mqtt": {"url": mqtt_broker.url},
            "history": {"enabled": True, "images": "plate"},
            "ui": {"listen": f"127.0.0.1:{ui_port}", "username": USER, "password": PASSWORD},
            "known_plates": {"Alice's car": ["UI 4242"]},
            "cameras": [
                tcp_simulator_entry("gate_in", tcp_port),
                http_camera_entry("gate_out", "cam", "campass"),
            ],
        }
        with GatewayProcess(config, tmp_path) as gateway:
            page = f"http://127.0.0.1:{ui_port}"
            camera = HttpCameraSimulator(
                gateway.url("/lpr/gate_out"), user="cam", password="campass", camera="gate_out"
            )
            cameras.run(camera.__aenter__)
            try:
                check_pages(browser, page, camera, cameras, shots)
            finally:
                cameras.run(lambda: camera.__aexit__(None, None, None))
    finally:
        cameras.run(tcp.stop)
        cameras.close()
    print(f"browser test: {time.monotonic() - started:.1f} s; screenshots in {shots}")


def check_pages(
    driver: WebDriver,
    page: str,
    camera: HttpCameraSimulator,
    cameras: CameraLoop,
    shots: Path,
) -> None:
    # A wrong password is refused: nothing of the page, whatever the path.
    log_in(driver, basic(USER, "wrong"))
    driver.get(page + "/")
    # (A browser with a window would ask for the login again; headless shows nothing.)
    assert not driver.find_elements(By.CSS_SELECTOR, "nav a")
    assert "lpr-gateway" not in driver.page_source
    driver.get(page + "/history")
    assert statuses_seen(driver) == {page + "/": 401, page + "/history": 401}
    driver.save_screenshot(str(shots / "refused.png"))

    log_in(driver, basic(USER, PASSWORD))
    driver.get(page + "/")
    wait_for(
        "the live stream open", lambda: driver.find_element(By.ID, "live-state").text == "live"
    )

    # Live: a read a camera posts is on screen with its plate crop within 2 s.
    sent = cameras.run(lambda: camera.post_body(read_body("UI 4242"), kind="plate"))
    assert sent.status == 200, sent.reply
    answered = time.monotonic()
    row = wait_for("the read on the live page", lambda: live_row(driver, "UI 4242"), LIVE_SECONDS)
    crop = row.find_element(By.CSS_SELECTOR, ".crop img")
    wait_for("its plate crop", lambda: picture_loaded(driver, crop), LIVE_SECONDS)
    shown_after = time.monotonic() - answered
    assert shown_after <= LIVE_SECONDS, shown_after
    assert "Alice's car" in row.text  # known name and match
    assert "gate_out" in row.text and "97%" in row.text and "in" in row.text
    print(f"browser test: read on screen {shown_after * 1000:.0f} ms after the camera's reply")

    # Its picture full size: the viewer opens on a click.
    click(driver, lambda: crop)
    viewer = driver.find_element(By.ID, "viewer-image")
    wait_for("the full-size picture", lambda: picture_loaded(driver, viewer))
    assert viewer.get_attribute("src", ) == crop.get_attribute("src")  # fmt: skip
    driver.save_screenshot(str(shots / "live-picture.png"))
    click(driver, lambda: driver.find_element(By.ID, "viewer"))

    # A hostile plate is text, in the live stream's rendering and the server's.
    sent = cameras.run(lambda: camera.post_body(read_body(HOSTILE_PLATE), kind="plate"))
    assert sent.status == 200, sent.reply
    wait_for("the hostile read on the live page", lambda: live_row(driver, HOSTILE_PLATE))
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert no_alert(driver)
    # The simulated TCP camera's reads too (Hangul plates, scenes), for the picture.
    wait_for(
        "reads of the TCP camera",
        lambda: len(driver.find_elements(By.CSS_SELECTOR, "#live li.read")) >= 4,
    )
    driver.set_window_size(1200, 900)
    driver.save_screenshot(str(shots / "live.png"))
    if os.environ.get("LPR_UI_SCREENSHOT_DOCS") == "1":
        DOCS_SCREENSHOT.write_bytes((shots / "live.png").read_bytes())
    driver.get(page + "/")
    wait_for("the server's live list", lambda: live_row(driver, HOSTILE_PLATE))
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert no_alert(driver)
    driver.set_window_size(390, 844)  # a phone
    driver.save_screenshot(str(shots / "live-phone.png"))
    driver.set_window_size(1200, 900)
    dark = [{"name": "prefers-color-scheme", "value": "dark"}]
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": dark})
    driver.save_screenshot(str(shots / "live-dark.png"))
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # History: the search finds the read; the CSV export holds it.
    driver.get(page + "/history")
    driver.find_element(By.NAME, "plate").send_keys("ui424")
    click(driver, lambda: driver.find_element(By.CSS_SELECTOR, "form.search button"))

    def found_in_history() -> bool:
        if "UI 4242" in driver.find_element(By.CSS_SELECTOR, "main").text:
            return True
        driver.refresh()  # the history writer gathers reads for up to half a second
        return False

    wait_for("the read in the history", found_in_history)
    assert "1 reads" in driver.find_element(By.CSS_SELECTOR, ".pager").text
    driver.save_screenshot(str(shots / "history.png"))
    csv_link = driver.find_element(By.LINK_TEXT, "CSV").get_attribute("href")
    csv_text = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.text()).then(done, e => done(String(e)));",
        csv_link,
    )
    lines = csv_text.splitlines()
    assert lines[0].startswith("time,camera,plate")
    assert len(lines) == 2 and ",gate_out,UI 4242," in lines[1], csv_text

    def hostile_in_history() -> bool:
        # The history writer gathers reads for up to half a second: ask again.
        driver.get(page + f"/history?plate={HOSTILE_PLATE}")
        return HOSTILE_PLATE in driver.find_element(By.CSS_SELECTOR, "main").text

    wait_for("the hostile read in the history", hostile_in_history)
    assert HOSTILE_PLATE in driver.find_element(By.CSS_SELECTOR, "table").text
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0

    # Cameras: switch one off and on again with its button.
    driver.get(page + "/cameras")
    card = driver.find_element(By.ID, "camera-gate_out")
    assert card.find_element(By.CSS_SELECTOR, ".state").text in ("online", "offline")
    driver.save_screenshot(str(shots / "cameras.png"))
    click(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#camera-gate_out button"))
    wait_for(
        "the camera disabled",
        lambda: driver.find_element(By.CSS_SELECTOR, "#camera-gate_out .state").text == "disabled",
    )
    click(driver, lambda: driver.find_element(By.CSS_SELECTOR, "#camera-gate_out button"))
    wait_for(
        "the camera enabled",
        lambda: driver.find_element(By.CSS_SELECTOR, "#camera-gate_out .state").text != "disabled",
    )

    # Known plates: add one with the form, then remove it.
    driver.get(page + "/known")
    driver.find_element(By.NAME, "name").send_keys("Visitor")
    driver.find_element(By.NAME, "plates").send_keys("VIS 1, VIS 2")
    click(driver, lambda: driver.find_element(By.CSS_SELECTOR, "form[action='/known/add'] button"))
    wait_for("the added plates", lambda: "VIS 2" in driver.find_element(By.TAG_NAME, "main").text)
    driver.save_screenshot(str(shots / "known.png"))
    remove = "button[aria-label='remove VIS 1']"
    click(driver, lambda: driver.find_element(By.CSS_SELECTOR, remove))
    wait_for(
        "one plate removed",
        lambda: "removed VIS 1 of Visitor" in driver.find_element(By.TAG_NAME, "main").text,
    )
    assert not driver.find_elements(By.CSS_SELECTOR, "button[aria-label='remove VIS 1']")
    assert driver.find_elements(By.CSS_SELECTOR, "button[aria-label='remove VIS 2']")

    driver.get(page + "/health")
    assert "broker" in driver.find_element(By.TAG_NAME, "main").text
    driver.save_screenshot(str(shots / "health.png"))
    assert no_alert(driver)
