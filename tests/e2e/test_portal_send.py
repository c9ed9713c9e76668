"""The portal's send page in a real headless Chromium, on real node processes and a real directory (MeshDemo):
three organisations, a clinician at the first sends a study to the other two and recalls it.

Sign in (the token login until the password/SSO sign-in lands), find the study by patient ID, open its
series and their thumbnails, pick two organisations with the type-ahead over the directory's list (by name
and by code, by keyboard), name a person and add a note (they reach the recipient's inbox), send; both
recipients' receipts arrive on the page without a reload; recall with a reason from the page. The page passes axe-core; a screenshot goes to test-artifacts/portal-send.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.orthanc import PACS_AE, Orthanc
from tests.e2e.web import add_user, enable_http, http_url, study_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PATIENT_ID = "SEND-E2E-1"


def statuses(browser: webdriver.Chrome, manifest: str) -> dict[str, str]:
    return {r.get_attribute("data-org") or "": r.get_attribute("data-status") or "" for r in
            browser.find_elements(By.CSS_SELECTOR, f'#outbox tr[data-manifest="{manifest}"] .recipient')}


def click(browser: webdriver.Chrome, css: str) -> None:
    """Click once the element is there (the live parts of the page are re-rendered: retry a stale one)."""
    def attempt() -> bool:
        browser.find_element(By.CSS_SELECTOR, css).click()
        return True

    wait(f"a click on {css}", attempt)


def text(browser: webdriver.Chrome, css: str, attribute: str = "") -> str:
    def read() -> str | None:
        found = browser.find_element(By.CSS_SELECTOR, css)
        return str(found.get_attribute(attribute) or "") if attribute else str(found.text)

    return wait(f"the text of {css}", read)


def pick_org(browser: webdriver.Chrome, typed: str, code: str) -> None:
    box = browser.find_element(By.ID, "org-input")
    box.clear()
    box.send_keys(typed)
    # the directory lists an organisation once its node has registered: type again (every 2 s, so the page's
    # type-ahead, which waits for typing to settle, asks) until it does
    last_typed = [time.monotonic()]

    def offered() -> bool:
        if browser.find_elements(By.CSS_SELECTOR, f'#org-options li[data-code="{code}"]'):
            return True
        if time.monotonic() - last_typed[0] > 2:
            box.send_keys(Keys.END, " ", Keys.BACKSPACE)
            last_typed[0] = time.monotonic()
        return False

    wait(f"{code} offered for {typed!r}", offered, 60)
    # arrow down to it (the option the input's aria-activedescendant names is the one Enter picks)
    while not browser.execute_script(
            "const o = document.querySelector(`#org-options li[data-code='${arguments[0]}']`);"
            "return o && o.id === document.getElementById('org-input').getAttribute('aria-activedescendant');",
            code):
        box.send_keys(Keys.ARROW_DOWN)
    box.send_keys(Keys.ENTER)
    wait(f"{code} chosen", lambda: browser.find_elements(By.CSS_SELECTOR, f'#chosen li[data-code="{code}"]'))


def test_send_to_two_organisations_from_the_page(tmp_path: Path, browser: webdriver.Chrome,
                                                orthanc: Orthanc) -> None:
    mesh = MeshDemo(Workspace(tmp_path))
    try:
        nodes = mesh.setup([("a", "RGT", "Guy's and St Thomas'"), ("b", "RJ1", "Kingsbridge Hospital"),
                            ("c", "RTH", "Oxford University Hospitals")], start=False,
                           config={"limits.upload_mb_per_s": 2})
        a = nodes["a"]
        enable_http(a)
        orthanc.start()  # RJ1 forwards what it receives to its PACS and reports it (forward reports)
        with open(nodes["b"].home / "node.toml", "a") as fh:
            fh.write(f'\n[[pacs]]\nname = "main"\nae_title = "{PACS_AE}"\nhost = "127.0.0.1"\n'
                     f"port = {orthanc.dicom_port}\n")
        for node in nodes.values():
            mesh.start(node)
        token = add_user(mesh, a, "doc", "clinician")
        files = study_files(tmp_path / "studies", "ct", slices=24, seed=3, patient_id=PATIENT_ID,
                            patient_name="SENDER^JANE<img src=x onerror=window.__pwned=1>", study_date="20250110",
                            rows=256, columns=256)
        mesh.cli(a, "ingest", str(files[0].parent), "--no-progress")
        url = http_url(a)

        browser.get(url + "/ui/")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait("the sign-in", lambda: "doc" in browser.find_element(By.ID, "who").text)

        browser.get(url + "/ui/send")
        wait("the send page", lambda: "doc" in browser.find_element(By.ID, "who").text)
        browser.find_element(By.NAME, "patient_id").send_keys(PATIENT_ID)
        browser.find_element(By.NAME, "date_from").send_keys("01012025")  # Chromium's date field: mm dd yyyy
        browser.find_element(By.CSS_SELECTOR, "#search button").click()
        choose = wait("the study found", lambda: browser.find_elements(By.CSS_SELECTOR, "#studies button.choose"))
        assert len(choose) == 1
        study = choose[0].get_attribute("data-study")
        row = browser.find_element(By.CSS_SELECTOR, "#studies tbody tr").text
        assert "SENDER JANE<img src=x onerror=window.__pwned=1>" in row  # the name as text, not as markup
        assert PATIENT_ID in row and "2025-01-10" in row
        choose[0].click()
        wait("the series thumbnail", lambda: browser.execute_script(
            "const i = document.querySelector('#series .thumb img'); return i && i.complete && i.naturalWidth > 0;"))
        series = browser.find_element(By.ID, "series").text
        assert "24 instances" in series and "CT" in series
        view = browser.find_element(By.ID, "study-view").get_attribute("href")
        assert view is not None and view.endswith(f"/ui/viewer?study={study}")

        pick_org(browser, "kingsbridge", "RJ1")  # by name
        pick_org(browser, "RT", "RTH")  # by code
        browser.find_element(By.CSS_SELECTOR, '#share select[name="priority"] option[value="urgent"]').click()
        browser.find_element(By.NAME, "attention").send_keys("dr.grey@rj1.example")
        browser.find_element(By.NAME, "note").send_keys("Trauma CT, please review tonight.")
        browser.execute_script("window.__marker = 'same page';")
        browser.find_element(By.ID, "send-button").click()
        def sent() -> str | None:
            shown = str(browser.find_element(By.ID, "send-status").text)
            return shown if shown.startswith("Sent") else None

        status = wait("the share", sent)
        assert "24 instance(s)" in status, status
        manifest = status.rsplit("manifest ", 1)[1].rstrip(".")

        seen: set[str] = set()

        def delivered() -> bool:
            now = statuses(browser, manifest)
            seen.update(now.values())
            return now == {"RJ1": "delivered", "RTH": "delivered"}

        wait("both receipts on the page", delivered, 180)
        assert browser.execute_script("return window.__marker;") == "same page"  # live, no reload
        assert browser.execute_script("return window.__pwned;") is None
        assert not browser.find_elements(By.CSS_SELECTOR, "main td img, #study-summary img")
        cells = text(browser, f'#outbox tr[data-manifest="{manifest}"]')
        assert "receipt verified" in cells and "SENDER JANE" in cells
        assert text(browser, f'#outbox tr[data-manifest="{manifest}"] a', "href").endswith(f"/ui/viewer?study={study}")
        [theirs] = [r for r in mesh.cli(nodes["b"], "inbox") if r["manifest_id"] == manifest]
        assert (theirs["attention"], theirs["note"]) == ("dr.grey@rj1.example", "Trauma CT, please review tonight.")
        def pacs_forward() -> bool:  # RJ1's signed report of its PACS forward, live on the page
            lines = browser.find_elements(By.CSS_SELECTOR, f'#outbox tr[data-manifest="{manifest}"] '
                                          '.recipient[data-org="RJ1"][data-pacs="forwarded"]')
            return bool(lines) and "forwarded to PACS (24/24)" in lines[0].text  # stale: wait() retries

        wait("RJ1's forward to its PACS on the page", pacs_forward, 120)
        assert browser.find_elements(By.CSS_SELECTOR, f'#outbox tr[data-manifest="{manifest}"] '
                                     '.recipient[data-org="RTH"][data-pacs]') == []  # no PACS there: no report
        assert_accessible(browser, "send page")
        screenshot(browser, "portal-send")

        click(browser, f'#outbox tr[data-manifest="{manifest}"] button.recall')
        reason = wait("the recall form", lambda: browser.find_element(By.CSS_SELECTOR, "form.recall-form input.reason"))
        reason.send_keys("wrong patient")
        click(browser, "form.recall-form button[type=submit]")
        wait("both recipients told of the recall",
             lambda: statuses(browser, manifest) == {"RJ1": "recalled", "RTH": "recalled"}, 120)

        actions = [(e["action"], e.get("actor", "")) for e in mesh.audit(a)]
        for action in ("portal-study-search", "portal-series-view", "portal-thumbnail", "portal-share",
                       "portal-recall"):
            assert (action, "user:doc") in actions, action
        outbox = mesh.cli(a, "outbox")  # the CLI sees what the page did
        assert [r["state"] for r in outbox if r["manifest_id"] == manifest] == ["recalled"]
    finally:
        mesh.close()
