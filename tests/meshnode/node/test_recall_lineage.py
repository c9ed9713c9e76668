"""A recall forgets only what the recalling org sent (meshnode.node.runtime.forget_recalled): another org's
manifest reusing the Study UID, local instances and instances a live revision still lists stay. Both stores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.node.manifest_cache import ManifestCache
from meshnode.node.runtime import forget_recalled
from meshnode.storage.conflicts import received_revision
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, ManifestRow, Source
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.study.manifest_builder import build_manifest
from protocol.document import Signed
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.storage.helpers import STUDY, instance

KEY = SigningKey(bytes([9]) * 32)
NOW = 1_767_225_600


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def received(store: MetadataStore, recs: Sequence[InstanceRecord], org: str, revision: int = 1,
             created: int = NOW) -> tuple[Signed[Manifest], ManifestRow]:
    recs = [replace(r, source=Source.RECEIVED, origin=org) for r in recs]
    m = build_manifest(recs, sender_org=org, sender_peer=KEY.peer_id, recipients=("RXX",), priority=Priority.URGENT,
                       purpose=Purpose.CARE, created_at=created, expires_at=created + 86400).sign(KEY)
    store.add_instances(recs, [], NOW * 1000, [received_revision(org, str(m.cid))] * len(recs))
    row = ManifestRow(m.cid, m.document.study_uid, "received", org, revision, ManifestState.RECEIPTED, created,
                      created + 86400, m.encode())
    store.save_manifest(row, [c for r in recs for c in r.blocks])
    return m, row


def recall(store: MetadataStore, row: ManifestRow) -> int:
    store.set_manifest_state(row.manifest_id, ManifestState.RECALLED)
    return forget_recalled(store, ManifestCache().open, row, NOW * 1000)


def held(store: MetadataStore) -> list[tuple[str, str]]:
    return sorted((r.sop_instance_uid, r.origin) for r in store.instances(STUDY))


def test_a_recall_does_not_forget_another_orgs_instances(store: MetadataStore) -> None:
    received(store, [instance(n) for n in (1, 2, 3)], "RGT")
    _, zzz = received(store, [instance(9, payload=b"zzz" * 9)], "ZZZ")  # reuses RGT's Study UID
    assert recall(store, zzz) == 1
    assert held(store) == [(instance(n).sop_instance_uid, "RGT") for n in (1, 2, 3)]
    assert store.study(STUDY) is not None


def test_a_recall_forgets_the_study_it_alone_sent(store: MetadataStore) -> None:
    _, rgt = received(store, [instance(n) for n in (1, 2)], "RGT")
    assert recall(store, rgt) == 2
    assert held(store) == [] and store.study(STUDY) is None


def test_a_recall_keeps_local_instances_and_what_a_live_revision_lists(store: MetadataStore) -> None:
    store.add_instances([instance(5)], [], NOW * 1000)  # ingested here
    _, first = received(store, [instance(1), instance(2)], "RGT")
    received(store, [instance(2), instance(3)], "RGT", revision=2, created=NOW + 60)  # still live
    assert recall(store, first) == 1  # only .1: revision 2 still lists .2
    assert held(store) == sorted([(instance(5).sop_instance_uid, ""), (instance(2).sop_instance_uid, "RGT"),
                                  (instance(3).sop_instance_uid, "RGT")])
