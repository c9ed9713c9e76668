"""The link service: makes, checks and ends patient links (protocol.patient_link is the state machine, a
LinkStore keeps them), sends the link by email and the one-time code by SMS gateway or a second email.

Durable before acknowledged: a link is stored, then its email is built and sent; if that fails in any way the
link is revoked ("email not sent") and the caller gets UnavailableError (HTTP 503); the share's Export is audited
only once the email went. Every change is a compare-and-set on the link's version, retried on a lost race, so
concurrent wrong codes all count and a revoke is seen by every later request. Revoking a share revokes its
forwards in the same transaction, and a forward is refused anyway while its parent is revoked or expired.

Who sees what (staff): `owner` None (the PACS team, `queues`; the control API) sees every link; a staff user
otherwise sees, shows and revokes only the links they made and the forwards of those. Unlock is the PACS
team's, with a reason (they checked who is asking).

Audit (PS3.15 A.5; the share is the participant, named `share:<id>` in actor or detail): a share made or
forwarded 110106 Export; an upload link, its email sent, link opened, revoke, unlock 110100 Application
Activity; a code sent, right or wrong or tried with none live 110114 User Authentication; a lock and a try on a
locked link 110113 Security Alert; a view 110103 Instances Accessed; a download or key image 110106 Export; an
upload 110107 Import; staff listing or showing links 110110 Patient Record (naming the links). Study UIDs only
hashed (hash_uid); audit details are fixed phrases with link IDs and client addresses, never free text (a revoke
reason, a caller's detail): those go to the link's history, which only staff see. Floodable events (opens, tries
with no code or on a locked link) are written once per link, client and hour.

Logs name the link ID and the failure's class (an SMTP code), never a relay's or gateway's text (it may name
the recipient).

The SMS gateway gets `POST sms_gateway_url` with the JSON body {"id": "<32 hex, unique>", "to": "+44...",
"text": "..."} and the header X-Meshnode-Signature: t=<unix time>,v1=<hex HMAC-SHA256(sms_secret, "<t>." +
body)> (meshnode.notify.signed_post); the gateway can drop a replayed id.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from typing import Any, TypeVar

import httpx
import trio

from meshnode.notify import smtp
from meshnode.notify.config import NotifyConfig
from meshnode.notify.recipient import domain_of, notify_address
from meshnode.notify.signed_post import post, signature
from meshnode.patient.config import PatientAccessConfig
from meshnode.patient.link_store import LinkEvent, LinkStore
from meshnode.patient.links import LinkGrant, LinkKind, LinkOpened
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import hash_uid
from meshnode.storage.users import UserStore
from protocol import patient_link as pl
from protocol.errors import NotFoundError, UnavailableError
from protocol.patient_link import LinkGone, LinkLocked, LinkPolicy, PatientAccessError, PatientLink

log = logging.getLogger(__name__)

T = TypeVar("T")
AuditFn = Callable[[AuditEvent], Awaitable[None]]
SendEmail = Callable[[NotifyConfig, bytes, str], None]
#: Study UIDs -> those this node does not hold
HoldsFn = Callable[[tuple[str, ...]], Awaitable[list[str]]]
SMS_TIMEOUT_S = 10.0
#: compare-and-set retries before giving up (only a flood of writers to one link gets there)
MAX_RACES = 50
#: what `record` accepts, and its audit code
RECORDED = {"viewed": EventCode.INSTANCES_ACCESSED, "downloaded": EventCode.EXPORT,
            "key image": EventCode.EXPORT, "uploaded": EventCode.IMPORT}
MAX_DETAIL = 200
#: opens, and tries with no live code or on a locked link, from one client: one event an hour per link
COALESCE_S = 3600.0
#: "opened" events one link may write in one hour, whatever the number of clients
MAX_OPEN_EVENTS = 50
#: the most links a staff listing returns in one page
MAX_PAGE = 500


def policy_of(config: PatientAccessConfig) -> LinkPolicy:
    return LinkPolicy(share_days=config.share_days, max_share_days=config.max_share_days,
                      upload_days=config.upload_days, allow_forward=config.allow_forward,
                      max_forwards=config.max_forwards, code_attempts=config.code_attempts,
                      code_minutes=config.code_minutes, code_resends=config.code_resends)


class LinkService:
    """meshnode.patient.links.PatientLinks, plus the staff operations."""

    def __init__(self, config: PatientAccessConfig, notify: NotifyConfig, store: LinkStore, users: UserStore,
                 audit: AuditFn, *, org_name: str, clock: Callable[[], float] = time.time,
                 draw: Callable[[int], bytes] = secrets.token_bytes, holds: HoldsFn | None = None,
                 send_email: SendEmail = smtp.send,
                 on_share: Callable[[tuple[str, ...]], None] | None = None) -> None:
        self.config = config
        self.notify = notify
        self.policy = policy_of(config)
        self.store = store
        self.users = users
        self.audit = audit
        self.org_name = org_name
        self.clock = clock
        self.draw = draw
        self.holds = holds
        self.send_email = send_email
        #: told the studies of each share made (the node warms their CRC-32s for the download); never blocks
        self.on_share = on_share
        self._limiter = trio.CapacityLimiter(1)
        #: (link, hour) -> "opened" events written in it (at most MAX_OPEN_EVENTS, from any number of clients)
        self._opens: dict[tuple[str, int], int] = {}
        #: (link, action, client) -> when last audited, for _floodable
        self._recent: dict[tuple[str, str, str], float] = {}

    # -- the person holding a link (PatientLinks) -------------------------------------------------------------

    async def opened(self, token: str, client: str) -> LinkOpened:
        link = await self._by_token(token)
        now = self.clock()
        await self._require_usable(link, now)
        since = await self._db(lambda: self.store.last_event_at(link.link_id, "opened", client))
        hour = (link.link_id, int(now // COALESCE_S))
        if now - since >= COALESCE_S and self._opens.get(hour, 0) < MAX_OPEN_EVENTS:
            # an intercepted link opened in a loop (from one address or many) must not bury the history
            if len(self._opens) > 10_000:
                self._opens.clear()
            self._opens[hour] = self._opens.get(hour, 0) + 1
            await self._events(LinkEvent(link.link_id, now, "opened", _share(link), client))
            await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "patient-link-opened", actor=_share(link),
                                        detail=f"from {client}"))
        return LinkOpened(kind=LinkKind(link.kind), code_pending=link.state(now) is pl.LinkState.CODE_SENT,
                          resends_left=link.resends_left(self.policy), channel=_channel_word(link))

    async def send_code(self, token: str, client: str) -> None:
        first = await self._by_token(token)
        await self._require_usable(first, self.clock())
        code = ""

        def step(link: PatientLink) -> tuple[PatientLink, tuple[LinkEvent, ...]]:
            nonlocal code
            new, code = pl.issue_code(link, policy=self.policy, now=self.clock(), draw=self.draw)
            return new, (LinkEvent(link.link_id, self.clock(), "code sent", _share(link), client,
                                   f"by {_channel_word(link)}, {new.codes_sent} of {1 + self.policy.code_resends}"),)

        link = await self._change(first.link_id, step)
        try:
            await self._deliver_code(link, code)
        except UnavailableError:
            digest = link.code_hash  # that code never arrived: dropped, and it does not use the budget

            def undo(now_link: PatientLink) -> tuple[PatientLink, tuple[LinkEvent, ...]]:
                return pl.code_not_delivered(now_link, digest), (
                    LinkEvent(link.link_id, self.clock(), "code not delivered", "node", client),)

            await self._change(link.link_id, undo)
            raise
        await self.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "patient-link-code-sent", actor=_share(link),
                                    detail=f"by {_channel_word(link)} for {client}"))

    async def verify(self, token: str, code: str, client: str) -> LinkGrant:
        first = await self._by_token(token)
        granted = False

        def step(link: PatientLink) -> tuple[PatientLink, tuple[LinkEvent, ...]]:
            nonlocal granted
            now = self.clock()
            new, granted = pl.check_code(link, code, policy=self.policy, now=now)
            if granted:
                return new, (LinkEvent(link.link_id, now, "verified", _share(link), client),)
            events = [LinkEvent(link.link_id, now, "code wrong", _share(link), client,
                                f"{new.attempts_left(self.policy)} attempt(s) left")]
            if new.locked_at:
                events.append(LinkEvent(link.link_id, now, "locked", _share(link), client,
                                        f"after {new.wrong_attempts} wrong codes"))
            return new, tuple(events)

        try:
            await self._require_usable(first, self.clock())
            link = await self._change(first.link_id, step)
        except pl.CodeRefused:  # no live code: nothing compared, not counted, but seen
            await self._floodable(first, client, EventCode.USER_AUTHENTICATION, "patient-link-no-code",
                                  Outcome.MINOR_FAILURE)
            raise
        except LinkLocked:
            await self._floodable(first, client, EventCode.SECURITY_ALERT, "patient-link-tried-locked",
                                  Outcome.MINOR_FAILURE)
            raise
        actor = _share(link)
        if granted:
            await self.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "patient-link-code", actor=actor,
                                        detail=f"right code from {client}"))
            return self._grant(link)
        if link.locked_at:
            await self.audit(AuditEvent(EventCode.SECURITY_ALERT, "patient-link-locked", Outcome.SERIOUS_FAILURE,
                                        actor=actor, detail=f"{link.wrong_attempts} wrong codes, last from {client}"))
            await self._tell_creator_locked(link)
            raise LinkLocked()
        await self.audit(AuditEvent(EventCode.USER_AUTHENTICATION, "patient-link-code", Outcome.MINOR_FAILURE,
                                    actor=actor, detail=f"wrong code from {client}"))
        left = link.attempts_left(self.policy)
        raise pl.CodeRefused(f"that code is not right: {left} attempt(s) left", left)

    async def current(self, link_id: str) -> LinkGrant:
        link = await self._link(link_id)
        await self._require_usable(link, self.clock())
        return self._grant(link)

    async def forward(self, grant: LinkGrant, email: str, code_to: str, client: str) -> str:
        parent = await self._link(grant.link_id)
        await self._require_usable(parent, self.clock())
        for _ in range(MAX_RACES):
            now = self.clock()
            parent2, child, token = pl.forward(parent, email=email, code_to=code_to, days=None, policy=self.policy,
                                               now=now, draw=self.draw)
            self._check_sms(child)
            events = (LinkEvent(parent.link_id, now, "forwarded", _share(parent), client, f"as share:{child.link_id}"),
                      LinkEvent(child.link_id, now, "created", _share(parent), client,
                                f"forwarded from share:{parent.link_id}"))
            if await self._db(lambda: self.store.forward_link(parent2, parent.version, child, events)):
                break
            parent = await self._link(grant.link_id)
        else:
            raise UnavailableError("this link is busy: try again")
        await self._send_link(child, token, forwarded=True)
        for study in child.studies:
            await self.audit(AuditEvent(EventCode.EXPORT, "patient-share-forwarded", actor=_share(parent),
                                        study=hash_uid(study), detail=f"as share:{child.link_id} from {client}"))
        await self._tell_patient_forwarded(parent, child)
        return child.link_id

    async def record(self, grant: LinkGrant, action: str, detail: str, client: str) -> None:
        code = RECORDED.get(action)
        if code is None:
            raise PatientAccessError(f"action: one of {sorted(RECORDED)}")
        link = await self._link(grant.link_id)
        await self._require_usable(link, self.clock())
        if (action == "uploaded") != (link.kind == pl.UPLOAD):
            raise PatientAccessError(f"a {link.kind} link cannot record {action!r}")
        text = "".join(c for c in detail if c.isprintable())[:MAX_DETAIL]
        await self._events(LinkEvent(link.link_id, self.clock(), action, _share(link), client, text))
        for study in link.studies or ("",):
            await self.audit(AuditEvent(code, f"patient-link-{action.replace(' ', '-')}", actor=_share(link),
                                        study=hash_uid(study) if study else "", detail=f"from {client}"))

    # -- staff -----------------------------------------------------------------------------------------------

    async def create_share(self, actor: str, studies: object, person: object, email: object, code_to: object,
                           days: object = None) -> str:
        uids = pl.check_studies(studies)
        if self.holds is not None:
            missing = await self.holds(uids)
            if missing:
                raise NotFoundError(f"this node does not hold study {missing[0]}: only studies held here can be "
                                    "shared")
        link_id = await self._create(actor, pl.SHARE, uids, person, email, code_to, days)
        if self.on_share is not None:
            self.on_share(uids)
        return link_id

    async def create_upload(self, actor: str, person: object, email: object, code_to: object,
                            days: object = None) -> str:
        return await self._create(actor, pl.UPLOAD, None, person, email, code_to, days)

    async def revoke(self, actor: str, link_id: str, reason: object, *, owner: str | None = None) -> None:
        """Revoke a link and, in the same transaction, the shares forwarded from it. `owner`: the staff user
        may only revoke their own links (and their forwards); None: any (the PACS team, the control API)."""
        why = pl.check_reason(reason)
        await self._owned(await self._link(link_id), owner)
        for _ in range(MAX_RACES):
            link = await self._link(link_id)
            now = self.clock()
            changes: list[tuple[PatientLink, int, tuple[LinkEvent, ...]]] = []
            if not link.revoked_at:
                changes.append((pl.revoke(link, reason=why, now=now), link.version,
                                (LinkEvent(link.link_id, now, "revoked", actor, "", why),)))
            children = [c for c in await self._db(lambda: self.store.children(link_id)) if not c.revoked_at]
            because = f"the share it was forwarded from was revoked: {why}"[:pl.MAX_REASON]
            for child in children:
                changes.append((pl.revoke(child, reason=because, now=now), child.version,
                                (LinkEvent(child.link_id, now, "revoked", actor, "", because),)))
            if not changes:
                return
            batch = tuple(changes)
            if await self._db(lambda: self.store.update_links(batch)):
                break
        else:
            raise UnavailableError("this link is busy: try again")
        for new, _, _ in changes:  # the reason stays in the history: it may name the patient
            detail = f"share:{new.link_id}" + (f" with share:{link_id}" if new.link_id != link_id else "")
            await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "patient-link-revoked", actor=actor,
                                        detail=detail))

    async def unlock(self, actor: str, link_id: str, reason: object) -> None:
        """The PACS team, having checked who is asking (`reason` says how: kept in the history)."""
        why = pl.check_reason(reason)

        def step(link: PatientLink) -> tuple[PatientLink, tuple[LinkEvent, ...]]:
            return pl.unlock(link, now=self.clock()), (LinkEvent(link.link_id, self.clock(), "unlocked", actor, "",
                                                                 why),)

        await self._change(pl.check_link_id(link_id), step)
        await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "patient-link-unlocked", actor=actor,
                                    detail=f"share:{link_id}"))

    async def list_links(self, kind: str | None = None, limit: int = 200, *, actor: str = "",
                         owner: str | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The links, newest first, from `offset`; `owner` "user:NAME": only theirs and their forwards (None:
        all); `actor` (staff): audited, naming the links shown (the rows name people and their addresses)."""
        if kind is not None and kind not in pl.KINDS:
            raise PatientAccessError(f"kind: one of {pl.KINDS}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE + 1:
            raise PatientAccessError(f"limit: 1 to {MAX_PAGE}")
        if not isinstance(offset, int) or offset < 0:
            raise PatientAccessError("offset: 0 or more")
        now = self.clock()
        found = await self._db(lambda: self.store.links(kind=kind, owner=owner, limit=limit, offset=offset))
        rows = [view(x, now) | {"email_sent": await self._email_sent(x)} for x in found]
        if actor:
            ids = " ".join(_share(x) for x in found)
            await self.audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-links-listed", actor=actor,
                                        detail=f"{len(rows)} link(s) listed with names and addresses: {ids}"
                                        if rows else "0 links listed"))
        return rows

    async def history(self, link_id: str, *, actor: str = "", owner: str | None = None) -> dict[str, Any]:
        """One link and its newest history; `actor` (staff): audited; `owner` as in list_links."""
        link = await self._link(link_id)
        await self._owned(link, owner)
        events = await self._db(lambda: self.store.events(link.link_id))
        if actor:
            await self.audit(AuditEvent(EventCode.PATIENT_RECORD, "patient-link-shown", actor=actor,
                                        detail=f"share:{link.link_id} with its history"))
        out = view(link, self.clock())
        out["email_sent"] = any(e.action == "email sent" for e in events) or await self._email_sent(link)
        out["history"] = [{"at": e.at, "action": e.action, "actor": e.actor, "client": e.client,
                           "detail": e.detail} for e in events]
        return out

    # -- inside ----------------------------------------------------------------------------------------------

    async def _create(self, actor: str, kind: str, studies: tuple[str, ...] | None, person: object, email: object,
                      code_to: object, days: object) -> str:
        now = self.clock()
        link, token = pl.create(kind=kind, studies=studies, person=person, email=email, code_to=code_to,
                                created_by=actor, days=days, policy=self.policy, now=now, draw=self.draw)
        self._check_sms(link)
        cap = self.config.links_per_hour
        recent = await self._db(lambda: self.store.links(created_by=actor, limit=cap))
        if len([x for x in recent if x.created_at > now - 3600]) >= cap:  # a stolen account mass-mailing
            raise PatientAccessError(f"at most {cap} links an hour per user ([patient_access] links_per_hour): "
                                     "try again later")
        detail = f"{len(link.studies)} stud{'y' if len(link.studies) == 1 else 'ies'}" if studies else "upload"
        if not await self._db(lambda: self.store.insert_link(link, (LinkEvent(link.link_id, now, "created", actor,
                                                                              "", detail),))):
            raise UnavailableError("could not make a new link: try again")
        await self._send_link(link, token, forwarded=False)
        if kind == pl.SHARE:
            for study in link.studies:
                await self.audit(AuditEvent(EventCode.EXPORT, "patient-share-created", actor=actor,
                                            study=hash_uid(study), detail=f"share:{link.link_id}"))
        else:
            await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "upload-link-created", actor=actor,
                                        detail=f"share:{link.link_id}"))
        return link.link_id

    def _check_sms(self, link: PatientLink) -> None:
        if link.code_channel == pl.SMS and not self.config.sms_gateway_url:
            raise PatientAccessError("code_to: no SMS gateway is configured here: give a second email address")

    async def _send_link(self, link: PatientLink, token: str, *, forwarded: bool) -> None:
        try:
            message = self._link_message(link, token, forwarded)
            await trio.to_thread.run_sync(self.send_email, self.notify, message, link.email)
        except Exception as exc:  # noqa: BLE001 - built or sent, any failure: the link must not stay live unsent
            log.warning("patient link %s: email not sent (%s)", link.link_id, _failure(exc))
            await self._revoke("node", link.link_id, "email not sent")
            if link.parent_id:  # a forward that never went does not count against max_forwards
                await self._change(link.parent_id, lambda p: (pl.forward_withdrawn(p), (
                    LinkEvent(p.link_id, self.clock(), "email failed", "node", "",
                              f"share:{link.link_id} withdrawn, not counted"),)))
            raise UnavailableError(f"the email with the link could not be sent ({_failure(exc)}); the link was "
                                   "withdrawn: check the address and try again") from None
        await self._events(LinkEvent(link.link_id, self.clock(), "email sent", "node", "", f"to {link.email}"))
        await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "patient-link-email-sent", actor="node",
                                    detail=f"share:{link.link_id}"))

    def _link_message(self, link: PatientLink, token: str, forwarded: bool) -> bytes:
        url = f"{self.config.public_url.rstrip('/')}/p/#t={token}"
        until = formatdate(link.expires_at, usegmt=True)
        msg = self._message(link.email)
        if link.kind == pl.UPLOAD:
            msg["Subject"] = f"{self.org_name}: a secure link to send images"
            lines = [f"{self.org_name} has sent you a secure link to upload images to them."]
        elif forwarded:
            msg["Subject"] = f"Images shared with you through {self.org_name}"
            lines = [(f"Images held by {self.org_name} were passed on to you by the patient they belong to, through "
                      f"{self.org_name}'s secure link service.")]
        else:
            msg["Subject"] = f"{self.org_name}: your secure link to images"
            lines = [f"{self.org_name} has shared images with you by a secure link."]
        lines += ["", f"Open it here: {url}", "",
                  f"You will need a one-time code: we send it by {_channel_word(link)} when you ask for it on the "
                  "page.", f"The link works until {until}.", "",
                  "If you were not expecting this email, do not open the link and tell the sender.",
                  "Do not reply: nobody reads replies."]
        _set_text(msg, "\n".join(lines) + "\n")
        return msg.as_bytes()

    def _message(self, to: str) -> EmailMessage:
        msg = EmailMessage(policy=SMTP)
        msg["From"] = self.notify.from_address
        msg["To"] = to
        msg["Date"] = formatdate(self.clock(), usegmt=True)
        msg["Message-ID"] = make_msgid(domain=domain_of(self.notify.from_address))
        msg["Auto-Submitted"] = "auto-generated"
        return msg

    def _code_text(self, code: str) -> str:
        return (f"Your code for {self.org_name} is {code}. It works for {self.config.code_minutes} minutes. "
                "Never tell anyone this code. We will not ask for it.")

    async def _deliver_code(self, link: PatientLink, code: str) -> None:
        text = self._code_text(code)
        if link.code_channel == pl.EMAIL:
            msg = self._message(link.code_to)
            msg["Subject"] = f"Your code for {self.org_name}"
            _set_text(msg, text + "\nDo not reply: nobody reads replies.\n")
            try:
                await trio.to_thread.run_sync(self.send_email, self.notify, msg.as_bytes(), link.code_to)
            except smtp.EmailError as exc:
                log.warning("patient link %s: code email not sent (%s)", link.link_id, _failure(exc))
                raise UnavailableError("the code could not be sent just now: try again in a few minutes") from None
            return
        body = json.dumps({"id": self.draw(16).hex(), "to": link.code_to, "text": text},
                          separators=(",", ":")).encode()
        headers = {"X-Meshnode-Signature": signature(self.config.sms_secret, int(self.clock()), body)}
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=SMS_TIMEOUT_S) as client:
            result = await post(client, self.config.sms_gateway_url, body, headers, SMS_TIMEOUT_S)
        if not result.ok:
            log.warning("patient link %s: SMS gateway refused or failed (%s)", link.link_id,
                        result.error.split(":", 1)[0][:40])
            raise UnavailableError("the code could not be sent just now: try again in a few minutes")

    async def _tell_creator_locked(self, link: PatientLink) -> None:
        """Email the staff user who made the link (of the first share, for a forward), else the organisation's
        address ([notify] org_address: links made by the control API, a user without an email); log if nobody.
        No patient details: the link ID, and the live forwards' IDs so they can be revoked too."""
        creator = link.created_by
        seen = 0
        while creator.startswith("share:") and seen < 3:  # a forwarded share: the staff user of the first one
            parent = await self._db(lambda: self.store.link(creator[6:]))
            creator = parent.created_by if parent is not None else ""
            seen += 1
        address = notify_address(self.users, creator[5:]) if creator.startswith("user:") else None
        address = address or self.notify.org_address or None
        if address is None:
            log.warning("patient link %s locked after wrong codes: nobody could be told (no email for its creator, "
                        "no [notify] org_address)", link.link_id)
            return
        now = self.clock()
        live = [c.link_id for c in await self._db(lambda: self.store.children(link.link_id))
                if c.state(now) not in (pl.LinkState.REVOKED, pl.LinkState.EXPIRED)]
        forwards = ("\nIt was passed on as " + ", ".join(f"share:{x}" for x in live) + ", still working: a lock "
                    "does not stop them; revoke them too if this was not the patient.\n") if live else ""
        msg = self._message(address)
        msg["Subject"] = "[dicom-mesh] a patient link was locked after wrong codes"
        _set_text(msg, f"The patient link share:{link.link_id} (made {formatdate(link.created_at, usegmt=True)}) was "
                       f"locked after {link.wrong_attempts} wrong codes.\nIf the person asks, check who they are, "
                       "then the PACS team unlocks it in the portal (Patient links) or with `meshnode patient-share "
                       f"unlock {link.link_id} --reason ...`; otherwise revoke it.\n{forwards}")
        try:
            await trio.to_thread.run_sync(self.send_email, self.notify, msg.as_bytes(), address)
        except smtp.EmailError as exc:
            log.warning("patient link %s: lock notice not sent (%s)", link.link_id, _failure(exc))
            return
        await self._events(LinkEvent(link.link_id, self.clock(), "lock notice sent", "node", "",
                                     "to the creator" if creator.startswith("user:") and address !=
                                     self.notify.org_address else "to the organisation's address"))

    async def _tell_patient_forwarded(self, parent: PatientLink, child: PatientLink) -> None:
        """The patient hears of every forward (to the share's own email): someone else holding the link would
        otherwise pass the images on unseen."""
        msg = self._message(parent.email)
        msg["Subject"] = f"{self.org_name}: your images were passed on"
        _set_text(msg, f"The images {self.org_name} shared with you were passed on to {pl.mask_email(child.email)} "
                       f"on {formatdate(child.created_at, usegmt=True)} using your secure link.\n\nIf you did not do "
                       f"this, contact {self.org_name} at once: they can withdraw it.\n"
                       "Do not reply: nobody reads replies.\n")
        try:
            await trio.to_thread.run_sync(self.send_email, self.notify, msg.as_bytes(), parent.email)
        except smtp.EmailError as exc:
            log.warning("patient link %s: forward notice not sent (%s)", parent.link_id, _failure(exc))
            await self._events(LinkEvent(parent.link_id, self.clock(), "forward notice failed", "node", "",
                                         f"share:{child.link_id}"))
            return
        await self._events(LinkEvent(parent.link_id, self.clock(), "forward notice sent", "node", "",
                                     f"share:{child.link_id} to {pl.mask_email(child.email)}"))

    async def _revoke(self, actor: str, link_id: str, why: str) -> None:
        def step(link: PatientLink) -> tuple[PatientLink, tuple[LinkEvent, ...]]:
            return pl.revoke(link, reason=why, now=self.clock()), (
                LinkEvent(link.link_id, self.clock(), "revoked", actor, "", why),)

        link = await self._link(link_id)
        if link.revoked_at:
            return
        await self._change(link_id, step)
        await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "patient-link-revoked", actor=actor,
                                    detail=f"share:{link_id}"))

    async def _require_usable(self, link: PatientLink, now: float) -> None:
        """The link, and for a forward the share it came from (LinkGone once that is revoked or expired)."""
        pl.require_usable(link, now)
        if link.parent_id:
            parent = await self._db(lambda: self.store.link(link.parent_id))
            pl.require_parent_usable(parent, now)

    async def _email_sent(self, link: PatientLink) -> bool:
        """False for a link stored but never emailed (a crash between the two): staff see "email not sent"."""
        return bool(await self._db(lambda: self.store.last_event_at(link.link_id, "email sent", "")))

    async def _owned(self, link: PatientLink, owner: str | None) -> None:
        """LinkGone (one answer: no hint it exists) unless `owner` made the link or the share it came from."""
        if owner is None or link.created_by == owner:
            return
        if link.parent_id:
            parent = await self._db(lambda: self.store.link(link.parent_id))
            if parent is not None and parent.created_by == owner:
                return
        raise LinkGone()

    async def _floodable(self, link: PatientLink, client: str, code: EventCode, action: str,
                         outcome: Outcome) -> None:
        """Audit a refused try once per link, client and hour (a loop must not flood the audit log)."""
        now = self.clock()
        key = (link.link_id, action, client)
        if now - self._recent.get(key, -COALESCE_S) < COALESCE_S:
            return
        if len(self._recent) > 10_000:
            self._recent.clear()
        self._recent[key] = now
        await self.audit(AuditEvent(code, action, outcome, actor=_share(link), detail=f"from {client}"))

    def _grant(self, link: PatientLink) -> LinkGrant:
        return LinkGrant(link_id=link.link_id, kind=LinkKind(link.kind), studies=link.studies,
                         expires_at=link.expires_at, may_forward=link.may_forward(self.policy, self.clock()),
                         person=link.person, created_by=link.created_by)

    async def _change(self, link_id: str,
                      step: Callable[[PatientLink], tuple[PatientLink, tuple[LinkEvent, ...]]]) -> PatientLink:
        """Apply `step` (which may raise: nothing written) by compare-and-set, re-reading on a lost race."""
        for _ in range(MAX_RACES):
            link = await self._link(link_id)
            new, events = step(link)
            if new == link:
                return link
            if await self._db(lambda: self.store.update_link(new, link.version, events)):
                return new
        raise UnavailableError("this link is busy: try again")

    async def _by_token(self, token: str) -> PatientLink:
        digest = pl.token_hash(token)
        link = await self._db(lambda: self.store.link_by_token(digest))
        if link is None or not pl.token_matches(link, token):
            raise LinkGone()
        return link

    async def _link(self, link_id: str) -> PatientLink:
        pl.check_link_id(link_id)
        link = await self._db(lambda: self.store.link(link_id))
        if link is None:
            raise LinkGone()
        return link

    async def _events(self, *events: LinkEvent) -> None:
        await self._db(lambda: self.store.add_events(events))

    async def _db(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)


