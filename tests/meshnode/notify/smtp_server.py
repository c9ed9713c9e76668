"""A real SMTP server for the tests: aiosmtpd (its own asyncio loop in a thread of the test process, never
in a node), STARTTLS with a certificate made here (cryptography), optional login; it keeps what it receives.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.meshnode.audit_export.helpers import Pki, make_pki


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool  # the message came over TLS (after STARTTLS)
    login: str  # the user that logged in ("" for none)

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=SMTP_POLICY).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    refuse_rcpt: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse_rcpt:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else ""
        self.received.append(Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), data,
                                      session.ssl is not None, login))
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SmtpServer:
    """STARTTLS required before MAIL (and before AUTH). Start and stop it at will: the port stays."""

    def __init__(self, folder: Path, *, users: dict[str, str] | None = None, port: int | None = None,
                 starttls: bool = True) -> None:
        self.pki: Pki = make_pki(folder, "smtp")
        self.port = port or free_port()
        self.users = users or {}
        self.starttls = starttls
        self.handler = _Handler()
        self._controller: Controller | None = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and self.users.get(auth_data.login.decode()) == auth_data.password.decode())
        return AuthResult(success=ok, auth_data=auth_data if ok else None)

    def start(self) -> SmtpServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        extra: dict[str, Any] = {"tls_context": context, "require_starttls": True} if self.starttls else {}
        if self.users:
            extra.update(authenticator=self._authenticate, auth_require_tls=True, auth_required=True)
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                      server_hostname="localhost", **extra)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
