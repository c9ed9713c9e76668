"""Issue 14 as people use it, on a real node process with a real SMTP server (aiosmtpd, STARTTLS) and a real
SMS gateway (an HTTP server on 127.0.0.1 that records the signed POSTs), in real Chromium:

1. A clinician makes a patient share in the staff page. The patient's link comes by email, the code by text
   message. In a fresh browser the patient enters a wrong code three times: the link locks and the staff are
   told. On a new share the right code opens the images: the viewer, a key image, the ZIP download (checked
   file by file against the stored instances, the DICOMDIR by pydicom's FileSet and dcmtk), a forward to a
   doctor. The link's history and the audit log have each step. An expired link then gives a clear page that
   reveals nothing.
2. An uploader with an upload link picks good instances, a letter, an instance with an executable in its
   preamble and a ZIP with a `../` name: the good ones land in quarantine, the rest are refused with their
   reasons on the page, and nothing is written outside the quarantine folder.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from meshnode.dicom.synthetic import DEFAULT_PATIENT_ID, generate_ct_study
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import SECRET, SmsGateway

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MOBILE = "+447700900123"
PATIENT = "ann@example.org"


def _configure(node: Node, smtp: SmtpServer, gateway: SmsGateway) -> tuple[str, str]:
    """[http] for the staff, [notify], [patient_access] on a listener of its own; returns both URLs."""
    staff_port, public_port = free_tcp_port(), free_tcp_port()
    staff, public = f"http://127.0.0.1:{staff_port}", f"http://127.0.0.1:{public_port}"
    with open(node.home / "node.toml", "a", encoding="utf-8") as f:
        f.write(f'\n[http]\nlisten = "127.0.0.1:{staff_port}"\npublic_url = "{staff}"\n'
                f'\n[notify]\nhost = "127.0.0.1"\nport = {smtp.port}\nca = "{smtp.pki.ca_cert}"\n'
                'from_address = "imaging-mesh@rgt.nhs.uk"\norg_address = "pacs-team@rgt.nhs.uk"\n'
                f'\n[patient_access]\nenabled = true\npublic_url = "{public}"\nlisten = "127.0.0.1:{public_port}"\n'
                f'sms_gateway_url = "{gateway.url}"\nsms_secret = "{SECRET}"\nrequests_per_minute = 2000\n')
    return staff, public


def _link_token(smtp: SmtpServer, to: str, after: int = 0) -> str:
    for r in reversed(smtp.received[after:]):
        if to in r.rcpt_tos:
            body = r.message.get_body(("plain",))
            m = re.search(r"/p/#t=([A-Za-z0-9_-]{43})\b", body.get_content() if body is not None else "")
            if m:
                return m[1]
    return ""


def _sms_code(gateway: SmsGateway, to: str, after: int) -> str:
    sent = [s for s in gateway.received[after:] if s.to == to]
    if not sent:
        return ""
    assert sent[-1].signed, "the SMS gateway's POST was not signed with the shared secret"
    return sent[-1].code


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _post(url: str, token: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return dict(json.loads(reply.read()))


def _open_link(browser: webdriver.Chrome, public: str, token: str) -> None:
    browser.get(f"{public}/p/#t={token}")
    wait("the code step", lambda: browser.find_element(By.ID, "code-step").is_displayed())


def _enter_code(browser: webdriver.Chrome, code: str) -> None:
    field = browser.find_element(By.ID, "code")
    field.clear()
    field.send_keys(code + Keys.ENTER)


def _message(browser: webdriver.Chrome) -> str:
    return browser.find_element(By.ID, "message").text


def test_a_patient_share_from_the_staff_page_to_a_verified_download(
        tmp_path: Path, mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    smtp = SmtpServer(tmp_path / "smtp").start()
    gateway = SmsGateway(time.time).start()
    try:
        a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
        staff, public = _configure(a, smtp, gateway)
        mesh.start(a)
        clin = add_user(mesh, a, "clin", "clinician")
        mesh.cli(a, "users", "profile", "clin", "--email", "clin@rgt.nhs.uk")
        study, files = mesh.generate_and_ingest(a, 4, rows=64, columns=64, seed=21)

        # the clinician makes the share in the staff page
        browser.get(staff + "/ui/")
        wait("the portal", lambda: browser.find_element(By.ID, "org").text == "RGT")
        browser.find_element(By.ID, "token").send_keys(clin + Keys.ENTER)
        wait("the sign-in", lambda: "clin" in browser.find_element(By.ID, "who").text)
        browser.get(staff + "/ui/patient-links")
        browser.find_element(By.CSS_SELECTOR, "#search input[name=patient_id]").send_keys(DEFAULT_PATIENT_ID)
        browser.find_element(By.CSS_SELECTOR, "#search button[type=submit]").send_keys(Keys.ENTER)
        wait("the study", lambda: browser.find_element(
            By.CSS_SELECTOR, "#studies tbody input[type=checkbox]")).send_keys(Keys.SPACE)
        form = browser.find_element(By.ID, "create")
        form.find_element(By.NAME, "person").send_keys("Ann Patient")
        form.find_element(By.NAME, "email").send_keys(PATIENT)
        form.find_element(By.NAME, "code_to").send_keys(MOBILE)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").send_keys(Keys.ENTER)
        wait("the share made", lambda: "Link made" in browser.find_element(By.ID, "create-status").text)
        token = mesh.wait_for(lambda: _link_token(smtp, PATIENT), 60, "the link email")
        mail = next(r for r in smtp.received if PATIENT in r.rcpt_tos)
        assert mail.tls and "Ann" not in mail.data.decode("utf-8", "replace")  # nothing about the patient
        assert "SYNTHETIC" not in mail.data.decode("utf-8", "replace")

        # a fresh browser (no cookie of the staff's): three wrong codes lock the link, and the staff are told
        browser.delete_all_cookies()
        _open_link(browser, public, token)
        assert "Ann" not in browser.find_element(By.TAG_NAME, "body").text
        sms_before = len(gateway.received)
        browser.find_element(By.ID, "send-code").click()
        code = mesh.wait_for(lambda: _sms_code(gateway, MOBILE, sms_before), 60, "the code by text message")
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        for attempt in range(3):
            _enter_code(browser, wrong)
            expected = "locked" if attempt == 2 else "not right"
            wait(f"wrong code {attempt + 1}", lambda: expected in _message(browser))
        assert not browser.find_element(By.ID, "share-step").is_displayed()
        _enter_code(browser, code)  # even the right code no longer opens it
        wait("still locked", lambda: "locked" in _message(browser))
        mesh.wait_for(lambda: [r for r in smtp.received if "locked" in str(r.message["Subject"]).lower()], 60,
                      "the lock notice to the staff")
        notice = [r for r in smtp.received if "locked" in str(r.message["Subject"]).lower()][-1]
        assert set(notice.rcpt_tos) & {"clin@rgt.nhs.uk", "pacs-team@rgt.nhs.uk"}
        assert "Ann" not in notice.data.decode("utf-8", "replace")

        # a new share; the right code opens it
        mails_before = len(smtp.received)
        second = str(_post(f"{staff}/ui/api/patient-links", clin, {
            "studies": [study], "person": "Ann Patient", "email": PATIENT, "code_to": MOBILE})["id"])
        token = mesh.wait_for(lambda: _link_token(smtp, PATIENT, mails_before), 60, "the second link email")
        _open_link(browser, public, token)
        sms_before = len(gateway.received)
        browser.find_element(By.ID, "send-code").click()
        code = mesh.wait_for(lambda: _sms_code(gateway, MOBILE, sms_before), 60, "the second code")
        _enter_code(browser, code)
        wait("the share", lambda: browser.find_element(By.ID, "share-step").is_displayed())
        assert browser.find_element(By.ID, "person").text == "Ann Patient"
        assert_accessible(browser, "the patient's share")
        screenshot(browser, "patient-share")

        # view
        browser.find_element(By.CSS_SELECTOR, '#studies a[data-field="view"]').click()
        wait("the viewer", lambda: browser.execute_script("return document.body.dataset.ready"), 90)
        assert not browser.execute_script("return document.body.dataset.failed")
        browser.back()
        wait("the share again", lambda: browser.find_element(By.ID, "share-step").is_displayed())

        # a key image and the download, fetched by the page itself (its cookie, its origin)
        browser.find_element(By.CSS_SELECTOR, '#studies details summary').click()
        key = wait("a key image link", lambda: browser.find_element(By.CSS_SELECTOR, '#studies [data-field="keys"] a'))
        fetched = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([fetch(arguments[0]), fetch(arguments[1])]).then(async ([k, d]) => done(["
            "k.status, k.headers.get('content-type'), d.status, (await d.arrayBuffer()).byteLength]))"
            ".catch(e => done(String(e)));",
            key.get_attribute("href"), browser.find_element(By.ID, "download").get_attribute("href"))
        assert fetched[:3] == [200, "image/png", 200] or fetched[:3] == [200, "image/jpeg", 200], fetched
        cookie = browser.get_cookie("meshnode_patient")
        assert cookie is not None and cookie["httpOnly"] and cookie["path"] == "/p/"
        session = {"Cookie": f"meshnode_patient={cookie['value']}"}
        url = str(browser.find_element(By.ID, "download").get_attribute("href"))
        status, headers, whole = _get(url, session)
        assert status == 200 and len(whole) == fetched[3] and headers["accept-ranges"] == "bytes"
        # resumed as a download manager would: the rest after a cut, with If-Range
        cut = len(whole) // 2 + 1
        status, headers, rest = _get(url, {**session, "Range": f"bytes={cut}-", "If-Range": headers["etag"]})
        assert status == 206 and whole[:cut] + rest == whole
        out = tmp_path / "download"
        with zipfile.ZipFile(io.BytesIO(whole)) as archive:
            assert archive.testzip() is None
            archive.extractall(out)
        stored = sorted(f.read_bytes() for f in files)
        extracted = sorted(p.read_bytes() for p in (out / "DICOM").rglob("*") if p.is_file())
        assert extracted == stored  # byte for byte
        assert "personal" in (out / "README.TXT").read_text().lower()
        fs = FileSet(pydicom.dcmread(out / "DICOMDIR"))
        assert len(fs.find(StudyInstanceUID=study)) == len(files)
        if shutil.which("dcmdump"):
            dump = subprocess.run(["dcmdump", "-q", "DICOMDIR"], cwd=out, capture_output=True, text=True,
                                  timeout=60)
            assert dump.returncode == 0 and dump.stderr == "", dump.stderr
            check = subprocess.run(["dcmmkdir", "+U", "-Pgp", "+r", "DICOM"], cwd=out, capture_output=True,
                                   text=True, timeout=60)
            assert check.returncode == 0 and "E:" not in check.stdout + check.stderr, check.stdout + check.stderr

        # forward to a doctor: a separate share with its own link and code
        mails_before = len(smtp.received)
        browser.find_element(By.ID, "forward-email").send_keys("gp@example.org")
        browser.find_element(By.ID, "forward-code-to").send_keys("+447700900999")
        browser.find_element(By.CSS_SELECTOR, "#forward-form button[type=submit]").click()
        wait("forwarded", lambda: "Sent" in _message(browser))
        mesh.wait_for(lambda: _link_token(smtp, "gp@example.org", mails_before), 60, "the doctor's link email")

        # the staff see the history; the audit log names the share as a participant
        history = mesh.cli(a, "patient-share", "history", second)
        actions = [h["action"] for h in history["history"]]
        for action in ("created", "email sent", "code sent", "viewed", "key image", "downloaded", "forwarded"):
            assert action in actions, (action, actions)
        export = mesh.ws.run("meshnode", "audit", "export", "--json", "--home", str(a.home))
        entries = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
        assert any(f"share:{second}" in json.dumps(e) for e in entries)

        # the link expires (its end time passes: set in the node's database, as time would): a clear page,
        # nothing revealed, and the open session ends with it
        db = sqlite3.connect(a.home / "node.db")
        with db:
            db.execute("UPDATE patient_links SET expires_at = ? WHERE link_id = ?", (time.time() - 60, second))
        db.close()
        assert _get(f"{public}/p/api/share", session)[0] in (401, 404)
        browser.delete_all_cookies()
        browser.get(f"{public}/p/#t={token}")
        wait("the expired link's page", lambda: "does not work" in _message(browser))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "Ann" not in body and "SYNTHETIC" not in body
        assert not browser.find_element(By.ID, "code-step").is_displayed()
        assert_accessible(browser, "an expired link")
    finally:
        gateway.stop()
        smtp.stop()


def _with_preamble(source: Path, target: Path, preamble: bytes) -> Path:
    data = source.read_bytes()
    target.write_bytes(preamble.ljust(128, b"\0")[:128] + data[128:])
    return target


def test_an_upload_link_takes_good_files_and_refuses_the_rest_with_reasons(
        tmp_path: Path, mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    smtp = SmtpServer(tmp_path / "smtp").start()
    gateway = SmsGateway(time.time).start()
    try:
        a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
        _staff, public = _configure(a, smtp, gateway)
        mesh.start(a)
        mesh.cli(a, "upload-link", "create", "--person", "Dr Who", "--email", "who@example.org",
                 "--code-to", MOBILE)
        token = mesh.wait_for(lambda: _link_token(smtp, "who@example.org"), 60, "the upload link email")

        picked = tmp_path / "picked"
        good = generate_ct_study(picked / "cd", slices=2, rows=64, columns=64, seed=31)
        letter = picked / "letter.txt"
        letter.write_text("Dear doctor, here are my images.")
        extra = generate_ct_study(tmp_path / "extra", slices=2, rows=64, columns=64, seed=32)
        exe = _with_preamble(extra[0], picked / "viewer.dcm", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00")
        archive = picked / "cd.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("../escaped.dcm", extra[1].read_bytes())
            z.writestr("IMAGES/IM0001", extra[1].read_bytes())

        _open_link(browser, public, token)
        sms_before = len(gateway.received)
        browser.find_element(By.ID, "send-code").click()
        code = mesh.wait_for(lambda: _sms_code(gateway, MOBILE, sms_before), 60, "the code")
        _enter_code(browser, code)
        wait("the upload page", lambda: browser.current_url.endswith("/p/upload")
             and browser.find_element(By.ID, "send"))
        browser.find_element(By.ID, "pick-files").send_keys("\n".join(str(p) for p in (*good, letter, exe, archive)))
        wait("the files counted", lambda: "5 file(s)" in browser.find_element(By.ID, "count").text)
        browser.find_element(By.ID, "send").click()
        wait("the results", lambda: "Done" in browser.find_element(By.ID, "status").text, 120)
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#results tr")]
        text = "\n".join(rows)
        assert sum("Received" in r for r in rows) == 3, rows  # the two good files and the ZIP's good member
        assert "letter.txt" in text and "not a DICOM file" in text
        assert "viewer.dcm" in text and "executable" in text.lower()
        assert "escaped.dcm" in text and ".." in text
        assert_accessible(browser, "the upload results")
        screenshot(browser, "patient-upload-results")

        held = sorted(p.read_bytes() for p in (a.home / "quarantine").rglob("*.dcm"))
        assert held == sorted([*(f.read_bytes() for f in good), extra[1].read_bytes()])
        escaped = [p for p in tmp_path.rglob("escaped*")]
        assert escaped == [], escaped  # nothing written outside the quarantine folder
        assert not any(p.read_bytes()[:2] == b"MZ" for p in (a.home / "quarantine").rglob("*") if p.is_file())
    finally:
        gateway.stop()
        smtp.stop()
