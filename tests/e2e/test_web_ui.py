"""The web UI in a real headless Chromium, and webhooks to a real receiver, during a real exchange.

Org A shares an urgent CT with org B. B's UI (logged in) shows the study in
its inbox while it arrives, progress updating without a reload, then the
verified state; without a login it shows no patient identifiers. B's webhook
receiver (failing its first attempts) gets "announced" and "arrived", A's gets
"delivered", each signed with the configured HMAC secret. A screenshot goes
to test-artifacts/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from meshnode.web.webhooks import verify_signature
from tests.e2e.browser import ARTIFACTS, wait
from tests.e2e.web import WebhookReceiver, add_user, enable_http, http_url
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace, free_tcp_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECRET_A = "secret-of-org-a-0123456789"
SECRET_B = "secret-of-org-b-0123456789"


def webhook(receiver: WebhookReceiver, secret: str, events: str) -> str:
    return f'\n[[webhook]]\nurl = "{receiver.url}"\nsecret = "{secret}"\nevents = {events}\n'


def row_cells(driver: webdriver.Chrome, manifest: str) -> list[str] | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#inbox-table tr[data-manifest="{manifest}"]')
    return [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")] if rows else None


def test_inbox_live_in_chromium_and_webhooks(tmp_path: Path, browser: webdriver.Chrome) -> None:
    at_a, at_b = WebhookReceiver(), WebhookReceiver(fail_first=2)
    mesh = MeshDemo(Workspace(tmp_path))
    try:
        nodes = mesh.setup([("a", "RGT", "Org A"), ("b", "RJ1", "Org B")], start=False,
                           config={"limits.upload_mb_per_s": 3})
        a, b = nodes["a"], nodes["b"]
        with open(a.home / "node.toml", "a", encoding="utf-8") as f:
            f.write(webhook(at_a, SECRET_A, '["delivered", "failed"]'))
        # B forwards to a PACS that is down: the inbox shows the forward retrying
        pacs = f'\n[[pacs]]\nname = "pacs1"\nae_title = "PACS1"\nhost = "127.0.0.1"\nport = {free_tcp_port()}\n'
        enable_http(b, webhook(at_b, SECRET_B, '["announced", "arrived", "failed"]') + pacs)
        mesh.start(a)
        mesh.start(b)
        token = add_user(mesh, b, "radiologist", "read", "audit")
        url = http_url(b)

        browser.get(url + "/ui/")
        wait("the page", lambda: browser.find_element(By.ID, "org").text == "RJ1")
        browser.execute_script("window.__loadMarker = 'same page';")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait("the login", lambda: "radiologist" in browser.find_element(By.ID, "who").text)

        study, _ = mesh.generate_and_ingest(a, 40, rows=512, columns=512)
        manifest = mesh.share(a, study, ["RJ1"], priority="urgent")
        first = wait("the study in the inbox", lambda: row_cells(browser, manifest))
        assert first is not None and first[1] == "RGT" and first[2] == "urgent"
        assert "SYNTHETIC^PATIENT" in first[3]  # logged in with the read role: identifiers shown
        seen: list[str] = []

        def progressed() -> bool:
            cells = row_cells(browser, manifest)
            if cells is not None and (not seen or seen[-1] != cells[6]):
                seen.append(cells[6])
            return cells is not None and cells[5] == "receipted"

        wait("the receipt state in the UI", progressed, 120)
        partial = [p for p in seen if p.strip() and not p.startswith("100.0")]
        assert partial, f"no intermediate progress shown: {seen}"
        assert seen[-1].startswith("100.0"), seen
        assert browser.execute_script("return window.__loadMarker;") == "same page"  # no reload
        wait("the PACS forward state", lambda: "pacs1: forwarding" in (row_cells(browser, manifest) or [""] * 10)[9])
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "ui-inbox.png"))

        browser.get(url + "/ui/#peers")
        wait("the sender as a connected peer", lambda: any(
            "RGT" in r.text and "connected" in r.text and "not connected" not in r.text
            for r in browser.find_elements(By.CSS_SELECTOR, "#peers-table tbody tr")))
        browser.get(url + "/ui/#audit")
        wait("the verified audit chain", lambda: "Chain intact" in browser.find_element(By.ID, "chain").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")
        assert browser.save_screenshot(str(ARTIFACTS / "ui-audit.png"))

        browser.get(url + "/ui/#inbox")
        browser.find_element(By.ID, "logout").click()
        wait("the logout", lambda: browser.find_element(By.ID, "login").is_displayed())
        anonymous = wait("the inbox without a login", lambda: row_cells(browser, manifest))
        assert anonymous is not None and "SYNTHETIC" not in " ".join(anonymous) and anonymous[3] == "\u2014"
        assert "SYNTHETIC" not in browser.page_source

        mesh.wait_for(lambda: {"announced", "arrived"} <= set(at_b.events()), 60, "B's webhooks (after retries)")
        mesh.wait_for(lambda: "delivered" in at_a.events(), 60, "A's delivered webhook")
        assert at_b.attempts >= 2 + len(at_b.received)
        for receiver, secret in ((at_a, SECRET_A), (at_b, SECRET_B)):
            for r in receiver.received:
                assert verify_signature(secret, r.headers["x-meshnode-signature"], r.body, time.time())
                assert not verify_signature("another-secret-entirely", r.headers["x-meshnode-signature"], r.body,
                                            time.time())
                body = json.loads(r.body)
                assert body["manifest_id"] == manifest and r.headers["x-meshnode-delivery"] == body["id"]
                assert "study_uid" not in body and "SYNTHETIC" not in r.body.decode()
        arrived = next(json.loads(r.body) for r in at_b.received if json.loads(r.body)["event"] == "arrived")
        assert arrived["org"] == "RGT" and arrived["priority"] == "urgent" and arrived["duration_s"] > 0
        assert arrived["instances"] == 40
        delivered = next(json.loads(r.body) for r in at_a.received if json.loads(r.body)["event"] == "delivered")
        assert delivered["org"] == "RJ1" and delivered["direction"] == "sent"
        assert len([e for e in at_b.events() if e == "arrived"]) == 1  # retried, delivered once
    finally:
        mesh.close()
        at_a.close()
        at_b.close()
