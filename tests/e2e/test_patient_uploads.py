"""Uploads on a real node process: a staff user makes an upload link (`meshnode upload-link create`), the
person reads the link and the code from their email (aiosmtpd), signs in on /p/, uploads a ZIP of a CD
(good instances, a text file, an executable preamble, a `../` name) by tus with the connection dropped in
the middle of a PATCH and resumed from the node's offset; the checks' reasons come back; the PACS team
accepts, and the study is found by QIDO-RS. Nothing is written outside the quarantine folder."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from meshnode.dicom.synthetic import generate_ct_study
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user
from tests.meshnode.notify.smtp_server import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _mail_text(smtp: SmtpServer, to: str) -> str:
    mails = [m for m in smtp.received if to in m.rcpt_tos]
    return mails[-1].message.get_body(("plain",)).get_content() if mails else ""  # type: ignore[union-attr]


def _dropped_patch(url: str, path: str, headers: dict[str, str], declared: int, sent: bytes) -> None:
    parts = urllib.parse.urlsplit(url)
    lines = [f"PATCH {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {declared}",
             "Content-Type: application/offset+octet-stream", "Upload-Offset: 0",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)


@dataclass
class SignedIn:
    url: str
    node: Node
    tus: dict[str, str]
    cookie: tuple[str, str]
    pacs: str
    clinician: str


def _signed_in(tmp_path: Path, mesh: MeshDemo, smtp: SmtpServer) -> SignedIn:
    """A node with patient access, an upload link made by the CLI, and its person signed in on /p/ with the
    link and the code from their email."""
    a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    with open(a.home / "node.toml", "a", encoding="utf-8") as f:
        f.write(f'\n[http]\nlisten = "127.0.0.1:{port}"\npublic_url = "{url}"\n'
                f'\n[notify]\nhost = "127.0.0.1"\nport = {smtp.port}\nca = "{smtp.pki.ca_cert}"\n'
                'from_address = "imaging-mesh@rgt.nhs.uk"\norg_address = "pacs-team@rgt.nhs.uk"\n'
                f'\n[patient_access]\nenabled = true\npublic_url = "{url}"\n')
    mesh.start(a)
    pacs = add_user(mesh, a, "pacs1", "pacs")
    clinician = add_user(mesh, a, "doc", "clinician")
    mesh.cli(a, "upload-link", "create", "--person", "Dr Who", "--email", "who@example.org",
             "--code-to", "who@example.net")
    link_mail = mesh.wait_for(lambda: _mail_text(smtp, "who@example.org"), 30, "the link email")
    token = re.search(r"/p/#t=([A-Za-z0-9_-]{43})", link_mail).group(1)  # type: ignore[union-attr]
    assert requests.post(url + "/p/api/code", json={"token": token}, timeout=10).status_code == 200
    code_mail = mesh.wait_for(lambda: _mail_text(smtp, "who@example.net"), 30, "the code email")
    code = re.search(r"is ([0-9]{6})\.", code_mail).group(1)  # type: ignore[union-attr]
    verified = requests.post(url + "/p/api/verify", json={"token": token, "code": code}, timeout=10)
    assert verified.status_code == 200 and verified.json()["kind"] == "upload", verified.text
    cookie = verified.headers["set-cookie"].split(";")[0]
    name, _, value = cookie.partition("=")
    tus = {"Cookie": cookie, "X-CSRF-Token": verified.json()["csrf"], "Tus-Resumable": "1.0.0"}
    return SignedIn(url, a, tus, (name, value), pacs, clinician)


def test_upload_by_tus_with_a_drop_then_accept_and_qido(tmp_path: Path, mesh: MeshDemo) -> None:
    smtp = SmtpServer(tmp_path / "smtp").start()
    try:
        signed = _signed_in(tmp_path, mesh, smtp)
        url, a, tus, pacs, clinician = signed.url, signed.node, signed.tus, signed.pacs, signed.clinician

        files = generate_ct_study(tmp_path / "cd", slices=3, rows=64, columns=64, seed=11)
        good = [p.read_bytes() for p in files]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for i, data in enumerate(good):
                z.writestr(f"DICOM/IM{i}", data)
            z.writestr("README.TXT", b"This CD holds images.")
            z.writestr("DICOM/EVIL", b"MZ" + good[0][2:])
            z.writestr("../../escape.dcm", good[0])
        archive = out.getvalue()

        meta = "filename " + base64.b64encode(b"cd.zip").decode()
        created = requests.post(url + "/p/api/uploads", timeout=10, headers={
            **tus, "Upload-Length": str(len(archive)), "Upload-Metadata": meta})
        assert created.status_code == 201, created.text
        where = created.headers["Location"]
        half = len(archive) // 2
        _dropped_patch(url, where, tus, len(archive), archive[:half])

        def offset() -> int:
            return int(requests.head(url + where, headers=tus, timeout=10).headers["Upload-Offset"])

        mesh.wait_for(lambda: offset() == half, 30, "the dropped PATCH's bytes committed")
        deadline = time.monotonic() + 30
        while True:  # 409 while the node still closes the dropped request: a client asks again
            rest = requests.patch(url + where, data=archive[half:], timeout=60, headers={
                **tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(half)})
            if rest.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert rest.status_code == 204 and rest.headers["Upload-Offset"] == str(len(archive)), rest.text

        results: dict[str, Any] = {f["name"]: f for f in requests.get(
            url + "/p/api/uploads", headers=tus, timeout=10).json()["files"]}
        assert [results[f"cd.zip/DICOM/IM{i}"]["outcome"] for i in range(3)] == ["accepted"] * 3
        assert "not a DICOM file" in results["cd.zip/README.TXT"]["reason"]
        assert "Windows executable" in results["cd.zip/DICOM/EVIL"]["reason"]
        assert "'..'" in results["cd.zip/../../escape.dcm"]["reason"]
        held = sorted(p.relative_to(a.home).parts[0] for p in a.home.rglob("*.dcm") if "quarantine" in p.parts)
        assert held == ["quarantine"] * 3
        assert not any(p.name == "escape.dcm" for p in tmp_path.rglob("*"))
        assert not list((a.home / "uploads").rglob("*.part"))

        staff = {"Authorization": f"Bearer {pacs}", "Content-Type": "application/json"}
        assert requests.get(url + "/ui/api/uploads", headers={"Authorization": f"Bearer {clinician}"},
                            timeout=10).status_code == 403
        [entry] = requests.get(url + "/ui/api/uploads", headers=staff, timeout=10).json()["links"]
        assert entry["person"] == "Dr Who" and entry["files"] == 3
        [study] = entry["studies"]
        accepted = requests.post(url + f"/ui/api/uploads/{entry['link']}/accept", headers=staff, timeout=60)
        assert accepted.status_code == 200 and accepted.json() == {"stored": 3, "held": []}, accepted.text
        again = requests.post(url + f"/ui/api/uploads/{entry['link']}/accept", headers=staff, timeout=60)
        assert again.status_code == 409
        found = requests.get(url + "/dicomweb/studies", timeout=10,
                             params={"StudyInstanceUID": study["study_uid"]},
                             headers={"Authorization": f"Bearer {pacs}", "Accept": "application/dicom+json"})
        assert found.status_code == 200 and len(found.json()) == 1, found.text
        assert not list((a.home / "quarantine").rglob("*.dcm"))
        history = mesh.cli(a, "patient-share", "history", entry["link"])
        assert "uploaded" in json.dumps(history)
    finally:
        smtp.stop()


def test_the_upload_page_in_a_browser(tmp_path: Path, mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    """The uploader's page: files picked (a good instance, a text file), sent by its tus client, the results
    with reasons shown; axe finds no serious violation."""
    smtp = SmtpServer(tmp_path / "smtp").start()
    try:
        signed = _signed_in(tmp_path, mesh, smtp)
        files = generate_ct_study(tmp_path / "picked", slices=2, rows=64, columns=64, seed=12)
        note = tmp_path / "picked" / "letter.txt"
        note.write_text("Dear doctor, here are my images.")
        browser.get(signed.url + "/p/static/upload.css")
        browser.add_cookie({"name": signed.cookie[0], "value": signed.cookie[1], "path": "/p/"})
        browser.get(signed.url + "/p/upload")
        wait("the page", lambda: browser.find_element(By.ID, "send"))
        browser.find_element(By.ID, "pick-files").send_keys("\n".join(str(p) for p in [*files, note]))
        wait("the files counted", lambda: "3 file(s)" in browser.find_element(By.ID, "count").text)
        browser.find_element(By.ID, "send").click()
        wait("the results", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#results tr")) == 3 or None)
        text = browser.find_element(By.ID, "results").text
        assert text.count("Received") == 2 and "letter.txt" in text and "not a DICOM file" in text
        assert browser.find_element(By.ID, "error").text == ""
        assert_accessible(browser, "upload page")
        screenshot(browser, "patient-upload")
        held = list((signed.node.home / "quarantine").rglob("*.dcm"))
        assert sorted(p.read_bytes() for p in held) == sorted(p.read_bytes() for p in files)

        # the PACS team's page: who sent it, the study, then a reject without a reason, then accept
        browser.get(signed.url + "/ui/")
        wait("the portal", lambda: browser.find_element(By.ID, "org").text == "RGT")
        browser.find_element(By.ID, "token").send_keys(signed.pacs + Keys.ENTER)
        wait("the login", lambda: "pacs1" in browser.find_element(By.ID, "who").text)
        browser.get(signed.url + "/ui/uploads")
        wait("the held upload", lambda: "From Dr Who" in browser.find_element(By.ID, "links").text)
        assert "SYNTHETIC" in browser.find_element(By.ID, "links").text and "CT" in browser.find_element(
            By.ID, "links").text
        assert "letter.txt" in (browser.find_element(By.ID, "links").get_attribute("textContent") or "")
        assert_accessible(browser, "uploads review page")
        screenshot(browser, "portal-uploads")
        buttons = browser.find_elements(By.CSS_SELECTOR, "#links button")
        next(b for b in buttons if "Reject" in b.text).click()
        wait("the reason asked for", lambda: "reason" in browser.find_element(By.ID, "error").text)
        next(b for b in buttons if "Accept" in b.text).click()
        wait("the acceptance", lambda: "2 instance(s) stored" in browser.find_element(By.ID, "status").text)
        wait("the empty queue", lambda: browser.find_element(By.ID, "empty").is_displayed())
        assert not list((signed.node.home / "quarantine").rglob("*.dcm"))
    finally:
        smtp.stop()
