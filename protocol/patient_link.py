"""A patient link (issue 14) and its state machine: pure, no I/O, no clock (`now` is a parameter, random bytes
come from a `draw(n) -> bytes` the caller passes).

A link is made by a staff user (or by forwarding a share) for one person. Its token (32 random bytes, 43
URL-safe characters) goes in the link; only sha256(token) is stored and compared in constant time. The
person asks for a one-time code on a second channel (a mobile number, E.164 -> "sms", or a second email
address), enters it and gets a grant.

Decisions (docs/operators.md "Patient access"):
- Unknown, expired and revoked links give one answer, LinkGone; a locked link gives LinkLocked (the person
  must ask the staff who sent it) to every code request and every code, right or wrong.
- A code is 6 digits drawn without modulo bias, kept only as HMAC-SHA256(per-link salt, code), and works
  `code_minutes`. It is used up by the right answer (a replay of it is refused).
- A check while no code is live (none sent, expired or used) is refused (CodeRefused, "ask for a new code")
  and does NOT count as a wrong attempt: nothing is compared, so a guess learns nothing; the attacker's
  budget is `code_attempts` per code actually sent, and codes sent are limited (1 + code_resends).
- `code_attempts` wrong codes in a row lock the link; the right code resets the count; a staff unlock clears
  count and lock and drops any code (a fresh code must be sent, the resend budget starts again).
- Forwarding: only a share, only while usable, only if the policy allows it, at most `max_forwards` times,
  and a forwarded share cannot be forwarded again (depth 1: the clinician asks the hospital). The child
  never outlives its parent. Revoking a share revokes the shares forwarded from it (the service does it, in one
  store transaction), and a forward is refused while its parent is revoked or expired (require_parent_usable);
  a locked parent does not stop its forwards. A forward whose email failed does not count (forward_withdrawn).
- A code that was never delivered is dropped and does not use the resend budget (code_not_delivered).
- Every pattern is matched with fullmatch (a trailing newline is not a link ID, a UID or a code).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from protocol.errors import LocalProtocolError, NotFoundError, UnauthorisedError

Draw = Callable[[int], bytes]

SHARE = "share"
UPLOAD = "upload"
KINDS = (SHARE, UPLOAD)
SMS = "sms"
EMAIL = "email"
TOKEN_BYTES = 32
TOKEN_CHARS = 43
CODE_DIGITS = 6
DAY = 86400.0
MAX_NAME = 128
MAX_EMAIL = 254
MAX_REASON = 500
MAX_STUDIES = 50
# every pattern is used with fullmatch (`$` alone would accept a trailing newline)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_LINK_ID = re.compile(r"[0-9a-f]{32}")
_CODE = re.compile(r"[0-9]{6}")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
#: an address safe to write into a header: ASCII dot-atom local part, a domain name with a dot (no spaces,
#: quotes, comments, line breaks)
_EMAIL = re.compile(
    r"^(?=.{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class LinkGone(NotFoundError):
    """Unknown, expired or revoked: one answer for all three, so a guess learns nothing."""

    code = 980
    name = "link-gone"

    def __init__(self, message: str = "this link does not work (it may have expired or been withdrawn)") -> None:
        super().__init__(message)


class CodeRefused(UnauthorisedError):
    """The code was wrong (or none is live). `attempts_left`: wrong codes before the link locks."""

    code = 981
    name = "code-refused"

    def __init__(self, message: str, attempts_left: int) -> None:
        super().__init__(message)
        self.attempts_left = attempts_left


class LinkLocked(UnauthorisedError):
    """Too many wrong codes: the link is locked until the staff who sent it unlock it."""

    code = 982
    name = "link-locked"

    def __init__(self, message: str = "this link is locked after too many wrong codes: ask the sender to "
                                      "unlock it") -> None:
        super().__init__(message)


class PatientAccessError(LocalProtocolError):
    """Bad input for a link (an address, a name, a number of days, a malformed code), or a policy refusal."""

    code = 983
    name = "patient-access-error"


class CodeLimitReached(UnauthorisedError):
    """No more codes may be sent on this link (1 + code_resends)."""

    code = 984
    name = "code-limit-reached"


class LinkState(str, Enum):
    ACTIVE = "active"
    CODE_SENT = "code sent"
    LOCKED = "locked"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True)
class LinkPolicy:
    """The organisation's policy (meshnode.patient.config.PatientAccessConfig has the defaults)."""

    share_days: int = 14
    max_share_days: int = 90
    upload_days: int = 14
    allow_forward: bool = True
    max_forwards: int = 3
    code_attempts: int = 3
    code_minutes: int = 10
    code_resends: int = 5


