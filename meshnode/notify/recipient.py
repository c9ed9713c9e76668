"""Who is emailed when a study arrives: the manifest's `attention` person, or the organisation's address.

The `attention` value is the sender's text (signed, printable, at most 128 characters: protocol.manifest).
It never becomes an address by itself, or the sending organisation could make this node email anyone:

1. a local user (by user name, or by the email address on record) who is enabled and has an email address
   gets it at that address ("user");
2. else an `attention` that is an email address in a domain on [notify] attention_domains gets it
   ("allow-listed": for people of this organisation not registered as portal users);
3. else the organisation's configured address ("organisation").

The user store keeps email addresses once the portal's sign-in change adds them (User.email); until then
`notify_address` finds none and rule 2 or 3 applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from meshnode.storage.users import UserStore
from protocol.errors import ConfigError

#: An address as this node writes it (ASCII, RFC 5321 sizes): dot-atom local part, a domain name with a dot.
_ADDRESS = re.compile(
    r"^(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$")


def is_address(value: str) -> bool:
    """An email address this node will write into a header: ASCII, no spaces, quotes, comments or controls."""
    m = _ADDRESS.fullmatch(value)
    return m is not None and len(value) <= 254 and len(m["local"]) <= 64


def check_address(value: str, key: str) -> str:
    """For configuration: an address, or a ConfigError naming the key."""
    if not is_address(value):
        raise ConfigError(f"{key}: not an email address this node can use (got {value[:80]!r})")
    return value


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[1].lower()


class RecipientKind(str, Enum):
    USER = "user"
    ALLOW_LISTED = "allow-listed"
    ORGANISATION = "organisation"


@dataclass(frozen=True)
class Recipient:
    address: str
    kind: RecipientKind


def _email_of(user: object) -> str:
    """A user's email address if the store keeps one and it is usable; "" otherwise."""
    email = getattr(user, "email", "")
    return email if isinstance(email, str) and is_address(email) else ""


def notify_address(users: UserStore, name: str) -> str | None:
    """The email address of the enabled local user `name` (their user name, or the address on record), or
    None: no such user, disabled, no usable address, or a user store that keeps no addresses."""
    user = users.user(name)
    if user is None and is_address(name):
        find = getattr(users, "user_by_email", None)  # the portal's user store may look it up by index
        if callable(find):
            found = find(name)
            user = found if found is not None and getattr(found, "name", None) is not None else None
        else:
            wanted = name.lower()
            user = next((u for u in users.users() if _email_of(u).lower() == wanted), None)
    if user is None or getattr(user, "disabled", True):
        return None
    return _email_of(user) or None


def resolve_recipient(users: UserStore, attention: str, *, org_address: str,
                      allowed_domains: tuple[str, ...]) -> Recipient:
    """Where the arrival email for a manifest naming `attention` ("" for none) goes."""
    if attention:
        address = notify_address(users, attention)
        if address is not None:
            return Recipient(address, RecipientKind.USER)
        if is_address(attention) and domain_of(attention) in {d.lower() for d in allowed_domains}:
            return Recipient(attention, RecipientKind.ALLOW_LISTED)
    return Recipient(org_address, RecipientKind.ORGANISATION)
