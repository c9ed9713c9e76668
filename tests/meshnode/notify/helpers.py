"""Shared pieces of the email tests: a received manifest in a store, users with email addresses, a notifier."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.notify.config import NotifyConfig
from meshnode.notify.notifier import Notifier
from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import ManifestRow
from meshnode.storage.users import User, UserStore
from protocol.backoff import Backoff
from protocol.document import Signed
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.protocol import factories as f

NOTE = "Patient DOE^JANE 9434765919: compare with her CT of 2025-12-01"
#: everything in the manifest that identifies the patient or the study: none of it may reach an email
IDENTIFIERS = ("DOE^JANE", "DOE", "JANE", "9434765919", "19700101", "CT HEAD WITHOUT CONTRAST", f.STUDY_UID,
               "compare with her")


@dataclass(frozen=True)
class StaffUser(User):
    """A user as the portal's user store keeps them once it has email addresses (the AUTH change)."""

    email: str = ""


def received(store: MetadataStore, *, attention: str = "", note: str = NOTE,
             priority: Priority = Priority.URGENT) -> Signed[Manifest]:
    """A manifest from RGT to RXX, recorded as received and complete."""
    signed = f.make_manifest(recipients=("RXX",), attention=attention, note=note, priority=priority).sign(f.NODE_A)
    m = signed.document
    store.save_manifest(ManifestRow(signed.cid, m.study_uid, "received", m.sender_org, m.revision,
                                    ManifestState.COMPLETE, m.created_at, m.expires_at, signed.encode(),
                                    m.recipients), m.block_order())
    return signed


def arrived(signed: Signed[Manifest], kind: StudyEventKind = StudyEventKind.ARRIVED,
            direction: str = "received") -> StudyEvent:
    m = signed.document
    return StudyEvent(kind, str(signed.cid), m.study_uid, m.sender_org, m.priority.value, direction,
                      instances=len(m.instances))


def config_for(server: SmtpServer | None, tmp_path: Path, **kw: object) -> NotifyConfig:
    values: dict[str, object] = dict(
        host="127.0.0.1", port=server.port if server else 1, ca=server.pki.ca_cert if server else None,
        from_address="imaging-mesh@rxx.nhs.uk", org_address="pacs-team@rxx.nhs.uk", timeout_seconds=5,
        attention_domains=("rxx.nhs.uk",))
    if server is not None and server.users:
        values.update(username=next(iter(server.users)), password=next(iter(server.users.values())))
    values.update(kw)
    return NotifyConfig(**values)  # type: ignore[arg-type]


class Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def __call__(self, event: AuditEvent) -> None:
        self.events.append(event)

    def actions(self) -> list[str]:
        return [e.action for e in self.events]


def notifier(config: NotifyConfig, store: MetadataStore, users: UserStore, audit: Audit) -> Notifier:
    return Notifier(config, DatabaseThread(store), users, "RXX", "https://gw.rxx.nhs.uk", audit, time.time,
                    org_name=lambda peer: "Guy's and St Thomas' NHS Foundation Trust",
                    backoff=Backoff(base=0.01, cap=0.05))