@dataclass(frozen=True)
class PatientLink:
    link_id: str
    kind: str
    token_hash: str  # sha256(token), hex
    studies: tuple[str, ...]
    person: str
    email: str
    code_channel: str  # SMS or EMAIL
    code_to: str
    created_by: str  # "user:NAME" or "share:<id>"
    parent_id: str  # "" unless forwarded
    created_at: float
    expires_at: float
    code_salt: str  # hex, per link
    revoked_at: float = 0.0
    revoke_reason: str = ""
    forwards: int = 0
    wrong_attempts: int = 0
    locked_at: float = 0.0
    code_hash: str = ""
    code_expires_at: float = 0.0
    codes_sent: int = 0
    #: bumped by every transition: the store's compare-and-set key
    version: int = 0

    def state(self, now: float) -> LinkState:
        if self.revoked_at:
            return LinkState.REVOKED
        if now >= self.expires_at:
            return LinkState.EXPIRED
        if self.locked_at:
            return LinkState.LOCKED
        if self.code_hash and now < self.code_expires_at:
            return LinkState.CODE_SENT
        return LinkState.ACTIVE

    def attempts_left(self, policy: LinkPolicy) -> int:
        return max(0, policy.code_attempts - self.wrong_attempts)

    def resends_left(self, policy: LinkPolicy) -> int:
        return max(0, 1 + policy.code_resends - self.codes_sent)

    def may_forward(self, policy: LinkPolicy, now: float) -> bool:
        return (self.kind == SHARE and policy.allow_forward and not self.parent_id
                and self.forwards < policy.max_forwards and self.state(now) in (LinkState.ACTIVE,
                                                                                  LinkState.CODE_SENT))


# -- tokens and codes -----------------------------------------------------------------------------------------

def new_token(draw: Draw) -> str:
    raw = draw(TOKEN_BYTES)
    if len(raw) != TOKEN_BYTES:
        raise PatientAccessError("the random source gave too few bytes")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_link_id(draw: Draw) -> str:
    raw = draw(16)
    if len(raw) != 16:
        raise PatientAccessError("the random source gave too few bytes")
    return raw.hex()


def token_hash(token: str) -> str:
    """sha256 of a well-formed token, hex; LinkGone for anything else (a malformed token is just unknown)."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise LinkGone()
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_matches(link: PatientLink, token: str) -> bool:
    try:
        digest = token_hash(token)
    except LinkGone:
        return False
    return hmac.compare_digest(digest, link.token_hash)


def check_link_id(value: object) -> str:
    if not isinstance(value, str) or not _LINK_ID.fullmatch(value):
        raise LinkGone()
    return value


def new_code(draw: Draw) -> str:
    """Six digits, uniform: 4 random bytes, rejected when above the largest multiple of 10^6 (no modulo bias)."""
    limit = (1 << 32) - (1 << 32) % 10**CODE_DIGITS
    for _ in range(64):
        raw = draw(4)
        if len(raw) != 4:
            raise PatientAccessError("the random source gave too few bytes")
        value = int.from_bytes(raw, "big")
        if value < limit:
            return f"{value % 10**CODE_DIGITS:0{CODE_DIGITS}d}"
    raise PatientAccessError("the random source is not random")


def code_hash(salt: str, code: str) -> str:
    return hmac.new(bytes.fromhex(salt), code.encode("ascii"), hashlib.sha256).hexdigest()


# -- input checks -----------------------------------------------------------------------------------------------

def check_email(value: object, what: str = "email") -> str:
    if not isinstance(value, str) or len(value.strip()) > MAX_EMAIL or not _EMAIL.fullmatch(value.strip()):
        raise PatientAccessError(f"{what}: not an email address")
    return value.strip()


def check_person(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME or not value.isprintable():
        raise PatientAccessError(f"person: a name of 1 to {MAX_NAME} printable characters")
    return value.strip()


def code_channel(code_to: object, email: str) -> tuple[str, str]:
    """(channel, destination) of the one-time code: an E.164 mobile number or a second email address, not the
    link's own email (the two channels must be separate)."""
    if isinstance(code_to, str):
        text = code_to.strip().replace(" ", "")
        if _E164.fullmatch(text):
            return SMS, text
    if isinstance(code_to, str) and "@" in code_to:
        second = check_email(code_to, "code_to")
        if second.lower() == email.lower():
            raise PatientAccessError("code_to: the code must go to another address than the link")
        return EMAIL, second
    raise PatientAccessError("code_to: a mobile number in international form (+447700900123) or a second "
                             "email address")


