"""Test helpers for patient links: a real local HTTP server standing in for the SMS gateway (it records each
POST and whether its signature verifies), a settable clock, and a LinkService wired to a real SMTP server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from meshnode.notify.config import NotifyConfig
from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.link_store import LinkStore, MemoryLinkStore
from meshnode.patient.service import HoldsFn, LinkService
from meshnode.storage.users import MemoryUserStore, User
from meshnode.notify.signed_post import verify_signature
from tests.meshnode.notify.helpers import Audit, config_for
from tests.meshnode.notify.smtp_server import SmtpServer

SECRET = "sms-secret-0123456789abcdef"
STUDY = "1.2.826.0.1.3680043.8.498.77"
NOW = 1_800_000_000.0


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Sms:
    to: str
    text: str
    signed: bool  # X-Meshnode-Signature verified with SECRET at the time it came

    @property
    def code(self) -> str:
        m = re.search(r"\b([0-9]{6})\b", self.text)
        assert m is not None, self.text
        return m[1]


@dataclass
class SmsGateway:
    """ThreadingHTTPServer on 127.0.0.1: records every POST; answers `status`."""

    clock: Callable[[], float]
    status: int = 200
    received: list[Sms] = field(default_factory=list)
    #: every POST's JSON body as it came
    bodies: list[dict[str, object]] = field(default_factory=list)

    def start(self) -> SmsGateway:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                data = json.loads(body)
                gateway.bodies.append(data)
                ok = verify_signature(SECRET, self.headers.get("X-Meshnode-Signature", ""), body, gateway.clock())
                gateway.received.append(Sms(data["to"], data["text"], ok))
                self.send_response(gateway.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/send"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def access_config(gateway: SmsGateway | None, **kw: object) -> PatientAccessConfig:
    values: dict[str, object] = dict(enabled=True, public_url="https://images.rxx.nhs.uk",
                                     sms_gateway_url=gateway.url if gateway else "", sms_secret=SECRET)
    values.update(kw)
    return PatientAccessConfig(**values)  # type: ignore[arg-type]


def users() -> MemoryUserStore:
    store = MemoryUserStore()
    store.add_user(User("alice", ("clinician",), 0, email="alice@rxx.nhs.uk"))
    return store


def service(smtp: SmtpServer, gateway: SmsGateway | None, tmp_path: Path, clock: Clock, *,
            store: LinkStore | None = None, holds: HoldsFn | None = None, notify: NotifyConfig | None = None,
            **kw: object) -> tuple[LinkService, Audit]:
    audit = Audit()
    svc = LinkService(access_config(gateway, **kw), notify or config_for(smtp, tmp_path), store or MemoryLinkStore(),
                      users(), audit, org_name="Royal Example NHS Trust", clock=clock, holds=holds)
    return svc, audit


def token_of(smtp: SmtpServer, to: str) -> str:
    """The token in the newest link email to `to`."""
    for r in reversed(smtp.received):
        if to in r.rcpt_tos:
            body = r.message.get_body(("plain",))
            assert body is not None
            m = re.search(r"/p/#t=([A-Za-z0-9_-]{43})\b", body.get_content())
            if m:
                return m[1]
    raise AssertionError(f"no link email to {to}")
