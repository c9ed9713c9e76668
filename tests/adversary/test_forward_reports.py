"""Hostile forward reports (protocol.forward_report) at the sender, through its real request handler
(Wire.answer past the gate, tests/meshnode/node/harness.py): only an org that is a recipient of a manifest this
node sent may report on it, signed by a node certified for that org; anything else is refused with a clear
error, audited as a Security Alert (110113), and stores nothing. A replayed or older report changes nothing."""

from __future__ import annotations

import dataclasses

import pytest
from trio.testing import MockClock

from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.node.forward_reports import forward_json
from protocol.cbor import CborKey, CborValue
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import (
    ERRORS_BY_CODE,
    DecodeError,
    DocumentError,
    LimitError,
    NotFoundError,
    SchemaError,
    SignatureError,
    WrongOrganisationError,
)
from protocol.exchange_messages import (
    FORWARD_REPORT_PROTOCOL,
    ForwardReportDelivery,
    Refused,
    decode_ack_reply,
    encode_request,
)
from protocol.forward_report import FORWARD_REPORT_LABEL, DestinationReport, ForwardReport, ForwardState
from protocol.manifest import Manifest
from protocol.signing import SignedEnvelope
from tests.meshnode.node.conftest import mesh, source, study  # noqa: F401  (the in-process nodes' fixtures)
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, alerts
from tests.meshnode.node.test_exchange_handlers import introduced, nodes
from tests.protocol.factories import NOW

ACTION = "forward-report-refused"


def report(by: HarnessNode, manifest_id: CID, seq: int, *, org: str | None = None,
           state: ForwardState = ForwardState.FORWARDED, sent: int = 12) -> Signed[ForwardReport]:
    return ForwardReport(manifest_id, org or by.org, by.peer_id, seq,
                         (DestinationReport("main", state, sent, 12),), int(NOW)).sign(by.key)


async def deliver(frm: HarnessNode, to: HarnessNode, raw: bytes, cert: bytes | None = None) -> Refused | None:
    payload = encode_request(ForwardReportDelivery(raw, cert if cert is not None else frm.ctx.certificate.encode()))
    reply = decode_ack_reply(await to.wire.answer(FORWARD_REPORT_PROTOCOL, frm.peer_id, payload))
    return reply if isinstance(reply, Refused) else None


async def setup(mesh: MemoryMesh, study: str) -> tuple[HarnessNode, HarnessNode, HarnessNode, HarnessNode,
                                                        Signed[Manifest]]:
    a, b, c, d = nodes(mesh)  # A (RGT) sends to B (RJ1) and C (RAJ); D (RYJ) is no recipient
    await introduced(mesh)
    signed = await mesh.share(a, study, ["RAJ", "RJ1"])
    return a, b, c, d, signed


