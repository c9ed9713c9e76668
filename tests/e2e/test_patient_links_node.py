"""Patient links on a real node process: [patient_access] on, a real SMTP server (aiosmtpd, STARTTLS) and a real
local SMS gateway. A clinician makes a share of a held study through the staff API (and is refused one the node
does not hold), the email carries the link with the token in the fragment; `meshnode patient-share list|revoke|
history` and `meshnode upload-link create` work through the control API; the staff page passes axe."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.mesh import MeshDemo
from meshnode.dicom.synthetic import DEFAULT_PATIENT_ID
from meshnode.demo.workspace import free_tcp_port
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import SECRET, SmsGateway

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _post(url: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_patient_links_on_a_real_node(tmp_path: Path, mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    smtp = SmtpServer(tmp_path / "smtp").start()
    gateway = SmsGateway(time.time).start()
    try:
        a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
        port = free_tcp_port()
        url = f"http://127.0.0.1:{port}"
        with open(a.home / "node.toml", "a", encoding="utf-8") as f:
            f.write(f'\n[http]\nlisten = "127.0.0.1:{port}"\npublic_url = "{url}"\n'
                    f'\n[notify]\nhost = "127.0.0.1"\nport = {smtp.port}\nca = "{smtp.pki.ca_cert}"\n'
                    'from_address = "imaging-mesh@rgt.nhs.uk"\norg_address = "pacs-team@rgt.nhs.uk"\n'
                    f'\n[patient_access]\nenabled = true\npublic_url = "https://images.rgt.nhs.uk"\n'
                    f'sms_gateway_url = "{gateway.url}"\nsms_secret = "{SECRET}"\n')
        mesh.start(a)
        token = add_user(mesh, a, "clin", "clinician")
        reader = add_user(mesh, a, "viewer", "read")
        study, _ = mesh.generate_and_ingest(a, 2, rows=64, columns=64)
        share = {"studies": [study], "person": "Ann Patient", "email": "ann@example.org",
                 "code_to": "+447700900123", "days": 3}

        status, body = _post(f"{url}/ui/api/patient-links", token, share)
        assert status == 201, body
        link_id = body["id"]
        mesh.wait_for(lambda: smtp.received, 30, "the link email")
        text = smtp.received[-1].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert re.search(r"https://images\.rgt\.nhs\.uk/p/#t=[A-Za-z0-9_-]{43}\b", text)
        assert "Ann Patient" not in smtp.received[-1].data.decode("utf-8", "replace")
        assert _post(f"{url}/ui/api/patient-links", reader, share)[0] == 403
        status, body = _post(f"{url}/ui/api/patient-links", token, {**share, "studies": ["1.2.3.4.5"]})
        assert status == 404 and "does not hold" in body["message"]

        listed = mesh.cli(a, "patient-share", "list")["links"]
        assert [(x["id"], x["state"], x["created_by"]) for x in listed] == [(link_id, "active", "user:clin")]
        mesh.cli(a, "patient-share", "revoke", link_id, "--reason", "sent in error")
        history = mesh.cli(a, "patient-share", "history", link_id)
        assert history["state"] == "revoked" and [h["action"] for h in history["history"]] == [
            "created", "email sent", "revoked"]
        made = mesh.cli(a, "upload-link", "create", "--person", "Dr Who", "--email", "who@example.org",
                        "--code-to", "who@example.net")
        assert re.fullmatch(r"[0-9a-f]{32}", made["id"])
        bad = mesh.ws.run("meshnode", "patient-share", "create", "--study", study, "--person", "Ann", "--email",
                          "ann@example.org", "--code-to", "ann@example.org", "--home", str(a.home), check=False)
        assert bad.code != 0 and "another address" in bad.stderr, bad

        browser.get(url + "/ui/")
        wait("the page", lambda: browser.find_element(By.ID, "org").text == "RGT")
        browser.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
        wait("the login", lambda: "clin" in browser.find_element(By.ID, "who").text)
        browser.get(url + "/ui/patient-links")
        # a clinician sees the links they made (not the upload link the CLI made)
        wait("the links", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#links tbody tr")) == 1)
        assert "revoked" in browser.find_element(By.ID, "links").text
        assert "Dr Who" not in browser.find_element(By.ID, "links").text
        browser.find_elements(By.CSS_SELECTOR, "#links tbody tr button")[-1].send_keys(Keys.ENTER)
        wait("the history", lambda: "email sent" in browser.find_element(By.ID, "history").text)
        assert_accessible(browser, "patient links page")
        # the page makes a share: search, tick the study, fill the form, submit (by keyboard)
        browser.find_element(By.CSS_SELECTOR, "#search input[name=patient_id]").send_keys(DEFAULT_PATIENT_ID)
        browser.find_element(By.CSS_SELECTOR, "#search button[type=submit]").send_keys(Keys.ENTER)
        box = wait("the study", lambda: browser.find_element(By.CSS_SELECTOR, "#studies tbody input[type=checkbox]"))
        box.send_keys(Keys.SPACE)
        form = browser.find_element(By.ID, "create")
        form.find_element(By.NAME, "person").send_keys("Bob Patient")
        form.find_element(By.NAME, "email").send_keys("bob@example.org")
        form.find_element(By.NAME, "code_to").send_keys("bob.second@example.net")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").send_keys(Keys.ENTER)
        wait("the share made", lambda: "Link made" in browser.find_element(By.ID, "create-status").text)
        wait("the new row", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#links tbody tr")) == 2)
        mesh.wait_for(lambda: any("bob@example.org" in r.rcpt_tos for r in smtp.received), 30, "Bob's link email")
        assert_accessible(browser, "patient links page after a share")
        screenshot(browser, "portal-patient-links")
    finally:
        gateway.stop()
        smtp.stop()
