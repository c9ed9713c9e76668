"""protocol.forward_report: the codec (round trip, canonical form, bad input), the trust rule it shares with
receipts, and the superseding decision."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.cbor import CborKey, CborValue
from protocol.document import open_document
from protocol.errors import DocumentError, MeshError, LimitError, SchemaError, SignatureError, WrongOrganisationError
from protocol.forward_report import (
    FORWARD_REPORT_LABEL,
    MAX_DESTINATIONS,
    DestinationReport,
    ForwardReport,
    ForwardState,
    supersedes,
    verify_forward_report,
)
from protocol.keys import SigningKey
from protocol.receipt import Receipt
from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

NOW = f.NOW
MID = f.make_manifest().sign(f.NODE_A).cid
CERT_B = f.sign_certificate(f.NODE_B, org="RXX", serial_no=3)
CERT_C = f.sign_certificate(f.NODE_C, org="TELE", serial_no=4)


def make(seq: int = 1, *, node: SigningKey = f.NODE_B, org: str = "RXX", at: int = NOW,
         destinations: tuple[DestinationReport, ...] | None = None) -> ForwardReport:
    return ForwardReport(MID, org, node.peer_id, seq, destinations or (
        DestinationReport("main", ForwardState.FORWARDED, 3, 3),), at)


destinations = st.lists(
    st.builds(DestinationReport, st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                                         max_size=64),
              st.sampled_from(ForwardState), st.just(0), st.integers(0, 50_000)),
    min_size=1, max_size=MAX_DESTINATIONS, unique_by=lambda d: d.label,
).map(lambda ds: tuple(sorted(ds, key=lambda d: d.label)))


@settings(max_examples=60, deadline=None)
@given(destinations, st.integers(0, 2**53), st.integers(0, NOW))
def test_round_trip_and_canonical(ds: tuple[DestinationReport, ...], seq: int, at: int) -> None:
    report = make(seq, at=at, destinations=ds)
    raw = report.sign(f.NODE_B).encode()
    opened = open_document(raw, ForwardReport)
    assert opened.document == report and opened.encode() == raw
    assert len(raw) <= ForwardReport.MAX_BYTES  # the largest legal report fits its limit


def test_the_largest_report_fits() -> None:
    ds = tuple(DestinationReport(f"{i:02}" + "x" * 62, ForwardState.HELD, 50_000, 50_000)
               for i in range(MAX_DESTINATIONS))
    assert len(make(2**53, destinations=ds).sign(f.NODE_B).encode()) <= ForwardReport.MAX_BYTES


def _body(**changes: CborValue) -> dict[CborKey, CborValue]:
    body = make().to_body()
    body.update(changes)
    return body


@pytest.mark.parametrize("body, error", [
    (_body(seq=-1), LimitError),
    (_body(seq=2**53 + 1), LimitError),
    (_body(destinations=[]), SchemaError),
    (_body(destinations=[{"label": "", "state": "held", "sent": 0, "total": 0}]), SchemaError),
    (_body(destinations=[{"label": "a\nb", "state": "held", "sent": 0, "total": 0}]), SchemaError),
    (_body(destinations=[{"label": "a", "state": "held", "sent": 2, "total": 1}]), LimitError),
    (_body(destinations=[{"label": "a", "state": "held", "sent": 0, "total": 50_001}]), LimitError),
    (_body(destinations=[{"label": "a", "state": "held", "sent": 0}]), SchemaError),
    (_body(destinations=[{"label": "a", "state": "held", "sent": 0, "total": 0}] * 2), SchemaError),
    (_body(study="1.2.3"), SchemaError),  # no room for a study UID, or anything else
    (_body(recipient_org="not an org"), SchemaError),
])
def test_bad_bodies_are_refused(body: dict[CborKey, CborValue], error: type[MeshError]) -> None:
    raw = f.resign(FORWARD_REPORT_LABEL, body, f.NODE_B)
    with raises_exactly(error):
        open_document(raw, ForwardReport)


def test_signed_by_another_peer_than_it_names_or_relabelled() -> None:
    with raises_exactly(DocumentError):
        make().sign(f.NODE_C)
    raw = f.resign(FORWARD_REPORT_LABEL, make().to_body(), f.NODE_C)
    with raises_exactly(DocumentError):
        open_document(raw, ForwardReport)
    receipt = f.make_receipt().sign(f.NODE_B).encode()
    with pytest.raises((SchemaError, SignatureError)):
        open_document(receipt, ForwardReport)  # a receipt is never read as a report (distinct label)
    with pytest.raises((SchemaError, SignatureError)):
        open_document(make().sign(f.NODE_B).encode(), Receipt)


def test_verification_is_the_receipts_trust_rule() -> None:
    signed = open_document(make().sign(f.NODE_B).encode(), ForwardReport)
    assert verify_forward_report(signed, CERT_B, f.make_roster(), NOW) == CERT_B.document
    in_another_name = open_document(make(node=f.NODE_C, org="RXX").sign(f.NODE_C).encode(), ForwardReport)
    with raises_exactly(WrongOrganisationError):
        verify_forward_report(in_another_name, CERT_C, f.make_roster(), NOW)
    with raises_exactly(DocumentError):
        verify_forward_report(signed, CERT_C, f.make_roster(), NOW)  # a certificate of another node
    future = open_document(make(at=NOW + 301).sign(f.NODE_B).encode(), ForwardReport)
    with raises_exactly(DocumentError, match="future"):
        verify_forward_report(future, CERT_B, f.make_roster(), NOW)


def test_only_a_higher_seq_supersedes() -> None:
    assert supersedes(make(1), None)
    assert supersedes(make(2), make(1))
    assert not supersedes(make(2), make(2))  # a replay
    assert not supersedes(make(1), make(2))  # out of order
    with raises_exactly(DocumentError):
        supersedes(make(3, node=f.NODE_C, org="TELE"), make(1))


def test_summary() -> None:
    def ds(*states: ForwardState) -> tuple[DestinationReport, ...]:
        return tuple(DestinationReport(f"d{i}", s, 1, 2) for i, s in enumerate(states))

    assert make(destinations=ds(ForwardState.FORWARDED)).summary is ForwardState.FORWARDED
    assert make(destinations=ds(ForwardState.FORWARDED, ForwardState.HELD)).summary is ForwardState.HELD
    assert make(destinations=ds(ForwardState.HELD, ForwardState.FAILED)).summary is ForwardState.FAILED
    assert (make(destinations=ds(ForwardState.FORWARDED, ForwardState.HELD)).sent,
            make(destinations=ds(ForwardState.FORWARDED, ForwardState.HELD)).total) == (2, 4)