async def test_a_recipients_report_is_kept_and_a_replay_or_older_one_changes_nothing(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _, signed = await setup(mesh, study)
    events: list[StudyEvent] = []

    async def listen(event: StudyEvent) -> None:
        events.append(event)

    a.ctx.events.subscribe(listen)
    first = report(b, signed.cid, 100, state=ForwardState.FAILED, sent=3)
    newer = report(b, signed.cid, 200)
    assert await deliver(b, a, first.encode()) is None
    assert await deliver(b, a, newer.encode()) is None
    assert await deliver(b, a, first.encode()) is None  # the older one again (a retry, or a replay): accepted...
    assert await deliver(b, a, newer.encode()) is None  # ...and the newest replayed
    kept = a.store.forward_reports(signed.cid)
    assert list(kept) == ["RJ1"] and kept["RJ1"] == newer.encode()  # ...and neither changed what is kept
    assert forward_json(kept["RJ1"])["state"] == "forwarded"
    reported = [e.event for e in a.store.audit_entries() if e.event.action == "forward-reported"]
    assert [e.detail for e in reported] == ["PACS forward failed: 3 of 12 instance(s)",
                                            "PACS forward forwarded: 12 of 12 instance(s)"]
    assert alerts(a, ACTION) == []
    # one event per report kept (the pages update live), none for the replays
    assert [(e.kind, e.org, e.detail, e.instances) for e in events] == [
        (StudyEventKind.FORWARDED, "RJ1", "failed", 3), (StudyEventKind.FORWARDED, "RJ1", "forwarded", 12)]


async def test_an_org_that_is_no_recipient_is_refused_audited_and_nothing_stored(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, _, _, d, signed = await setup(mesh, study)
    refused = await deliver(d, a, report(d, signed.cid, 1).encode())
    assert refused is not None and refused.code == WrongOrganisationError.code
    assert a.store.forward_reports(signed.cid) == {}
    assert alerts(a, ACTION) == [d.peer_id]


async def test_a_recipient_reporting_in_another_orgs_name_is_refused(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, c, _, signed = await setup(mesh, study)
    # B signs a report that names C's org (both are recipients): B's certificate is of RJ1, not RAJ
    refused = await deliver(b, a, report(b, signed.cid, 1, org="RAJ").encode())
    assert refused is not None and refused.code == WrongOrganisationError.code
    # ...and presenting C's certificate with B's signature does not help
    refused = await deliver(b, a, report(b, signed.cid, 1, org="RAJ").encode(), c.ctx.certificate.encode())
    assert refused is not None and refused.code == DocumentError.code
    assert a.store.forward_reports(signed.cid) == {}
    assert alerts(a, ACTION) == [b.peer_id, b.peer_id]


async def test_a_report_for_a_manifest_this_node_did_not_send_is_refused(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _, signed = await setup(mesh, study)
    # B reports on a manifest it received from A to C, the recipient: C sent nothing
    c = mesh.nodes[next(pid for pid, n in mesh.nodes.items() if n.org == "RAJ")]
    refused = await deliver(b, c, report(b, signed.cid, 1).encode())
    assert refused is not None and refused.code == NotFoundError.code
    # ...and on a manifest nobody here knows
    other = report(b, signed.cid, 1).cid
    refused = await deliver(b, a, report(b, other, 1).encode())
    assert refused is not None and refused.code == NotFoundError.code
    assert c.store.forward_reports(signed.cid) == {} and a.store.forward_reports(other) == {}
    assert alerts(c, ACTION) == [b.peer_id] and alerts(a, ACTION) == [b.peer_id]


async def test_a_forged_signature_is_refused(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, d, signed = await setup(mesh, study)
    good = report(b, signed.cid, 5)
    env = good.envelope
    forged = SignedEnvelope(env.type, env.body, env.signer, env.signature[:-1] + bytes([env.signature[-1] ^ 1]))
    refused = await deliver(b, a, forged.encode())
    assert refused is not None and refused.code == SignatureError.code
    # D's key signs a report that names B's peer and org: the signer is not the peer it names
    body = good.document.to_body()
    stolen = SignedEnvelope.sign(FORWARD_REPORT_LABEL, body, d.key)
    refused = await deliver(d, a, stolen.encode(), b.ctx.certificate.encode())
    assert refused is not None and refused.code == DocumentError.code
    assert a.store.forward_reports(signed.cid) == {}
    assert alerts(a, ACTION) == [b.peer_id, d.peer_id]


def _signed_body(by: HarnessNode, manifest_id: CID, destinations: list[CborValue]) -> bytes:
    body: dict[CborKey, CborValue] = {
        "manifest": manifest_id.to_bytes(), "recipient_org": by.org, "recipient_peer": by.peer_id, "seq": 1,
        "destinations": destinations, "at": int(NOW)}
    return SignedEnvelope.sign(FORWARD_REPORT_LABEL, body, by.key).encode()


@pytest.mark.parametrize("destinations, error", [
    ([{"label": f"pacs{i:02}", "state": "forwarded", "sent": 1, "total": 1} for i in range(17)], LimitError),
    ([{"label": "main", "state": "forwarded", "sent": 13, "total": 12}], LimitError),
    ([{"label": "main", "state": "exploded", "sent": 1, "total": 1}], SchemaError),
    ([{"label": "main", "state": "forwarded", "sent": 1, "total": 1, "patient": "DOE^JOHN"}], SchemaError),
    ([{"label": "b", "state": "held", "sent": 0, "total": 1}, {"label": "a", "state": "held", "sent": 0,
                                                                "total": 1}], SchemaError),
    ([], SchemaError),
])
async def test_malformed_or_oversized_reports_are_refused_unstored(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, destinations: list[CborValue],
        error: type[Exception]) -> None:
    a, b, _, _, signed = await setup(mesh, study)
    refused = await deliver(b, a, _signed_body(b, signed.cid, destinations))
    assert refused is not None and refused.code == error.code  # type: ignore[attr-defined]
    assert a.store.forward_reports(signed.cid) == {}
    assert alerts(a, ACTION) == [b.peer_id]


async def test_garbage_and_an_oversized_frame_are_refused(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b, _, _, signed = await setup(mesh, study)
    refused = await deliver(b, a, b"\xa1\x61x\x01")  # a CBOR map that is no envelope
    assert refused is not None and issubclass(_code_class(refused.code), DecodeError | SignatureError)
    big = _signed_body(b, signed.cid, [{"label": "x" * 64, "state": "forwarded", "sent": 1, "total": 1}] * 1)
    huge = big + b"\x00" * 5000
    reply = decode_ack_reply(await a.wire.answer(FORWARD_REPORT_PROTOCOL, b.peer_id, encode_request(
        ForwardReportDelivery(huge, b.ctx.certificate.encode()))))
    assert isinstance(reply, Refused) and reply.code == LimitError.code
    assert a.store.forward_reports(signed.cid) == {}


def _code_class(code: int) -> type[Exception]:
    return ERRORS_BY_CODE[code]


def test_the_report_carries_no_patient_data() -> None:
    fields = {f.name for f in dataclasses.fields(ForwardReport)} | {f.name for f in dataclasses.fields(DestinationReport)}
    assert fields == {"manifest_id", "recipient_org", "recipient_peer", "seq", "destinations", "at",
                      "label", "state", "sent", "total"}
