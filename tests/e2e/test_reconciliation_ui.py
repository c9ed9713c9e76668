"""The reconciliation queue in the web UI (Chromium) and over HTTP, on a real node: a received study without
an NHS number is listed on the Reconcile page and left out of QIDO-RS and WADO-RS until a user with the
write role matches it by typing the local patient ID into the row and clicking Match (a read-only user
cannot decide over HTTP). The queue is the PACS team's (the pacs role); a
read-only user neither sees the Reconcile tab nor lists the queue."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user, enable_http, http_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def request(url: str, token: str, method: str = "GET", body: object = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_reconcile_page_and_decision_in_the_page(tmp_path: Path, browser: webdriver.Chrome) -> None:
    mesh = MeshDemo(Workspace(tmp_path))
    try:
        nodes = mesh.setup([("a", "RGT", "Org A"), ("b", "RJ1", "Org B")], start=False)
        a, b = nodes["a"], nodes["b"]
        enable_http(b)
        mesh.configure(b, {"reconciliation.enabled": True})
        mesh.start(a)
        mesh.start(b)
        reader = add_user(mesh, b, "clerk", "read")
        writer = add_user(mesh, b, "pacs-team", "pacs")
        mesh.cli(b, "patients", "set", "RJ1-7", "--issuer", "RJ1", "--nhs-number", "9434765919")
        url = http_url(b)

        study, _ = mesh.generate_and_ingest(a, 2, rows=64, columns=64)  # Patient ID SYN0000001, no issuer
        manifest = mesh.share(a, study, ["RJ1"], priority="urgent")
        mesh.wait_for(lambda: [r for r in mesh.cli(b, "reconcile", "list") if r["manifest"] == manifest], 120,
                      "the study in b's reconciliation queue")

        browser.get(url + "/ui/")
        wait("the page", lambda: browser.find_element(By.ID, "org").text == "RJ1")
        assert request(url + "/reconcile", reader)[0] == 403  # read alone: not the PACS team's queue
        browser.find_element(By.ID, "token").send_keys(reader)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait("the reader's login", lambda: "clerk" in browser.find_element(By.ID, "who").text)
        for tab in ("reconcile", "conflicts"):  # the PACS team's tabs are not offered
            assert not browser.find_element(By.CSS_SELECTOR, f'nav a[data-page="{tab}"]').is_displayed()
        browser.find_element(By.ID, "logout").click()
        wait("the logout", lambda: browser.find_element(By.ID, "login").is_displayed())
        assert browser.find_element(By.CSS_SELECTOR, 'nav a[data-page="inbox"]').is_displayed()
        browser.find_element(By.ID, "token").send_keys(writer)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait("the login", lambda: "pacs-team" in browser.find_element(By.ID, "who").text)
        browser.get(url + "/ui/#reconcile")
        row = wait("the queue row", lambda: browser.find_elements(
            By.CSS_SELECTOR, f'#reconcile-table tr[data-manifest="{manifest}"]'))
        cells = [td.text for td in row[0].find_elements(By.TAG_NAME, "td")]  # type: ignore[index]
        assert cells[1] == "RGT" and "SYN0000001" in cells[2] and "no-nhs-number" in cells[4]

        # held: not in QIDO-RS, 404 from WADO-RS
        status, found = request(url + "/dicomweb/studies", reader)
        assert status == 200 and study not in json.dumps(found or [])
        assert request(url + f"/dicomweb/studies/{study}/metadata", reader)[0] == 404
        # a read-only user cannot decide; a writer can, once
        assert request(url + f"/reconcile/{manifest}/match", reader, "POST", {"local_id": "RJ1-7"})[0] == 403
        # the PACS team decides in the page: the local patient ID typed into the row, Match clicked
        row = browser.find_elements(By.CSS_SELECTOR, f'#reconcile-table tr[data-manifest="{manifest}"]')
        match = row[0].find_element(By.CSS_SELECTOR, "button.decide-match")
        assert "SYN0000001" in (match.get_attribute("aria-label") or "")
        assert_accessible(browser, "the Reconcile tab with the decision controls")
        screenshot(browser, "portal-reconcile-decide")
        row[0].find_element(By.CSS_SELECTOR, 'input[aria-label^="Local patient ID"]').send_keys("RJ1-7")
        match.click()
        wait("the match's notice", lambda: "Matched" in browser.find_element(By.ID, "notice").text)
        assert "RJ1-7" in browser.find_element(By.ID, "notice").text
        wait("the row gone from the queue", lambda: not browser.find_elements(
            By.CSS_SELECTOR, f'#reconcile-table tr[data-manifest="{manifest}"]'))
        decided = [r for r in mesh.cli(b, "reconcile", "list", "--all") if r["manifest"] == manifest]
        assert decided and decided[0]["decided_by"] == "user:pacs-team"
        assert request(url + f"/reconcile/{manifest}/match", writer, "POST", {"local_id": "RJ1-7"})[0] == 400
        status, found = request(url + "/dicomweb/studies", reader)
        assert status == 200 and study in json.dumps(found)
        assert request(url + f"/dicomweb/studies/{study}/metadata", reader)[0] == 200
        audit = [e for e in mesh.audit(b) if e.get("action") == "reconcile-matched"]
        assert [e["actor"] for e in audit] == ["user:pacs-team"]
    finally:
        mesh.close()