def _failure(exc: BaseException) -> str:
    """What a log may say of a failed email: its class and SMTP code, never the relay's text (it may name the
    recipient)."""
    code = re.search(r"\b([245][0-9][0-9])\b", str(exc)) if isinstance(exc, smtp.EmailError) else None
    return type(exc).__name__ + (f" {code[1]}" if code else "")


def _set_text(msg: EmailMessage, text: str) -> None:
    """Plain text; 7bit when it is ASCII, so the link is one unbroken line in the raw message too."""
    msg.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")


def _share(link: PatientLink) -> str:
    return f"share:{link.link_id}"


def _channel_word(link: PatientLink) -> str:
    return "text message" if link.code_channel == pl.SMS else "email"


def view(link: PatientLink, now: float) -> dict[str, Any]:
    """What staff see of a link (never its token hash, code hash or salt)."""
    return {"id": link.link_id, "kind": link.kind, "state": link.state(now).value, "person": link.person,
            "email": link.email, "code_channel": link.code_channel, "code_to": link.code_to,
            "studies": list(link.studies), "created_by": link.created_by, "parent_id": link.parent_id,
            "created_at": link.created_at, "expires_at": link.expires_at, "revoked_at": link.revoked_at or None,
            "revoke_reason": link.revoke_reason, "forwards": link.forwards, "wrong_attempts": link.wrong_attempts,
            "codes_sent": link.codes_sent, "locked_at": link.locked_at or None}

