"""Readable views of signed documents, for `meshadmin inspect` and CLI output."""

from __future__ import annotations

import datetime as dt

from protocol.address_record import AddressRecord
from protocol.certificate import Certificate
from protocol.document import D, Document, Signed, open_document
from protocol.errors import SchemaError
from protocol.manifest import Manifest
from protocol.recall import Recall
from protocol.receipt import Receipt
from protocol.roster import Roster
from protocol.signing import parse_envelope

DOCUMENT_TYPES: dict[str, type[Document]] = {
    cls.LABEL: cls for cls in (Certificate, Roster, AddressRecord, Manifest, Receipt, Recall)
}


def iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_any(data: bytes) -> Signed[Document]:
    """Decode any dicom-mesh signed document and verify its signature."""
    label = parse_envelope(data, max_bytes=max(c.MAX_BYTES for c in DOCUMENT_TYPES.values())).type
    cls = DOCUMENT_TYPES.get(label)
    if cls is None:
        raise SchemaError(f"unknown document type {label!r}")
    return open_document(data, cls)


def describe(signed: Signed[D]) -> dict[str, object]:
    doc = signed.document
    out: dict[str, object] = {
        "type": doc.LABEL,
        "signer": signed.signer.peer_id,
        "cid": str(signed.cid),
        "signature": "valid",
    }
    if isinstance(doc, Certificate):
        out.update(
            serial=doc.serial, org=doc.org_code, org_name=doc.org_name, roles=list(doc.roles),
            peer_id=doc.peer_id, not_before=iso(doc.not_before), not_after=iso(doc.not_after),
            issuer=doc.issuer,
        )
    elif isinstance(doc, Roster):
        out.update(
            version=doc.version, issued_at=iso(doc.issued_at), expires_at=iso(doc.expires_at),
            authorities=[k.peer_id for k in doc.authorities], revoked=sorted(doc.revoked),
        )
    elif isinstance(doc, AddressRecord):
        out.update(peer_id=doc.peer_id, addrs=list(doc.addrs), seq=doc.seq, expires_at=iso(doc.expires_at))
    elif isinstance(doc, Manifest):
        out.update(
            manifest_id=str(signed.cid), study_uid=doc.study_uid, sender_org=doc.sender_org,
            sender_peer=doc.sender_peer, recipients=list(doc.recipients), priority=doc.priority.value,
            purpose=doc.purpose.value, revision=doc.revision, created_at=iso(doc.created_at),
            expires_at=iso(doc.expires_at), modality=doc.summary.modality,
            series=doc.summary.series_count, instances=len(doc.instances),
            blocks=sum(len(i.blocks) for i in doc.instances), bytes=doc.total_bytes,
        )
    elif isinstance(doc, Receipt):
        out.update(
            manifest_id=str(doc.manifest_id), recipient_org=doc.recipient_org,
            recipient_peer=doc.recipient_peer, instances_verified=doc.instances_verified, at=iso(doc.at),
        )
    elif isinstance(doc, Recall):
        out.update(
            manifest_id=str(doc.manifest_id), study_uid=doc.study_uid, sender_org=doc.sender_org,
            action=doc.action.value,
            superseded_by=str(doc.superseded_by) if doc.superseded_by else None,
            reason=doc.reason, at=iso(doc.at),
        )
    return out


def render_text(view: dict[str, object]) -> str:
    width = max(len(k) for k in view)
    lines = []
    for key, value in view.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) if value else "(none)"
        lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)
