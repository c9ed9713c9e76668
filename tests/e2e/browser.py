"""Headless Chromium for the browser tests (Debian's chromium and chromedriver through Selenium), and what
every page test checks: accessibility with axe-core (from tools/browser, `make npm-tools`) and a screenshot
kept in test-artifacts/.

    def test_page(browser: webdriver.Chrome) -> None:          # the fixture lives in tests/e2e/conftest.py
        browser.get(url)
        assert_accessible(browser, "send page")               # no serious or critical axe violation
        screenshot(browser, "portal-send")                    # test-artifacts/portal-send.png
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
AXE = ROOT / "tools" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1500,900")
#: axe impacts that fail a test (minor and moderate ones are printed in the failure message only)
FAILING_IMPACTS = ("serious", "critical")
T = TypeVar("T")


def chromium() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `check` (a DOM read) until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling the browser's DOM


def assert_accessible(driver: webdriver.Chrome, what: str) -> list[dict[str, object]]:
    """Run axe-core (WCAG 2.1 A and AA rules) on the page as it is now; fail on serious or critical
    violations. Returns every violation (for a test that wants to look closer)."""
    if not AXE.is_file():
        raise AssertionError(f"{AXE} is missing: run `make npm-tools` (scripts/install-npm-tools.sh)")
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
        ".then(r => done(JSON.stringify(r.violations)), e => done(JSON.stringify({error: String(e)})));")
    violations = json.loads(result)
    if isinstance(violations, dict):
        raise AssertionError(f"axe-core failed on the {what}: {violations['error']}")
    failing = [v for v in violations if v.get("impact") in FAILING_IMPACTS]
    assert not failing, f"accessibility violations on the {what}: " + json.dumps(
        [{"id": v["id"], "impact": v["impact"], "help": v["help"],
          "nodes": [n["target"] for n in v["nodes"][:5]]} for v in violations], indent=1)
    return list(violations)


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Keep a PNG of the page in test-artifacts/NAME.png (CI keeps the folder; the README shows two)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
