"""Sign-in with a user name, a password and a TOTP code (the portal's built-in default).

Passwords are hashed with Argon2id (argon2-cffi's PasswordHasher, its
defaults: RFC 9106's low-memory profile); only the hash is stored. The second
factor is RFC 6238 TOTP (pyotp: 6 digits, 30 s steps), accepted one step
either side of now, and each time step at most once per user: a code seen
once (by a shoulder-surfer, a proxy log) is refused afterwards. An unknown
user name costs the same Argon2 verification as a known one.

Enrolment (`meshnode users password NAME`, or the users page's reset) sets a
password and a new TOTP secret and returns the secret and its otpauth://
provisioning URI once, for the user's authenticator app.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from meshnode.storage.users import Credentials, User, UserStore
from protocol.errors import LocalProtocolError, NotFoundError

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
TOTP_DIGITS = 6
TOTP_STEP_S = 30
#: TOTP steps either side of now that are accepted (clock drift between the phone and the node)
TOTP_WINDOW = 1
ISSUER = "dicom-mesh"

_HASHER = PasswordHasher()
#: verified against when the user has no password, so an unknown name costs the same time as a known one
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class SignInRefused(LocalProtocolError):
    """A failed sign-in; `reason` is for the audit log only (the client is told nothing more specific)."""

    code = 970
    name = "sign-in-refused"

    def __init__(self, reason: str) -> None:
        super().__init__("wrong user name, password or code")
        self.reason = reason


@dataclass(frozen=True)
class Enrolment:
    user: str
    totp_secret: str
    totp_uri: str
    password: str = ""  # set only when generated here (shown once)


def issuer(org: str) -> str:
    """The label an authenticator app shows for this node's TOTP entries."""
    return f"{ISSUER} {org}" if org else ISSUER


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise LocalProtocolError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def enrol(store: UserStore, name: str, password: str, now_ms: int, issuer: str = ISSUER) -> Enrolment:
    """Set the user's password (or a generated one when `password` is '') and a new TOTP secret."""
    user = store.user(name)
    if user is None:
        raise NotFoundError(f"no user {name!r}")
    if user.source != "local":
        raise LocalProtocolError(f"user {name!r} signs in by single sign-on: no local password")
    generated = "" if password else secrets.token_urlsafe(15)
    secret = pyotp.random_base32()
    store.set_credentials(name, _HASHER.hash(check_password(password or generated)), secret, now_ms)
    uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S).provisioning_uri(name=name,
                                                                                         issuer_name=issuer)
    return Enrolment(name, secret, uri, generated)


def totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code `code` is (within TOTP_WINDOW of now), or None."""
    if len(code) != TOTP_DIGITS or not code.isdigit() or not code.isascii():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    now_step = int(now) // TOTP_STEP_S
    found = None
    for step in range(now_step - TOTP_WINDOW, now_step + TOTP_WINDOW + 1):
        if secrets.compare_digest(totp.at(step * TOTP_STEP_S).encode(), code.encode()):
            found = step
    return found


def password_ok(credentials: Credentials | None, password: str) -> bool:
    """Argon2 verification (CPU- and memory-hard: run it in a thread); an account without a password costs
    the same as one with."""
    stored = credentials.password_hash if credentials is not None else ""
    try:
        return _HASHER.verify(stored or _DUMMY_HASH, password[:MAX_PASSWORD]) and bool(stored)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def decide(user: User | None, credentials: Credentials | None, password_matched: bool, code: str,
           now: float) -> int:
    """The TOTP time step to use up if the sign-in may go on; SignInRefused (with the reason) otherwise."""
    if user is None or credentials is None:
        raise SignInRefused("unknown user")
    if not credentials.password_hash:
        raise SignInRefused("no password set")
    if not password_matched:
        raise SignInRefused("wrong password")
    if user.disabled:
        raise SignInRefused("user disabled")
    if not credentials.totp_secret:
        raise SignInRefused("no TOTP enrolled")
    step = totp_step(credentials.totp_secret, code, now)
    if step is None:
        raise SignInRefused("wrong TOTP code")
    return step


def use_step(store: UserStore, user: User | None, step: int) -> User:
    """Use up the step (atomically in the store): a second sign-in with the same code is refused."""
    if user is None:
        raise SignInRefused("unknown user")
    if not store.use_totp_step(user.name, step):
        raise SignInRefused("TOTP code used already (replay)")
    return user


def verify(store: UserStore, name: str, password: str, code: str, now: float) -> User:
    """The user, if the password and TOTP code are right (the code's step is then used up); SignInRefused
    otherwise. Blocking (Argon2, the store); the portal runs the pieces on their own threads."""
    user = store.user(name) if len(name) <= 64 else None
    credentials = store.credentials(name) if user is not None else None
    step = decide(user, credentials, password_ok(credentials, password), code, now)
    return use_step(store, user, step)
