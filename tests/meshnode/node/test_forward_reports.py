"""meshnode.node.forward_reports: when the recipient reports (every reporting destination ended), what staff
read of a report, and the store's rule that only a higher seq replaces the kept report (both stores)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.pacs_queue import ForwardProgress
from meshnode.node.forward_reports import destination_reports, forward_json, forward_text
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.forward_report import DestinationReport, ForwardReport, ForwardState
from tests.protocol import factories as f

MAIN = PacsDestination("main", "PACS", "127.0.0.1", 104)
RESEARCH = PacsDestination("research", "RPACS", "127.0.0.1", 105)
QUIET = replace(RESEARCH, report_forward=False)


def p(*, total: int = 4, sent: int = 0, pending: int = 0, failed: int = 0, held: int = 0, waiting: int = 0,
      cancelled: int = 0) -> ForwardProgress:
    return ForwardProgress(total, waiting, pending, sent, failed, cancelled, "", 0, held)


def test_a_report_once_every_reporting_destination_has_ended() -> None:
    both = (MAIN, RESEARCH)
    assert destination_reports({}, both) is None  # no destination takes the study: nothing to report
    assert destination_reports({"main": p(sent=4), "research": p(sent=1, pending=3)}, both) is None
    assert destination_reports({"main": p(waiting=4)}, both) is None
    assert destination_reports({"main": p(sent=1, cancelled=3)}, both) is None  # recalled: not reported
    assert destination_reports({"main": p(sent=4), "research": p(sent=2, failed=2)}, both) == (
        DestinationReport("main", ForwardState.FORWARDED, 4, 4), DestinationReport("research", ForwardState.FAILED, 2, 4))
    assert destination_reports({"main": p(sent=3, failed=1, held=1)}, both) == (
        DestinationReport("main", ForwardState.HELD, 3, 4),)
    # a destination with report_forward = false is neither reported nor waited for
    assert destination_reports({"main": p(sent=4), "research": p(pending=4)}, (MAIN, QUIET)) == (
        DestinationReport("main", ForwardState.FORWARDED, 4, 4),)
    assert destination_reports({"research": p(sent=4)}, (MAIN, QUIET)) is None


def _raw(seq: int, *states: tuple[ForwardState, int, int]) -> bytes:
    ds = tuple(DestinationReport(f"d{i}", s, sent, total) for i, (s, sent, total) in enumerate(states))
    return ForwardReport(CID.of(b"m"), "RXX", f.NODE_B.peer_id, seq, ds, f.NOW).sign(f.NODE_B).encode()


def test_what_staff_read() -> None:
    assert forward_text(None) == ""
    assert forward_text(forward_json(_raw(1, (ForwardState.FORWARDED, 12, 12)))) == "forwarded to PACS (12/12)"
    failed = forward_json(_raw(1, (ForwardState.FORWARDED, 12, 12), (ForwardState.FAILED, 3, 12)))
    assert forward_text(failed) == "PACS forward failed (15/24)"
    assert failed["destinations"] == [{"label": "d0", "state": "forwarded", "sent": 12, "total": 12},
                                      {"label": "d1", "state": "failed", "sent": 3, "total": 12}]
    assert forward_text(forward_json(_raw(1, (ForwardState.HELD, 0, 2)))) == "PACS forward held (0/2)"


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def test_only_a_higher_seq_replaces_the_kept_report(store: MetadataStore) -> None:
    mid, other = CID.of(b"m"), CID.of(b"other")
    assert store.forward_reports(mid) == {}
    assert store.save_forward_report(mid, "RXX", 5, b"five", 1)
    assert not store.save_forward_report(mid, "RXX", 5, b"five again", 2)  # a replay
    assert not store.save_forward_report(mid, "RXX", 4, b"four", 3)  # out of order
    assert store.forward_reports(mid) == {"RXX": b"five"}
    assert store.save_forward_report(mid, "RXX", 6, b"six", 4)
    assert store.save_forward_report(mid, "RAJ", 1, b"raj", 4)  # per org
    assert store.forward_reports(mid) == {"RXX": b"six", "RAJ": b"raj"} and store.forward_reports(other) == {}
