"""The patient pages on their own listener, in a real node process: a staff share made with `meshnode
patient-share create`, the link read from the email (a real SMTP server), the code from the second email,
the ZIP downloaded in byte ranges over real HTTP and checked file by file against the ingested instances.
The public listener answers nothing but /p/; the [http] listener has no /p/."""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace, free_tcp_port
from tests.e2e.web import enable_http, http_url
from tests.meshnode.notify.smtp_server import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def notify_section(smtp: SmtpServer, home: Path) -> str:
    (home / "smtp.password").write_text("s3cret-password\n", encoding="utf-8")
    return (f'\n[notify]\nhost = "127.0.0.1"\nport = {smtp.port}\nca = "{smtp.pki.ca_cert}"\n'
            'username = "rgt-gw"\npassword_file = "smtp.password"\nfrom_address = "imaging-mesh@rgt.nhs.uk"\n'
            'org_address = "pacs-team@rgt.nhs.uk"\n')


def request(url: str, *, body: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    h = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=h, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def mail_to(smtp: SmtpServer, to: str, pattern: str) -> str:
    for r in reversed(smtp.received):
        if to in r.rcpt_tos:
            body = r.message.get_body(("plain",))
            m = re.search(pattern, body.get_content() if body is not None else "")
            if m:
                return m[1]
    return ""


def test_patient_download_over_its_own_listener(tmp_path: Path) -> None:
    smtp = SmtpServer(tmp_path / "smtp", users={"rgt-gw": "s3cret-password"}).start()
    mesh = MeshDemo(Workspace(tmp_path))
    try:
        a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
        port = free_tcp_port()
        enable_http(a, notify_section(smtp, a.home)
                    + f'\n[patient_access]\nenabled = true\npublic_url = "http://127.0.0.1:{port}"\n'
                      f'listen = "127.0.0.1:{port}"\nrequests_per_minute = 1000\n')
        mesh.start(a)
        study, files = mesh.generate_and_ingest(a, 5, rows=64, columns=64, seed=7)
        link_id = mesh.cli(a, "patient-share", "create", "--study", study, "--person", "Ann Patient",
                           "--email", "ann@example.org", "--code-to", "ann.phone@example.net")["id"]
        token = mesh.wait_for(lambda: mail_to(smtp, "ann@example.org", r"/p/#t=([A-Za-z0-9_-]{43})\b"), 60,
                              "the link email")
        public = json.loads((a.home / "patient-http.json").read_text())["url"]
        assert public == f"http://127.0.0.1:{port}"
        staff = http_url(a)

        # nothing but /p/ on the public listener; no /p/ on the staff one
        for path in ("/health", "/metrics", "/ui/", "/dicomweb/studies", "/"):
            assert request(public + path)[0] == 404, path
        assert request(staff + "/p/")[0] == 404
        assert request(staff + "/health")[0] == 200

        status, _, body = request(public + "/p/api/open", body={"token": token})
        assert status == 200 and b"Ann" not in body
        assert request(public + "/p/api/code", body={"token": token})[0] == 200
        code = mesh.wait_for(lambda: mail_to(smtp, "ann.phone@example.net", r"\b([0-9]{6})\b"), 60, "the code")
        status, headers, body = request(public + "/p/api/verify", body={"token": token, "code": code})
        assert status == 200, body
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "Path=/p/" in headers["set-cookie"]
        session = {"Cookie": cookie}

        status, _, share = request(public + "/p/api/share", headers=session)
        assert status == 200 and json.loads(share)["studies"][0]["uid"] == study
        status, headers, whole = request(public + "/p/download/images.zip", headers=session)
        assert status == 200 and headers["accept-ranges"] == "bytes"
        size, etag = len(whole), headers["etag"]
        pieces = []
        for start, stop in ((0, 777), (777, size // 3), (size // 3, size)):
            status, headers, piece = request(public + "/p/download/images.zip",
                                             headers={**session, "Range": f"bytes={start}-{stop - 1}",
                                                      "If-Range": etag})
            assert status == 206 and headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
            pieces.append(piece)
        assert request(public + "/p/download/images.zip", headers={**session, "Range": f"bytes={size}-"})[0] == 416
        with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        dicom = sorted(data for n, data in members.items() if n not in ("DICOMDIR", "README.TXT"))
        assert dicom == sorted(f.read_bytes() for f in files)
        history = mesh.cli(a, "patient-share", "history", link_id)
        actions = [h["action"] for h in history["history"]]
        assert actions.count("downloaded") == 2  # the whole download and the ranged one (from byte 0)
        mesh.cli(a, "patient-share", "revoke", link_id, "--reason", "test over")
        assert request(public + "/p/api/share", headers=session)[0] == 401
    finally:
        mesh.close()
        smtp.stop()
