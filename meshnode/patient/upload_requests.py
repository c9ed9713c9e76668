"""Asks for an upload link (issue 14): a patient or an outside clinician asks, on the organisation's public page
(/p/ask), for a link to send images; the PACS team sends one (LinkService.create_upload: the usual email + code)
or declines.

The ask is unauthenticated and on the internet, so:
- nothing is sent to the addresses given when they ask (the form cannot mail or text third parties, nor run up
  SMS costs): the only message ever sent is the link a PACS user chose to send;
- at most `max_pending_upload_requests` wait at once ([patient_access]); past that, asks are refused
  (UnavailableError: the page says to try later or call); and at most PER_CLIENT of them from one client
  address, so one address (within the public rate limit) cannot fill the queue for everyone else;
- an ask with the same email and code destination as one pending is the same ask (nothing new is stored);
- input is checked as a link's (protocol.patient_link: check_person, check_email, code_channel), the message is
  at most MAX_MESSAGE printable characters (new lines allowed; control and bidi characters refused);
- the answer is the same for a new ask and a coalesced one (it never says what is known).

A decision is a compare-and-set on the row's state (pending -> sent | declined): of two PACS users deciding at
once, one wins, the other gets UploadStateError. "Send" claims the row first, then makes the link; if making
the link fails, the row is pending again. A decline's reason stays in the row only (it may name the patient);
the audit trail has fixed phrases and IDs.

Stores: the UploadRequestStore Protocol, MemoryUploadRequestStore here, SqliteUploadRequestStore in
meshnode.patient.sqlite_upload_requests (table upload_requests, meshnode/storage/schema.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import trio

from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.upload_errors import UploadStateError
from meshnode.storage.audit import AuditEvent, EventCode
from protocol import patient_link as pl
from protocol.errors import NotFoundError, UnavailableError

log = logging.getLogger(__name__)

PENDING = "pending"
SENT = "sent"
DECLINED = "declined"
STATES = (PENDING, SENT, DECLINED)
MAX_MESSAGE = 500
#: pending asks from one client address (a household or a clinic behind one NAT asks a few times at most)
PER_CLIENT = 5
#: what the asker is told when the queue is full
FULL = ("too many requests are waiting for the imaging team just now: please try again later, or contact the "
        "hospital by phone")
MINE = ("several requests from your connection are already waiting for the imaging team: please wait for them, "
        "or contact the hospital by phone")

Added = Literal["added", "duplicate", "full", "client full"]
AuditFn = Callable[[AuditEvent], Awaitable[None]]


@dataclass(frozen=True)
class UploadRequest:
    request_id: str
    person: str
    email: str
    #: where the code will go: an E.164 number or a second email address (protocol.patient_link.code_channel)
    code_to: str
    message: str
    #: the asker's client address
    client: str
    created_at: float
    state: str = PENDING
    decided_by: str = ""
    decided_at: float = 0.0
    #: a decline's reason (kept only here), or "" ; for a sent one: the link's ID
    outcome: str = ""


class UploadRequestStore(Protocol):
    def add(self, request: UploadRequest, max_pending: int, per_client: int = PER_CLIENT) -> tuple[Added, str]:
        """In one transaction: a pending ask with the same email (case-insensitive) and code_to -> ("duplicate",
        its ID), nothing written; `max_pending` or more pending -> ("full", ""); `per_client` or more pending from
        the request's client -> ("client full", ""); else ("added", its ID)."""
        ...

    def get(self, request_id: str) -> UploadRequest | None: ...

    def pending(self, limit: int = 500) -> list[UploadRequest]:
        """Oldest first."""
        ...

    def decide(self, request: UploadRequest, expected_state: str) -> bool:
        """Write `request` (its state, decided_by, decided_at, outcome) while the stored state is
        `expected_state`; True if written."""
        ...


def check_row(request: UploadRequest) -> None:
    if request.state not in STATES:
        raise ValueError(f"upload request {request.request_id}: state not known")


def _same(a: UploadRequest, b: UploadRequest) -> bool:
    return a.email.lower() == b.email.lower() and a.code_to.lower() == b.code_to.lower()


class MemoryUploadRequestStore:
    def __init__(self) -> None:
        self._rows: dict[str, UploadRequest] = {}

    def add(self, request: UploadRequest, max_pending: int, per_client: int = PER_CLIENT) -> tuple[Added, str]:
        check_row(request)
        pending = [r for r in self._rows.values() if r.state == PENDING]
        same = next((r for r in pending if _same(r, request)), None)
        if same is not None:
            return "duplicate", same.request_id
        if len(pending) >= max_pending:
            return "full", ""
        if len([r for r in pending if r.client == request.client]) >= per_client:
            return "client full", ""
        if request.request_id in self._rows:
            raise ValueError(f"upload request {request.request_id}: exists")
        self._rows[request.request_id] = request
        return "added", request.request_id

    def get(self, request_id: str) -> UploadRequest | None:
        return self._rows.get(request_id)

    def pending(self, limit: int = 500) -> list[UploadRequest]:
        return [r for r in self._rows.values() if r.state == PENDING][:limit]

    def decide(self, request: UploadRequest, expected_state: str) -> bool:
        check_row(request)
        stored = self._rows.get(request.request_id)
        if stored is None or stored.state != expected_state:
            return False
        self._rows[request.request_id] = request
        return True


