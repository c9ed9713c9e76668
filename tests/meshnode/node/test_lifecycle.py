"""The node moves stored manifests only through protocol.lifecycle (meshnode.node.lifecycle), on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.node import lifecycle as node_lifecycle
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.errors import LocalProtocolError, NotFoundError
from protocol.lifecycle import ManifestEvent as E, ManifestState as S

NOW_S = 1_700_000_000
MID = CID.of(b"a received manifest")
SENT = CID.of(b"a sent manifest")


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    s.save_manifest(ManifestRow(MID, "1.2.3", "received", "RGT", 1, S.ANNOUNCED, NOW_S, NOW_S + 99, b"r",
                                ("RJ1",)), [])
    s.save_manifest(ManifestRow(SENT, "1.2.3", "sent", "RJ1", 1, S.SENT, NOW_S, NOW_S + 99, b"s", ("RAJ",)), [])
    yield s
    s.close()


def state(store: MetadataStore, manifest_id: CID) -> S:
    row = store.manifest(manifest_id)
    assert row is not None
    return row.state


def test_a_received_manifest_through_its_life(store: MetadataStore) -> None:
    for event, after in ((E.FETCH_STARTED, S.FETCHING), (E.VERIFIED, S.COMPLETE), (E.RECEIPT_DELIVERED, S.RECEIPTED),
                         (E.FETCH_STARTED, S.FETCHING), (E.VERIFIED, S.COMPLETE), (E.RECALLED, S.RECALLED)):
        assert node_lifecycle.move(store, MID, event) is after
        assert state(store, MID) is after


def test_a_recall_is_not_undone_by_a_late_completion_or_receipt(store: MetadataStore) -> None:
    """The race the node's drivers meet: a recall lands while the last blocks are verified (or the receipt is on
    its way). The old code wrote 'complete' / 'receipted' over 'recalled', and so served a recalled study again."""
    node_lifecycle.move(store, MID, E.FETCH_STARTED)
    node_lifecycle.move(store, MID, E.RECALLED)
    for late in (E.VERIFIED, E.RECEIPT_DELIVERED, E.FETCH_STARTED, E.VERIFICATION_FAILED, E.RECALLED):
        with pytest.raises(LocalProtocolError):
            node_lifecycle.move(store, MID, late)
        with pytest.raises(LocalProtocolError):
            node_lifecycle.next_state(store, MID, late)
        assert state(store, MID) is S.RECALLED


def test_the_sides_stay_apart(store: MetadataStore) -> None:
    # the stored direction picks the machine: a sent manifest is never fetched, completed or receipted here
    for event in (E.FETCH_STARTED, E.VERIFIED, E.RECEIPT_DELIVERED, E.VERIFICATION_FAILED):
        with pytest.raises(LocalProtocolError):
            node_lifecycle.move(store, SENT, event)
    assert state(store, SENT) is S.SENT
    assert node_lifecycle.move(store, SENT, E.RECALLED) is S.RECALLED
    with pytest.raises(LocalProtocolError):  # recalled twice: the second is refused, nothing re-signed
        node_lifecycle.move(store, SENT, E.RECALLED)


def test_an_unknown_manifest_is_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFoundError):
        node_lifecycle.move(store, CID.of(b"never stored"), E.RECALLED)
