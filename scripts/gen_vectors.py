#!/usr/bin/env python3
"""Build the dicom-mesh wire test vectors: docs/protocol/vectors.json.

Everything is fixed: key seeds are sha2-256 of a name, times are constants,
nothing reads a clock or a random source, and Ed25519 signatures are
deterministic. Running this twice gives byte-identical output.

    python scripts/gen_vectors.py            # (re)write docs/protocol/vectors.json
    python scripts/gen_vectors.py --check    # exit 1 if the file on disk differs

Bytes inside decoded values are shown as CBOR diagnostic notation, h'<hex>'.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TypeAlias, Union

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import cbor  # noqa: E402
from protocol import directory_messages as dm  # noqa: E402
from protocol.address_record import AddressRecord  # noqa: E402
from protocol.cbor import CborValue  # noqa: E402
from protocol.certificate import Certificate, Role  # noqa: E402
from protocol.cid import CID  # noqa: E402
from protocol.document import Document, Signed  # noqa: E402
from protocol.errors import UnknownIssuerError  # noqa: E402
from protocol.framing import encode_frame  # noqa: E402
from protocol.keys import SigningKey  # noqa: E402
from protocol.manifest import InstanceEntry, Manifest, Priority, Purpose, StudySummary  # noqa: E402
from protocol.recall import Recall, RecallAction  # noqa: E402
from protocol.receipt import Receipt  # noqa: E402
from protocol.roster import Roster  # noqa: E402
from protocol.study_request import RequestResponse, RequestState, StudyRequest  # noqa: E402

VECTORS_PATH = ROOT / "docs" / "protocol" / "vectors.json"
FORMAT = "dicom-mesh test vectors 1"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z: the time every vector is valid at
DAY = 86_400

Json: TypeAlias = Union[None, bool, int, str, list["Json"], dict[str, "Json"]]

KEY_NAMES = ["authority", "authority-next", "node-rgt", "node-rxx"]
DOCUMENT_CLASSES: dict[str, type[Document]] = {
    cls.LABEL: cls for cls in (Certificate, Roster, AddressRecord, Manifest, Receipt, Recall, StudyRequest,
                               RequestResponse)
}


def seed_for(name: str) -> bytes:
    return hashlib.sha256(f"dicom-mesh test vector key: {name}".encode()).digest()


def readable(value: CborValue) -> Json:
    """A decoded CBOR value as JSON: bytes become h'<hex>', map keys text, in wire order."""
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, list):
        return [readable(v) for v in value]
    if isinstance(value, dict):  # in the canonical order the bytes have
        ordered = sorted(value.items(), key=lambda kv: cbor.encode(kv[0]))
        return {str(k): readable(v) for k, v in ordered}
    return value


class _Builder:
    def __init__(self) -> None:
        self.keys = {name: SigningKey(seed_for(name)) for name in KEY_NAMES}
        self.documents: list[dict[str, Json]] = []
        self.signed: dict[str, Signed[Document]] = {}

    def add(self, name: str, doc: Document, signer: str, verify: dict[str, Json]) -> Signed[Document]:
        signed: Signed[Document] = doc.sign(self.keys[signer])
        data = signed.encode()
        entry: dict[str, Json] = {
            "name": name,
            "type": doc.LABEL,
            "signer": signer,
            "signer_peer_id": self.keys[signer].peer_id,
            "cid": str(signed.cid),
        }
        if isinstance(doc, Manifest):
            entry["manifest_id"] = str(signed.cid)
        entry.update(
            {
                "signature": signed.envelope.signature.hex(),
                "signing_input_hex": (doc.LABEL.encode("ascii") + cbor.encode(doc.to_body())).hex(),
                "body": readable(doc.to_body()),
                "verify": {"now": NOW, **verify},
                "size": len(data),
                "hex": data.hex(),
            }
        )
        self.documents.append(entry)
        self.signed[name] = signed
        return signed


def _instance(series: int, number: int, blocks: list[CID]) -> InstanceEntry:
    study = "1.2.826.0.1.3680043.8.498.10"
    return InstanceEntry(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"{study}.{series}.{number}",
        series_uid=f"{study}.{series}",
        transfer_syntax="1.2.840.10008.1.2.1",
        size=1000 * number + series,
        digest=hashlib.sha256(f"instance {series}.{number}".encode()).digest(),
        blocks=tuple(blocks),
    )


def build() -> dict[str, Json]:
    b = _Builder()
    k = b.keys

    keys: list[Json] = [
        {
            "name": name,
            "seed": key.seed.hex(),
            "public_key": key.public_key.raw.hex(),
            "peer_id": key.peer_id,
        }
        for name, key in k.items()
    ]

    cid_inputs = [b"", b"hello world", bytes(range(256))]
    cids: list[Json] = [
        {"data_hex": data.hex(), "cid": str(CID.of(data)), "binary_hex": CID.of(data).to_bytes().hex()}
        for data in cid_inputs
    ]

    cert_rgt = Certificate(
        serial="000102030405060708090a0b0c0d0e0f",
        org_code="RGT",
        org_name="Guy's and St Thomas' NHS Foundation Trust",
        roles=(Role.ACUTE_TRUST.value, Role.STROKE_NETWORK.value),
        node_key=k["node-rgt"].public_key,
        not_before=NOW - 30 * DAY,
        not_after=NOW + 365 * DAY,
        issuer=k["authority"].peer_id,
    )
    cert_rxx = Certificate(
        serial="101112131415161718191a1b1c1d1e1f",
        org_code="RXX",
        org_name="Royal Example Hôpital",
        roles=(Role.ACUTE_TRUST.value,),
        node_key=k["node-rxx"].public_key,
        not_before=NOW - 30 * DAY,
        not_after=NOW + 365 * DAY,
        issuer=k["authority"].peer_id,
    )
    roster = Roster(
        version=7,
        issued_at=NOW - DAY,
        expires_at=NOW + 30 * DAY,
        authorities=(k["authority-next"].public_key, k["authority"].public_key),
        revoked=frozenset({"ffeeddccbbaa99887766554433221100"}),
    )
    record = AddressRecord(
        peer_id=k["node-rgt"].peer_id,
        addrs=("/ip4/192.0.2.10/tcp/4001", "/ip6/2001:db8::10/tcp/4001", "/dns4/pacs.example.nhs.uk/tcp/4001"),
        seq=3,
        expires_at=NOW + DAY,
    )
    blocks = [CID.of(f"block {i}".encode()) for i in range(3)]
    instances = (_instance(1, 1, blocks[:2]), _instance(2, 1, blocks[2:]))
    manifest = Manifest(
        study_uid="1.2.826.0.1.3680043.8.498.10",
        sender_org="RGT",
        sender_peer=k["node-rgt"].peer_id,
        recipients=("RXX", "TELE-1"),
        priority=Priority.STAT,
        purpose=Purpose.CARE,
        created_at=NOW - 3600,
        expires_at=NOW + 14 * DAY,
        revision=1,
        summary=StudySummary(
            patient_name="DOE^JANE",
            patient_id="9434765919",
            birth_date="19700101",
            sex="F",
            modality="CT",
            study_date="20251231",
            description="CT HEAD – NON-CONTRAST",
            series_count=2,
            instance_count=2,
        ),
        instances=instances,
    )

    b.add("roster", roster, "authority", {"trusted": ["authority"]})
    b.add("certificate-rgt", cert_rgt, "authority", {"roster": "roster"})
    b.add("certificate-rxx", cert_rxx, "authority", {"roster": "roster"})
    b.add("address-record-rgt", record, "node-rgt", {})
    manifest_id = b.add("manifest", manifest, "node-rgt", {"roster": "roster", "certificate": "certificate-rgt"}).cid
    # revision 2 of the same share, with the optional fields (left out of the encoding when empty, as above)
    b.add("manifest-attention-note",
          replace(manifest, revision=2, attention="dr.a.jones@rxx.example.nhs.uk",
                  note="Compare with the CT of 24 December.\nPlease report to the on-call team."),
          "node-rgt", {"roster": "roster", "certificate": "certificate-rgt"})
    b.add(
        "receipt",
        Receipt(
            manifest_id=manifest_id,
            recipient_org="RXX",
            recipient_peer=k["node-rxx"].peer_id,
            instances_verified=2,
            at=NOW - 60,
        ),
        "node-rxx",
        {"roster": "roster", "certificate": "certificate-rxx"},
    )
    b.add(
        "recall",
        Recall(
            manifest_id=manifest_id,
            study_uid=manifest.study_uid,
            sender_org="RGT",
            action=RecallAction.SUPERSEDE,
            superseded_by=CID.of(b"revision 2 of the manifest"),
            reason="laterality corrected",
            at=NOW - 30,
        ),
        "node-rgt",
        {"roster": "roster", "certificate": "certificate-rgt"},
    )
    # RXX asks RGT for the patient's imaging; RGT approves with the manifest above
    request_id = hashlib.sha256(b"dicom-mesh test vector request").digest()[:16]
    b.add(
        "study-request",
        StudyRequest(
            request_id=request_id,
            requester_org="RXX",
            requester_peer=k["node-rxx"].peer_id,
            holder_org="RGT",
            nhs_number="9434765919",
            patient_id="",
            date_from="20250101",
            date_to="20251231",
            modality="CT",
            reason="stroke MDT: prior CT head",
            priority=Priority.URGENT,
            purpose=Purpose.CARE,
            requested_by="user:alice",
            created_at=NOW - 600,
            expires_at=NOW - 600 + 7 * DAY,
        ),
        "node-rxx",
        {"roster": "roster", "certificate": "certificate-rxx"},
    )
    b.add(
        "request-response",
        RequestResponse(
            request_id=request_id,
            requester_org="RXX",
            holder_org="RGT",
            holder_peer=k["node-rgt"].peer_id,
            state=RequestState.APPROVED,
            manifests=(manifest_id,),
            reason="",
            decided_by="user:bob",
            at=NOW - 20,
        ),
        "node-rgt",
        {"roster": "roster", "certificate": "certificate-rgt"},
    )

    cert_bytes = b.signed["certificate-rgt"].encode()
    record_bytes = b.signed["address-record-rgt"].encode()
    roster_bytes = b.signed["roster"].encode()
    requests: list[tuple[str, dm.Request]] = [
        ("lookup-org", dm.LookupOrg("RGT")),
        ("list-orgs", dm.ListOrgs("RGT")),
        ("lookup-peer", dm.LookupPeer(k["node-rgt"].peer_id)),
        ("roster", dm.GetRoster()),
        ("identity", dm.GetIdentity()),
        ("watch-roster", dm.WatchRoster(1)),
        ("register", dm.Register(cert_bytes, record_bytes)),
        ("publish-roster", dm.PublishRoster(roster_bytes)),
    ]
    responses: list[tuple[str, dm.Response]] = [
        (
            "entries",
            dm.Entries(
                (
                    dm.Entry(cert_bytes, record_bytes),
                    dm.Entry(b.signed["certificate-rxx"].encode(), None),
                )
            ),
        ),
        ("roster", dm.RosterReply(roster_bytes)),
        ("roster-none", dm.RosterReply(None)),
        ("roster-unchanged", dm.RosterUnchanged(1)),
        ("identity", dm.IdentityReply(cert_bytes)),
        ("accepted", dm.Accepted()),
        ("refused", dm.Refused.from_error(UnknownIssuerError("certificate not signed by the issuer it names"))),
    ]

    def message(name: str, payload: bytes, max_frame: int) -> Json:
        return {
            "name": name,
            "message": readable(cbor.decode(payload)),
            "hex": payload.hex(),
            "frame_hex": encode_frame(payload, max_frame).hex(),
        }

    return {
        "format": FORMAT,
        "generated_by": "scripts/gen_vectors.py",
        "notes": (
            "Bytes inside decoded values are CBOR diagnostic notation h'<hex>'. "
            "Every document is valid at verify.now; verify.roster / verify.certificate name "
            "the vectors to verify it against, verify.trusted the keys that may sign the roster."
        ),
        "keys": keys,
        "cids": cids,
        "documents": b.documents,
        "directory": {
            "protocol": dm.DIRECTORY_PROTOCOL,
            "requests": [message(n, dm.encode_request(r), dm.MAX_REQUEST_FRAME) for n, r in requests],
            "responses": [message(n, dm.encode_response(r), dm.MAX_RESPONSE_FRAME) for n, r in responses],
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    parser.add_argument("--output", type=Path, default=VECTORS_PATH, help="where the vectors live")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            current = args.output.read_text(encoding="utf-8")
        except FileNotFoundError:
            sys.stderr.write(f"{args.output}: missing; run scripts/gen_vectors.py\n")
            return 1
        if current != text:
            sys.stderr.write(f"{args.output}: out of date; run scripts/gen_vectors.py\n")
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
