"""`meshnode gateway` tells what waits for a person (second review, finding 11): forward items held for a
conflict decision are counted as held (not failed), received studies waiting for patient reconciliation and
research shares held for a pixel-risk decision are listed (they were shown nowhere: "nothing queued")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.cli.gateway_cmd import status_lines
from meshnode.gateway.config import PacsDestination
from meshnode.gateway.pacs_queue import counts, queue_received
from meshnode.gateway.service import waiting_for_people
from meshnode.storage.conflicts import received_revision
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.records import ManifestRow, Source
from meshnode.storage.research_store import ResearchShareRow, ResearchState
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.study.manifest_builder import build_manifest
from protocol.cid import CID
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority, Purpose
from tests.meshnode.storage.helpers import STUDY, instance

KEY = SigningKey(bytes([9]) * 32)
NOW = 1_767_225_600
DEST = PacsDestination("main", "PACS", "127.0.0.1", 11112)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = (SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite"
                        else MemoryMetadataStore())
    yield s
    s.close()


def _status(store: MetadataStore) -> dict[str, object]:
    return {"dimse": None, "intake": {"stored": 0, "bytes": 0, "duplicates": 0, "refused": 0}, "routes": [],
            "pending_announcements": [], **waiting_for_people(store),
            "forward": {"main": {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112, "items": counts(store).get(
                "main", {}), "unreachable": ""}}}


def test_held_forward_items_are_held_not_failed(store: MetadataStore) -> None:
    store.add_instances([instance(1)], [], NOW * 1000)  # ingested here: the received one with its UID is held
    theirs = [replace(instance(1, payload=b"RGT's version" * 8), source=Source.RECEIVED, origin="RGT"),
              replace(instance(2), source=Source.RECEIVED, origin="RGT")]
    signed = build_manifest(theirs, sender_org="RGT", sender_peer=KEY.peer_id, recipients=("RXX",),
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=NOW, expires_at=NOW + 86400,
                            ).sign(KEY)
    store.add_instances(theirs, [], NOW * 1000, [received_revision("RGT", str(signed.cid))] * 2)
    store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", 1,
                                    ManifestState.RECEIPTED, NOW, NOW + 86400, signed.encode()), [])
    queue_received(store, signed.cid, [DEST], NOW * 1000)
    assert counts(store) == {"main": {"pending": 1, "held": 1}}
    (line,) = [ln for ln in status_lines(_status(store)) if ln.startswith("PACS main")]
    assert "1 held (for `meshnode conflicts`)" in line and "failed" not in line


def test_waiting_reconciliation_and_held_research_shares_are_listed(store: MetadataStore) -> None:
    lines = status_lines(_status(store))
    assert not [ln for ln in lines if ln.startswith(("RECONCILIATION", "RESEARCH"))]
    store.add_reconciliation(ReconciliationRow(CID.of(b"m1"), STUDY, "RGT", ReconState.WAITING, 1))
    store.add_reconciliation(ReconciliationRow(CID.of(b"m2"), STUDY, "RGT", ReconState.MATCHED, 1))
    store.save_research_share(ResearchShareRow("share-1", STUDY, "trial", "{}", ResearchState.HELD, 1))
    store.save_research_share(ResearchShareRow("share-2", STUDY, "trial", "{}", ResearchState.SHARED, 1))
    lines = status_lines(_status(store))
    (recon,) = [ln for ln in lines if ln.startswith("RECONCILIATION")]
    assert recon.startswith("RECONCILIATION: 1 received stud(ies) waiting") and "meshnode reconcile" in recon
    (held,) = [ln for ln in lines if ln.startswith("RESEARCH SHARE HELD")]
    assert "share-1" in held and "meshnode deid" in held