def check_message(value: object) -> str:
    """1 to MAX_MESSAGE characters, printable or new lines (no control or bidi-override characters)."""
    if not isinstance(value, str):
        raise pl.PatientAccessError("message: say what images and from where")
    text = value.replace("\r\n", "\n").strip()
    if not text or len(text) > MAX_MESSAGE or not all(c == "\n" or c.isprintable() for c in text):
        raise pl.PatientAccessError(f"message: 1 to {MAX_MESSAGE} printable characters (what images, from where)")
    return text


class LinkMaker(Protocol):
    """meshnode.patient.service.LinkService as this needs it."""

    async def create_upload(self, actor: str, person: object, email: object, code_to: object,
                            days: object = None) -> str: ...


class UploadRequests:
    def __init__(self, config: PatientAccessConfig, store: UploadRequestStore, links: LinkMaker, audit: AuditFn, *,
                 clock: Callable[[], float] = time.time, draw: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.config = config
        self.store = store
        self.links = links
        self.audit = audit
        self.clock = clock
        self.draw = draw
        self._limiter = trio.CapacityLimiter(1)

    async def _db(self, fn: Callable[[], object]) -> object:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def ask(self, person: object, email: object, code_to: object, message: object, client: str) -> None:
        """Store an ask (or find the same one pending). Sends nothing. PatientAccessError on bad input,
        UnavailableError when the queue is full."""
        name = pl.check_person(person)
        address = pl.check_email(email)
        _, destination = pl.code_channel(code_to, address)
        text = check_message(message)
        row = UploadRequest(self.draw(16).hex(), name, address, destination, text, client[:64], self.clock())
        added, request_id = await self._add(row)
        if added == "full":
            log.warning("upload link asks: %d pending, the most allowed; an ask was refused",
                        self.config.max_pending_upload_requests)
            raise UnavailableError(FULL)
        if added == "client full":
            raise UnavailableError(MINE)
        if added == "added":
            await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "upload-request-received", actor="public",
                                        detail=f"upload-request:{request_id}"))

    async def _add(self, row: UploadRequest) -> tuple[Added, str]:
        cap = self.config.max_pending_upload_requests
        result: list[tuple[Added, str]] = []
        await self._db(lambda: result.append(self.store.add(row, cap)))
        return result[0]

    async def pending(self) -> list[UploadRequest]:
        rows: list[list[UploadRequest]] = []
        await self._db(lambda: rows.append(self.store.pending()))
        return rows[0]

    async def _claim(self, user: str, request_id: str, state: str, outcome: str) -> UploadRequest:
        found: list[UploadRequest | None] = []
        await self._db(lambda: found.append(self.store.get(request_id)))
        row = found[0]
        if row is None:
            raise NotFoundError("no such request")
        decided = replace(row, state=state, decided_by=f"user:{user}", decided_at=self.clock(), outcome=outcome)
        won: list[bool] = []
        await self._db(lambda: won.append(row.state == PENDING and self.store.decide(decided, PENDING)))
        if not won[0]:
            raise UploadStateError("this request was already dealt with (by someone else?): reload the page")
        return decided

    async def send(self, user: str, request_id: str) -> str:
        """Send the asker an upload link (the usual email + code); the link's ID."""
        claimed = await self._claim(user, request_id, SENT, "")
        try:
            link_id = await self.links.create_upload(f"user:{user}", claimed.person, claimed.email, claimed.code_to,
                                                     None)
        except BaseException:  # noqa: BLE001 - re-raised: only puts the row back
            with trio.CancelScope(shield=True):  # not sent: the request waits again
                await self._db(lambda: self.store.decide(replace(claimed, state=PENDING, decided_by="",
                                                                 decided_at=0.0), SENT))
            raise
        done = replace(claimed, outcome=link_id)
        await self._db(lambda: self.store.decide(done, SENT))
        await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "upload-request-sent", actor=f"user:{user}",
                                    detail=f"upload-request:{request_id} share:{link_id}"))
        return link_id

    async def decline(self, user: str, request_id: str, reason: object) -> None:
        why = pl.check_reason(reason)
        await self._claim(user, request_id, DECLINED, why)
        await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "upload-request-declined", actor=f"user:{user}",
                                    detail=f"upload-request:{request_id}"))
