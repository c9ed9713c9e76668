"""What the public pages (meshnode.web.patient_web) and uploads need from patient links: the interface.

A link is made by a staff user (or by forwarding a share) for one person: `share` links give view,
download and forward of some studies, `upload` links let the person upload files into quarantine. The
person opens the link (its random token, only its hash is stored), asks for a one-time code on the second
channel, enters it, and gets a grant for a short signed-in session. Every request re-checks the link:
revoked or expired ends it at once.

Unknown, expired and revoked links all give one answer (LinkGone), so a guess learns nothing; nothing
about the patient is in any answer before the code is right.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from starlette.requests import Request


class LinkKind(str, Enum):
    SHARE = "share"
    UPLOAD = "upload"


@dataclass(frozen=True)
class LinkOpened:
    """What a person sees before the code: nothing about the patient."""

    kind: LinkKind
    #: a code has been sent and still works (the page asks for it rather than offering to send one)
    code_pending: bool
    #: new codes this link may still ask for
    resends_left: int
    #: the channel the code goes to, as a word: "text message" or "email" (never the number or address)
    channel: str


@dataclass(frozen=True)
class LinkGrant:
    """A person who entered the right code: what their session may do. Re-read on every request."""

    link_id: str
    kind: LinkKind
    #: Study Instance UIDs the share gives (empty for an upload link)
    studies: tuple[str, ...]
    #: unix time the link stops working
    expires_at: float
    #: the organisation's policy and this link's forwards left allow a forward now
    may_forward: bool
    #: the person's name as the staff user entered it (shown after the code)
    person: str
    #: who made it: the staff user, or "share:<id>" for a forwarded share
    created_by: str


class PatientLinks(Protocol):
    """The link service (meshnode.patient.service implements it)."""

    async def opened(self, token: str, client: str) -> LinkOpened:
        """The link's state before the code. LinkGone if unknown, expired or revoked."""
        ...

    async def send_code(self, token: str, client: str) -> None:
        """Send a new one-time code on the second channel (limited resends). LinkGone, or LinkLocked."""
        ...

    async def verify(self, token: str, code: str, client: str) -> LinkGrant:
        """The right code gives the grant; a wrong one counts (CodeRefused with attempts left) and the last
        allowed wrong one locks the link (LinkLocked) and tells the staff user who made it."""
        ...

    async def current(self, link_id: str) -> LinkGrant:
        """The grant as it is now (LinkGone once revoked or expired): every request after the code."""
        ...

    async def forward(self, grant: LinkGrant, email: str, code_to: str, client: str) -> str:
        """A new share of the same studies for a clinician (its own link and code, audited, expiring no later
        than this one); refused unless grant.may_forward. Returns the new link's id."""
        ...

    async def record(self, grant: LinkGrant, action: str, detail: str, client: str) -> None:
        """Audit one view, download or key-image (PS3.15 A.5, the share as a participant) and add it to the
        link's history the staff see."""
        ...


class PatientGate(Protocol):
    """The public app's session check (meshnode.web.patient_web implements it): the grant of the request's
    patient session cookie, of the wanted kind, re-checked against the link; HttpError 401 otherwise."""

    async def require(self, request: Request, kind: LinkKind) -> LinkGrant:
        ...
