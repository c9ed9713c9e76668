"""Research (de-identified) studies at the recipient (second review, finding 8): never patient-reconciled (no
local identity is ever matched onto pseudonymised data) and not forwarded to a [[pacs]] unless that destination
opts in with `purposes = ["care", "research"]` (default ["care"])."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from meshnode.config import NodeConfig, parse_config
from meshnode.gateway.config import PacsDestination
from meshnode.gateway.pacs_queue import queue_name, queue_received
from meshnode.gateway.reconcile_config import ReconciliationSettings
from meshnode.gateway.reconciler import Reconciler
from meshnode.storage.audit import AuditEvent
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow, Source
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.study.manifest_builder import build_manifest
from protocol.document import Signed
from protocol.errors import ConfigError
from protocol.keys import SigningKey
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.storage.helpers import instance

KEY = SigningKey(bytes([9]) * 32)
NOW = 1_767_225_600
CLINICAL = PacsDestination("main", "PACS", "127.0.0.1", 11112)
RESEARCH_PACS = replace(CLINICAL, name="research", purposes=("care", "research"))
T = TypeVar("T")

BASE = NodeConfig(org="RGT").render()
PACS = '[[pacs]]\nname = "main"\nae_title = "P"\nhost = "127.0.0.1"\nport = 104\n'


class Db:
    """The database thread's interface over a store (tests: same thread)."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        return fn(self.store)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = (SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite"
                        else MemoryMetadataStore())
    yield s
    s.close()


def receive(store: MetadataStore, purpose: Purpose) -> Signed[Manifest]:
    records = [replace(instance(n), source=Source.RECEIVED, origin="RGT") for n in (1, 2)]
    signed = build_manifest(records, sender_org="RGT", sender_peer=KEY.peer_id, recipients=("RXX",),
                            priority=Priority.URGENT, purpose=purpose, created_at=NOW, expires_at=NOW + 86400,
                            ).sign(KEY)
    store.add_instances(records, [], NOW * 1000)
    store.save_manifest(ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", 1,
                                    ManifestState.RECEIPTED, NOW, NOW + 86400, signed.encode()), [])
    return signed


def test_a_research_study_reaches_only_a_pacs_that_opted_in(store: MetadataStore) -> None:
    research = receive(store, Purpose.RESEARCH)
    queued = queue_received(store, research.cid, [CLINICAL, RESEARCH_PACS], NOW * 1000)
    assert set(queued) == {"research"} and len(queued["research"]) == 2
    assert store.queue_rows(queue_name("main")) == []


def test_a_research_study_is_never_reconciled(store: MetadataStore) -> None:
    research = receive(store, Purpose.RESEARCH)
    audits: list[AuditEvent] = []

    async def audit(event: AuditEvent) -> None:
        audits.append(event)
    rec = Reconciler(Db(store), None, ReconciliationSettings(enabled=True), audit, "RXX dicom-mesh", time.time)
    assert rec.gate(store, research.cid) is True  # not held for a patient match
    assert trio.run(rec.settle, research.cid) is True
    assert store.reconciliation(research.cid) is None and audits == [] and rec.holding(store, research.cid) == ""
    assert rec.coercions(store, [research.cid]) == {}  # forwarded (where opted in) exactly as received
    care = receive(store, Purpose.CARE)
    assert rec.gate(store, care.cid) is False  # a care study still waits for its match


def test_purposes_default_to_care_and_render_back() -> None:
    config = parse_config(BASE + PACS)
    assert config.gateway.pacs[0].purposes == ("care",)
    opted = parse_config(BASE + PACS + 'purposes = ["care", "research"]\n')
    assert opted.gateway.pacs[0].purposes == ("care", "research")
    assert parse_config(opted.render()) == opted
    assert 'purposes = ["care"]' in config.render()


@pytest.mark.parametrize("value", ['["clinical"]', "[]", '"care"'])
def test_bad_purposes_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"pacs\[0\]\.purposes"):
        parse_config(BASE + PACS + f"purposes = {value}\n")
