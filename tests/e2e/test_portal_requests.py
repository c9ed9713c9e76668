"""The requests page in real headless Chromium against real node processes: a clinician at A asks B for a
patient's priors and requests them; a PACS-team user at B (another browser session) reviews the request,
chooses the study and sends it; A's page shows the approval arrive without a reload, and the study arrives at
A. The page passes axe-core; test-artifacts/portal-requests.png (A's page) and portal-requests-review.png
(B's review) keep screenshots."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.dicom import synthetic
from tests.e2e.browser import assert_accessible, chromium, screenshot, wait
from tests.e2e.web import add_user, enable_http, http_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NHS = "9434765919"


def sign_in(driver: webdriver.Chrome, url: str, token: str, user: str) -> None:
    """The token login (AUTH keeps it working), then the requests page."""
    driver.get(url + "/ui/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait("the login", lambda: user in driver.find_element(By.ID, "who").text)
    driver.get(url + "/ui/requests")
    wait("the requests page", lambda: driver.find_element(By.ID, "who").text == user)


def cells(driver: webdriver.Chrome, table: str) -> list[list[str]]:
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def ingest(mesh: MeshDemo, node: Node) -> str:
    files = synthetic.generate_ct_study(mesh.ws.root / "prior", slices=4, rows=64, columns=64, seed=7,
                                        patient_id=NHS, study_description="CT HEAD")
    mesh.cli(node, "ingest", str(files[0].parent), "--no-progress")
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_request_priors_in_the_page_approved_in_another_session(mesh: MeshDemo, browser: webdriver.Chrome,
                                                                tmp_path: Path) -> None:
    nodes = mesh.setup([("a", "RGT", "Org A"), ("b", "RJ1", "Org B")], start=False)
    a, b = nodes["a"], nodes["b"]
    enable_http(a)
    enable_http(b, '\n[prior_query]\nallow = ["RGT"]\n')
    mesh.start(a)
    mesh.start(b)
    study = ingest(mesh, b)
    alice = add_user(mesh, a, "alice", "clinician")
    bob = add_user(mesh, b, "bob", "pacs")

    # A: a clinician looks up B's studies for the patient and requests them
    sign_in(browser, http_url(a), alice, "alice")
    assert browser.find_element(By.ID, "incoming").get_attribute("hidden") is not None  # not her queue
    browser.find_element(By.ID, "req-holder").send_keys("RJ1")
    browser.find_element(By.ID, "req-nhs").send_keys(NHS)
    browser.find_element(By.ID, "priors-lookup").click()
    [prior] = wait("the priors", lambda: cells(browser, "priors-table"))
    assert prior[2] == "CT HEAD" and prior[5] == study
    Select(browser.find_element(By.ID, "req-priority")).select_by_value("urgent")
    browser.find_element(By.ID, "req-reason").send_keys("stroke MDT: prior CT")
    browser.find_element(By.ID, "req-send").click()
    [row] = wait("the sent request", lambda: cells(browser, "outgoing-table"))
    assert row[1] == "RJ1" and row[5] == "pending" and row[4] == "user:alice"
    assert_accessible(browser, "requests page")

    # B: a PACS-team user, in a browser session of their own, reviews it and sends the study
    other = chromium()
    driver_b = next(other)
    try:
        sign_in(driver_b, http_url(b), bob, "bob")
        [incoming] = wait("the incoming request", lambda: cells(driver_b, "incoming-table"))
        assert incoming[1] == "RGT" and incoming[4] == "stroke MDT: prior CT" and incoming[6] == "pending"
        driver_b.find_element(By.CSS_SELECTOR, "#incoming-table .review-button").click()
        wait("the matching study", lambda: driver_b.find_element(By.CSS_SELECTOR, "#review-list input"))
        # a search of the patient's studies by another modality finds none; by CT, the study again
        driver_b.find_element(By.ID, "search-modality").clear()
        driver_b.find_element(By.ID, "search-modality").send_keys("MR")
        driver_b.find_element(By.ID, "search-button").click()
        wait("no MR study", lambda: driver_b.find_element(By.ID, "review-none").is_displayed())
        driver_b.find_element(By.ID, "search-modality").clear()
        driver_b.find_element(By.ID, "search-modality").send_keys("CT")
        driver_b.find_element(By.ID, "search-button").click()
        box = wait("the matching study", lambda: driver_b.find_element(By.CSS_SELECTOR, "#review-list input"))
        assert box.get_attribute("value") == study
        assert_accessible(driver_b, "requests page with a request under review")
        box.click()
        driver_b.execute_script("document.getElementById('incoming').scrollIntoView()")
        screenshot(driver_b, "portal-requests-review")
        driver_b.find_element(By.ID, "approve").click()
        wait("the approval at B", lambda: cells(driver_b, "incoming-table")[0][6] == "approved")
    finally:
        next(other, None)

    # A: the page shows the approval arrive (no reload), and the study arrives
    wait("the approval at A", lambda: cells(browser, "outgoing-table")[0][5] == "approved", 60)
    assert "user:bob" in cells(browser, "outgoing-table")[0][6]
    browser.execute_script("document.getElementById('priors').scrollIntoView()")
    screenshot(browser, "portal-requests")
    mesh.wait_for(lambda: any(s["study_uid"] == study for s in mesh.cli(a, "studies")), 60, "the study at A")
    # signing out ends the session: the page goes to the sign-in page, the API refuses the old cookie
    browser.find_element(By.ID, "logout").click()
    wait("the sign-in page", lambda: browser.current_url.endswith("/ui/login"))
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/ui/api/requests/outgoing', {credentials: 'same-origin'}).then(r => done(r.status));")
    assert status == 401
