"""Valid protocol documents built from fixed keys and fixed times.

Every factory returns a valid object by default; keyword arguments override
one thing at a time so a test can say exactly what it breaks.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.certificate import Certificate, Role
from protocol.cid import CID
from protocol.document import Document, Signed
from protocol.keys import PublicKey, SigningKey
from protocol.manifest import InstanceEntry, Manifest, Priority, Purpose, StudySummary
from protocol.recall import Recall, RecallAction
from protocol.receipt import Receipt
from protocol.roster import MemoryRosterVersionStore, Roster, RosterGuard
from protocol.address_record import AddressRecord
from protocol.signing import SignedEnvelope
from protocol.study_request import RequestResponse, RequestState, StudyRequest

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z; protocol/ never reads a clock
HOUR = 3600
DAY = 24 * HOUR
SKEW = 300


def key(n: int) -> SigningKey:
    """A fixed key: seed is the byte n repeated 32 times."""
    return SigningKey(bytes([n]) * 32)


AUTHORITY = key(1)
AUTHORITY_NEW = key(2)  # the key the authority rotates to
ROGUE = key(3)  # an authority-shaped key nobody trusts
NODE_A = key(10)  # org RGT (sender)
NODE_A2 = key(11)  # second node of org RGT
NODE_B = key(20)  # org RXX (recipient)
NODE_C = key(30)  # org TELE (a third party)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def serial(n: int) -> str:
    return f"{n:032x}"


def make_certificate(
    node: SigningKey = NODE_A,
    *,
    org: str = "RGT",
    org_name: str = "Guy's and St Thomas'",
    serial_no: int = 1,
    roles: Iterable[str] = (Role.ACUTE_TRUST.value,),
    not_before: int = NOW - 30 * DAY,
    not_after: int = NOW + 365 * DAY,
    issuer: SigningKey = AUTHORITY,
) -> Certificate:
    return Certificate(
        serial=serial(serial_no),
        org_code=org,
        org_name=org_name,
        roles=tuple(sorted(roles)),
        node_key=node.public_key,
        not_before=not_before,
        not_after=not_after,
        issuer=issuer.peer_id,
    )


def sign_certificate(node: SigningKey = NODE_A, *, issuer: SigningKey = AUTHORITY, **kw: object) -> Signed[Certificate]:
    return make_certificate(node, issuer=issuer, **kw).sign(issuer)  # type: ignore[arg-type]


def make_roster(
    version: int = 1,
    *,
    authorities: Iterable[PublicKey] = (AUTHORITY.public_key,),
    revoked: Iterable[str] = (),
    issued_at: int = NOW - DAY,
    expires_at: int = NOW + 30 * DAY,
) -> Roster:
    return Roster(
        version=version,
        issued_at=issued_at,
        expires_at=expires_at,
        authorities=tuple(authorities),
        revoked=frozenset(revoked),
    )


def sign_roster(version: int = 1, *, signer: SigningKey = AUTHORITY, **kw: object) -> Signed[Roster]:
    return make_roster(version, **kw).sign(signer)  # type: ignore[arg-type]


def new_guard(*anchors: SigningKey) -> RosterGuard:
    keys = anchors or (AUTHORITY,)
    return RosterGuard([k.public_key for k in keys], MemoryRosterVersionStore())


def guard_with_roster(**kw: object) -> RosterGuard:
    guard = new_guard()
    guard.accept(sign_roster(**kw).encode(), NOW)  # type: ignore[arg-type]
    return guard


def make_address_record(
    node: SigningKey = NODE_A,
    *,
    addrs: Iterable[str] = ("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"),
    seq: int = 1,
    expires_at: int = NOW + DAY,
) -> AddressRecord:
    return AddressRecord(peer_id=node.peer_id, addrs=tuple(addrs), seq=seq, expires_at=expires_at)


def block_cid(n: int) -> CID:
    return CID.of(f"block {n}".encode())


def make_instance(n: int, *, series: int = 1, blocks: int = 2) -> InstanceEntry:
    return InstanceEntry(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"{STUDY_UID}.{series}.{n}",
        series_uid=f"{STUDY_UID}.{series}",
        transfer_syntax="1.2.840.10008.1.2.1",
        size=524_288 + n,
        digest=CID.of(f"instance {n}".encode()).digest,
        blocks=tuple(block_cid(n * 1000 + i) for i in range(blocks)),
    )


def make_summary(instances: tuple[InstanceEntry, ...], **kw: object) -> StudySummary:
    values: dict[str, object] = dict(
        patient_name="DOE^JANE",
        patient_id="9434765919",
        birth_date="19700101",
        sex="F",
        modality="CT",
        study_date="20251231",
        description="CT HEAD WITHOUT CONTRAST",
        series_count=len({i.series_uid for i in instances}),
        instance_count=len(instances),
    )
    values.update(kw)
    return StudySummary(**values)  # type: ignore[arg-type]


def make_manifest(
    node: SigningKey = NODE_A,
    *,
    sender_org: str = "RGT",
    recipients: Iterable[str] = ("RXX",),
    instances: tuple[InstanceEntry, ...] | None = None,
    created_at: int = NOW - HOUR,
    expires_at: int = NOW + 7 * DAY,
    revision: int = 1,
    priority: Priority = Priority.URGENT,
    purpose: Purpose = Purpose.CARE,
    study_uid: str = STUDY_UID,
    attention: str = "",
    note: str = "",
) -> Manifest:
    if instances is None:
        instances = (make_instance(1), make_instance(2), make_instance(3, series=2, blocks=1))
    return Manifest(
        study_uid=study_uid,
        sender_org=sender_org,
        sender_peer=node.peer_id,
        recipients=tuple(sorted(recipients)),
        priority=priority,
        purpose=purpose,
        created_at=created_at,
        expires_at=expires_at,
        revision=revision,
        summary=make_summary(instances),
        instances=instances,
        attention=attention,
        note=note,
    )


def make_receipt(
    node: SigningKey = NODE_B,
    *,
    manifest_id: CID | None = None,
    org: str = "RXX",
    instances_verified: int = 3,
    at: int = NOW,
) -> Receipt:
    return Receipt(
        manifest_id=manifest_id or make_manifest().sign(NODE_A).cid,
        recipient_org=org,
        recipient_peer=node.peer_id,
        instances_verified=instances_verified,
        at=at,
    )


def make_recall(
    *,
    manifest_id: CID | None = None,
    sender_org: str = "RGT",
    action: RecallAction = RecallAction.SUPERSEDE,
    superseded_by: CID | None = None,
    reason: str = "wrong patient demographics",
    at: int = NOW,
) -> Recall:
    if action is RecallAction.SUPERSEDE and superseded_by is None:
        superseded_by = make_manifest(revision=2).sign(NODE_A).cid
    return Recall(
        manifest_id=manifest_id or make_manifest().sign(NODE_A).cid,
        study_uid=STUDY_UID,
        sender_org=sender_org,
        action=action,
        superseded_by=superseded_by,
        reason=reason,
        at=at,
    )


def resign(label: str, body: dict, signer: SigningKey) -> bytes:  # type: ignore[type-arg]
    """Encode an envelope for an arbitrary (possibly invalid) body, validly signed."""
    return SignedEnvelope.sign(label, body, signer).encode()


# One valid example of every document type with the key that signs it.
def examples() -> list[tuple[Document, SigningKey]]:
    return [
        (make_certificate(), AUTHORITY),
        (make_roster(revoked=[serial(99)]), AUTHORITY),
        (make_address_record(), NODE_A),
        (make_manifest(), NODE_A),
        (make_receipt(), NODE_B),
        (make_recall(), NODE_A),
        (make_study_request(), NODE_A),
        (make_request_response(), NODE_B),
    ]


def make_study_request(**kw: object) -> StudyRequest:
    values: dict[str, object] = dict(
        request_id=bytes(range(16)), requester_org="RGT", requester_peer=NODE_A.peer_id, holder_org="RXX",
        nhs_number="9434765919", patient_id="", date_from="20250101", date_to="20251231", modality="CT",
        reason="stroke follow-up", priority=Priority.URGENT, purpose=Purpose.CARE, requested_by="user:alice",
        created_at=NOW, expires_at=NOW + DAY)
    values.update(kw)
    return StudyRequest(**values)  # type: ignore[arg-type]


def make_request_response(**kw: object) -> RequestResponse:
    values: dict[str, object] = dict(
        request_id=bytes(range(16)), requester_org="RGT", holder_org="RXX", holder_peer=NODE_B.peer_id,
        state=RequestState.APPROVED, manifests=(CID.of(b"m1"),), reason="", decided_by="user:bob", at=NOW + 60)
    values.update(kw)
    return RequestResponse(**values)  # type: ignore[arg-type]
