"""Node certificates: this peer key belongs to this organisation, with these roles."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from protocol.cbor import CborKey, CborValue
from protocol.document import Document
from protocol.errors import SchemaError, UnknownIssuerError
from protocol.keys import PUBLIC_KEY_SIZE, PublicKey
from protocol.schema import Fields, check_org_code, text_item

CERTIFICATE_LABEL = "dicom-mesh/certificate/v1"
MAX_ORG_NAME = 128
_SERIAL_RE = re.compile(r"^[0-9a-f]{32}$")


class Role(str, Enum):
    ACUTE_TRUST = "acute-trust"
    INDEPENDENT_SECTOR = "independent-sector"
    TELERADIOLOGY = "teleradiology"
    RESEARCH = "research"
    STROKE_NETWORK = "stroke-network"
    DIRECTORY = "directory"
    #: runs Circuit Relay v2 for certified nodes that cannot accept inbound connections (meshnode.node.reach_config)
    RELAY = "relay"


ROLE_NAMES = frozenset(r.value for r in Role)


def check_serial(value: str, what: str = "serial") -> str:
    if not _SERIAL_RE.match(value):
        raise SchemaError(f"{what}: certificate serial must be 32 lower-case hex digits")
    return value


def _role_item(value: CborValue, what: str) -> str:
    role = text_item(32)(value, what)
    if role not in ROLE_NAMES:
        raise SchemaError(f"{what}: unknown role {role!r}")
    return role


@dataclass(frozen=True)
class Certificate(Document):
    LABEL: ClassVar[str] = CERTIFICATE_LABEL
    MAX_BYTES: ClassVar[int] = 4096

    serial: str
    org_code: str
    org_name: str
    roles: tuple[str, ...]
    node_key: PublicKey
    not_before: int
    not_after: int
    issuer: str  # peer-ID text of the authority key that signs it

    def __post_init__(self) -> None:
        check_serial(self.serial)
        check_org_code(self.org_code, "org_code")
        if not self.roles or list(self.roles) != sorted(set(self.roles)):
            raise SchemaError("roles must be a non-empty sorted set")
        for role in self.roles:
            _role_item(role, "roles")
        if self.not_after <= self.not_before:
            raise SchemaError("not_after must be later than not_before")
        if not self.org_name or len(self.org_name) > MAX_ORG_NAME:
            raise SchemaError(f"org_name must be 1..{MAX_ORG_NAME} characters")

    @property
    def peer_id(self) -> str:
        return self.node_key.peer_id

    def has_role(self, role: Role) -> bool:
        return role.value in self.roles

    def check_signer(self, signer: PublicKey) -> None:
        if signer.peer_id != self.issuer:
            raise UnknownIssuerError("certificate not signed by the issuer it names")

    def to_body(self) -> dict[CborKey, CborValue]:
        return {
            "serial": self.serial,
            "org": self.org_code,
            "org_name": self.org_name,
            "roles": list(self.roles),
            "node_key": self.node_key.raw,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "issuer": self.issuer,
        }

    @classmethod
    def from_body(cls, body: CborValue) -> Certificate:
        f = Fields(body, "certificate")
        cert = cls(
            serial=check_serial(f.text("serial", 32), "certificate.serial"),
            org_code=check_org_code(f.text("org", 16), "certificate.org"),
            org_name=f.text("org_name", MAX_ORG_NAME, min_len=1),
            roles=f.array("roles", _role_item, max_items=len(ROLE_NAMES), min_items=1, sorted_unique=True),
            node_key=PublicKey(f.blob("node_key", size=PUBLIC_KEY_SIZE)),
            not_before=f.time("not_before"),
            not_after=f.time("not_after"),
            issuer=f.text("issuer", 64),
        )
        f.finish()
        return cert