def check_reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON or not value.isprintable():
        raise PatientAccessError(f"reason: 1 to {MAX_REASON} printable characters")
    return value.strip()


def check_studies(values: object) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)) or not values or len(values) > MAX_STUDIES:
        raise PatientAccessError(f"studies: a list of 1 to {MAX_STUDIES} Study Instance UIDs")
    out: list[str] = []
    for v in values:
        if not isinstance(v, str) or len(v) > 64 or not _UID.fullmatch(v):
            raise PatientAccessError("studies: not a DICOM UID (digits and dots, at most 64 characters)")
        if v not in out:
            out.append(v)
    return tuple(out)


def _days(days: object, default: int, most: int) -> int:
    if days is None:
        return default
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= most:
        raise PatientAccessError(f"days: a whole number from 1 to {most}")
    return days


# -- transitions ------------------------------------------------------------------------------------------------

def create(*, kind: str, studies: object, person: object, email: object, code_to: object, created_by: str,
           days: object, policy: LinkPolicy, now: float, draw: Draw) -> tuple[PatientLink, str]:
    """A new link and its token (the token is only ever in the email)."""
    if kind not in KINDS:
        raise PatientAccessError(f"kind: {KINDS}")
    mail = check_email(email)
    channel, dest = code_channel(code_to, mail)
    if kind == SHARE:
        uids = check_studies(studies)
        n = _days(days, policy.share_days, policy.max_share_days)
    else:
        if studies not in (None, (), []):
            raise PatientAccessError("an upload link has no studies")
        uids = ()
        n = _days(days, policy.upload_days, policy.upload_days)
    token = new_token(draw)
    link = PatientLink(link_id=new_link_id(draw), kind=kind, token_hash=token_hash(token), studies=uids,
                       person=check_person(person), email=mail, code_channel=channel, code_to=dest,
                       created_by=created_by, parent_id="", created_at=now, expires_at=now + n * DAY,
                       code_salt=draw(16).hex())
    return link, token


def require_usable(link: PatientLink, now: float) -> None:
    """LinkGone if revoked or expired, LinkLocked if locked."""
    state = link.state(now)
    if state in (LinkState.REVOKED, LinkState.EXPIRED):
        raise LinkGone()
    if state is LinkState.LOCKED:
        raise LinkLocked()


def issue_code(link: PatientLink, *, policy: LinkPolicy, now: float, draw: Draw) -> tuple[PatientLink, str]:
    """A new code (any earlier one stops working)."""
    require_usable(link, now)
    if link.resends_left(policy) <= 0:
        raise CodeLimitReached("no more codes can be sent for this link: ask the sender for a new link")
    code = new_code(draw)
    return replace(link, code_hash=code_hash(link.code_salt, code), code_expires_at=now + policy.code_minutes * 60,
                   codes_sent=link.codes_sent + 1, version=link.version + 1), code


def check_code(link: PatientLink, code: object, *, policy: LinkPolicy, now: float) -> tuple[PatientLink, bool]:
    """(the link after the check, granted). A wrong code is counted; the `code_attempts`-th locks the link.
    Raises before any change for a link that is gone or locked, a malformed code or no live code."""
    require_usable(link, now)
    typed = "".join(code.split()) if isinstance(code, str) and len(code) <= 32 else ""  # "123 456" is fine
    if not _CODE.fullmatch(typed):
        raise PatientAccessError("the code is 6 digits")
    if not link.code_hash or now >= link.code_expires_at:
        raise CodeRefused("no code is waiting (it may have expired): ask for a new one",
                          link.attempts_left(policy))
    if hmac.compare_digest(code_hash(link.code_salt, typed), link.code_hash):
        return replace(link, code_hash="", code_expires_at=0.0, wrong_attempts=0, version=link.version + 1), True
    wrong = link.wrong_attempts + 1
    locked = now if wrong >= policy.code_attempts else 0.0
    return replace(link, wrong_attempts=wrong, locked_at=locked, code_hash="" if locked else link.code_hash,
                   version=link.version + 1), False


def code_not_delivered(link: PatientLink, digest: str) -> PatientLink:
    """The code whose HMAC is `digest` never reached the person (the gateway or relay failed): it is dropped and
    does not use the resend budget. A later code (another digest) is left alone."""
    if not digest or link.code_hash != digest:
        return link
    return replace(link, code_hash="", code_expires_at=0.0, codes_sent=max(0, link.codes_sent - 1),
                   version=link.version + 1)


def forward_withdrawn(parent: PatientLink) -> PatientLink:
    """A forward whose email could not be sent (the child is revoked): it does not count against max_forwards."""
    return replace(parent, forwards=max(0, parent.forwards - 1), version=parent.version + 1)


def require_parent_usable(parent: PatientLink | None, now: float) -> None:
    """A forwarded share works only while the share it came from is neither revoked nor expired (nor gone).
    A locked parent does not stop its forwards: the clinician proved their own code (docs/operators.md)."""
    if parent is None or parent.state(now) in (LinkState.REVOKED, LinkState.EXPIRED):
        raise LinkGone()


def mask_email(address: str) -> str:
    """"g***@example.org": enough for the patient to recognise an address, not to read it."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def revoke(link: PatientLink, *, reason: object, now: float) -> PatientLink:
    """Revoked for good (revoking twice keeps the first time and reason)."""
    why = check_reason(reason)
    if link.revoked_at:
        return link
    return replace(link, revoked_at=now, revoke_reason=why, code_hash="", version=link.version + 1)


def unlock(link: PatientLink, *, now: float) -> PatientLink:
    """Staff: clear the wrong attempts and the lock; any code is dropped (a fresh one must be sent)."""
    if link.revoked_at or now >= link.expires_at:
        raise LinkGone()
    return replace(link, wrong_attempts=0, locked_at=0.0, code_hash="", code_expires_at=0.0, codes_sent=0,
                   version=link.version + 1)


def forward(parent: PatientLink, *, email: object, code_to: object, days: object, policy: LinkPolicy, now: float,
            draw: Draw) -> tuple[PatientLink, PatientLink, str]:
    """(the parent with one more forward, the new share, its token)."""
    require_usable(parent, now)
    if parent.kind != SHARE:
        raise PatientAccessError("only a share can be forwarded")
    if not policy.allow_forward:
        raise PatientAccessError("this organisation does not allow shares to be passed on")
    if parent.parent_id:
        raise PatientAccessError("a forwarded share cannot be forwarded again: ask the hospital")
    if parent.forwards >= policy.max_forwards:
        raise PatientAccessError(f"this share has been passed on {parent.forwards} times, the most allowed")
    child, token = create(kind=SHARE, studies=parent.studies, person=parent.person, email=email, code_to=code_to,
                          created_by=f"share:{parent.link_id}", days=days, policy=policy, now=now, draw=draw)
    child = replace(child, parent_id=parent.link_id, expires_at=min(child.expires_at, parent.expires_at))
    return replace(parent, forwards=parent.forwards + 1, version=parent.version + 1), child, token
