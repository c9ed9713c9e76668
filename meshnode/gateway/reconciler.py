"""Patient reconciliation on arrival: the driver between a received study, the lookup table and the forwarder.

With [reconciliation] enabled, a received study reaches the PACS only under a
local patient record:

    receipt delivered -> `gate` (in the forwarder's queue_write, database thread): the study is not queued for
                         the PACS; a row ARRIVED is written (so a restart decides it too)
    `settle`          -> reads the identifiers from one stored instance's header, looks the NHS number up in
                         the local table and applies protocol.reconciliation.decide: MATCHED (forwarded) or
                         WAITING (a human decides; nothing is queued)
    `match`/`reject`  -> a PACS-team user's decision on a WAITING study (a replay changes nothing; a record
                         whose NHS number is not the study's needs an override with a reason)
    later revisions   -> the same sender's later revision supersedes its undecided earlier ones (SUPERSEDED);
                         it keeps an earlier match only when nothing that decision used changed (the
                         fingerprint of the arriving identifiers, the local record, the table's records for
                         its NHS numbers); otherwise it is decided afresh
    `coercions`       -> for the forwarder: the local identity each MATCHED manifest is forwarded under
                         (meshnode.gateway.coercion derives the copy; the stored blocks stay as received)

Every decision is audited (Patient Record, 110110) with who made it ("auto" or the user).
"""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import BinaryIO

import trio
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from meshnode.gateway.coercion import Coercion
from meshnode.gateway.config import PacsDestination
from meshnode.gateway.pacs_queue import manifest_prefix, queue_name, received_manifest
from meshnode.gateway.patient_table import PatientInput, check_record
from meshnode.gateway.reconcile_config import ReconciliationSettings
from meshnode.node.retry_driver import Database
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.block_stream import BlockStream
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import PatientRecord, ReconciliationRow, ReconState
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.cid import CID
from protocol.errors import LocalProtocolError, MeshError, NotFoundError, StorageError
from protocol.lifecycle import ManifestState
from protocol.manifest import Purpose
from protocol.reconciliation import (
    ArrivingPatient,
    Demographics,
    Match,
    PatientIdentifier,
    Reason,
    decide_study,
    nhs_numbers,
    normalise_nhs_number,
    patients_fingerprint,
)

log = logging.getLogger(__name__)

AuditFn = Callable[[AuditEvent], Awaitable[None]]
AUTO = "auto"
#: after a restart, matched studies decided this recently are queued again if nothing of them is queued
RECHECK_MATCHED_MS = 30 * 86400 * 1000
_READY = (ManifestState.RECEIPTED, ManifestState.COMPLETE)
_HEADER_TAGS = ("PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientName", "PatientBirthDate",
                "PatientSex")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip()


def arriving_patient(stream: BinaryIO) -> ArrivingPatient:
    """The patient's identifiers and demographics from an instance's header (StorageError if unreadable)."""
    try:
        ds = dcmread(stream, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        others = tuple(PatientIdentifier(_text(i, "PatientID"), _text(i, "IssuerOfPatientID"))
                       for i in ds.get("OtherPatientIDsSequence", None) or ())
        return ArrivingPatient(PatientIdentifier(_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID")), others,
                               Demographics(_text(ds, "PatientName"), _text(ds, "PatientBirthDate"),
                                            _text(ds, "PatientSex")))
    except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OSError) as exc:
        raise StorageError(f"cannot read the patient from the stored header: {type(exc).__name__}") from None


def stored_patients(blocks: BlockStore, records: Sequence[InstanceRecord]) -> list[ArrivingPatient]:
    """The patient each stored instance names, read from its blocks up to the pixel data (worker thread)."""
    out = []
    for record in records:
        reader = io.BufferedReader(BlockStream(blocks, record.blocks, record.block_sizes), buffer_size=64 * 1024)
        out.append(arriving_patient(reader))
    return out


def dicom_datetime(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y%m%d%H%M%S+0000")


class Reconciler:
    def __init__(self, db: Database, blocks: BlockStore | None, settings: ReconciliationSettings, audit: AuditFn,
                 modifying_system: str, clock: Callable[[], float]) -> None:
        self.db = db
        self.blocks = blocks
        self.settings = settings
        self.audit = audit
        self.modifying_system = modifying_system
        self.clock = clock
        #: told a manifest may now be forwarded (Forwarder.release)
        self.on_matched: Callable[[CID], Awaitable[object]] | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- database thread ---------------------------------------------------------------------------
    def gate(self, store: MetadataStore, manifest_id: CID) -> bool:
        """May this received study be queued for the PACS now? Records it ARRIVED the first time."""
        if not self.settings.enabled:
            return True
        row = store.reconciliation(manifest_id)
        if row is not None:
            return row.state is ReconState.MATCHED
        found = received_manifest(store, manifest_id)
        if found is not None and found[1].purpose is Purpose.RESEARCH:
            return True  # never reconciled: no patient matching of pseudonymised data (review 2 finding 8)
        if found is not None and found[0] in _READY:
            stored = store.manifest(manifest_id)
            store.add_reconciliation(ReconciliationRow(
                manifest_id, stored.study_uid if stored else "", found[1].sender_org, ReconState.ARRIVED,
                self._now_ms()), [(i.sop_instance_uid, i.digest) for i in found[1].instances])
        return False

    def holding(self, store: MetadataStore, manifest_id: CID) -> str:
        """"" when reconciliation does not hold this manifest back, else what the inbox shows."""
        row = store.reconciliation(manifest_id) if self.settings.enabled else None
        if row is None or row.state is ReconState.MATCHED:
            return ""
        if row.state is ReconState.SUPERSEDED:
            return "superseded-in-reconciliation"  # a later revision waits or was decided instead
        return "rejected-by-reconciliation" if row.state is ReconState.REJECTED else "waiting-for-reconciliation"

    def coercions(self, store: MetadataStore, manifest_ids: Sequence[CID]) -> dict[CID, Coercion]:
        """The local identity each matched manifest is forwarded under (absent: forwarded as stored)."""
        out: dict[CID, Coercion] = {}
        for m in set(manifest_ids):
            row = store.reconciliation(m)
            if row is None or row.state is not ReconState.MATCHED:
                continue
            if (row.local_id, row.local_issuer) == (row.patient_id, row.issuer) and \
                    (row.local_name, row.local_birth_date, row.local_sex) == (row.name, row.birth_date, row.sex):
                continue  # already the local identity: nothing to change
            out[m] = Coercion(row.local_id, row.local_issuer, row.local_name, row.local_birth_date, row.local_sex,
                              row.sender_org, self.modifying_system, dicom_datetime(row.decided_ms),
                              self.settings.local_issuer_oid)
        return out

    def unmatched(self, store: MetadataStore, manifest_ids: Sequence[CID]) -> set[CID]:
        """The manifests reconciliation holds back (a row not matched): nothing of them is sent to the PACS,
        whatever queued it (the forwarder checks at send time)."""
        if not self.settings.enabled:
            return set()
        return {m for m in set(manifest_ids)
                if (row := store.reconciliation(m)) is not None and row.state is not ReconState.MATCHED}

    def _instances(self, store: MetadataStore, row: ReconciliationRow) -> list[InstanceRecord]:
        """The stored instances the manifest lists."""
        found = received_manifest(store, row.manifest_id)
        if found is None:
            return []
        wanted = {(i.sop_instance_uid, i.digest) for i in found[1].instances}
        wanted |= store.reconciliation_instances(row.manifest_id)  # keep-both copies of its held instances
        return [r for r in store.instances(row.study_uid) if (r.sop_instance_uid, r.digest) in wanted]

    def instances_admitted(self, store: MetadataStore, manifest_id: CID, renamed: InstanceRecord | None) -> bool:
        """A conflict decision (replace, keep-both) lets a held instance of this received manifest in (database
        thread, in the decision's transaction; review 2 finding 3 and 4). A keep-both copy is recorded against
        the manifest (held back with it until matched, read by its decision). A manifest matched or waiting is
        decided again (back to ARRIVED) over all its now-stored instances: the admitted one may name another
        patient. True when it was: its forward items are queued only once it is matched again."""
        if not self.settings.enabled:
            return False
        if renamed is not None:
            store.add_reconciliation_instances(manifest_id, [(renamed.sop_instance_uid, renamed.digest)])
        row = store.reconciliation(manifest_id)
        if row is None or row.state not in (ReconState.MATCHED, ReconState.WAITING):
            return False  # not yet gated, or about to be decided (ARRIVED), or nothing forwarded (rejected...)
        again = replace(row, state=ReconState.ARRIVED, reason="", detail="a conflict decision admitted an instance",
                        local_id="", local_issuer="", local_name="", local_birth_date="", local_sex="",
                        decided_by="", decided_ms=0)
        return store.update_reconciliation(again, row.state)

    async def admitted(self, manifest_id: CID, actor: str) -> None:
        """Audit that a conflict decision sent a manifest back to be decided again (instances_admitted)."""
        await self.audit(AuditEvent(
            EventCode.PATIENT_RECORD, f"reconcile-{ReconState.ARRIVED.value}", Outcome.MINOR_FAILURE, actor=actor,
            manifest_id=str(manifest_id), detail="decided again: a conflict decision admitted a held instance"))

    # -- the automatic decision ----------------------------------------------------------------------
    async def unsettled(self, destinations: Sequence[PacsDestination]) -> list[CID]:
        """After a restart: the studies still to decide automatically, and the matched ones not yet queued
        (a crash between a decision and the queue write, milliseconds apart: only recent decisions are
        looked at, so a restart does not scan every study ever matched)."""
        since = self._now_ms() - RECHECK_MATCHED_MS

        def load(store: MetadataStore) -> list[CID]:
            out = []
            for r in store.reconciliations((ReconState.ARRIVED, ReconState.MATCHED)):
                if r.state is ReconState.MATCHED and r.decided_ms < since:
                    continue
                if r.state is ReconState.ARRIVED or not any(
                        store.queue_rows(queue_name(d.name), key_prefix=manifest_prefix(r.manifest_id))
                        for d in destinations):
                    out.append(r.manifest_id)
            return out
        return await self.db.run(load) if self.settings.enabled else []

    async def settle(self, manifest_id: CID) -> bool:
        """Decide an ARRIVED study automatically; True when it may be forwarded (matched, or reconciliation off)."""
        if not self.settings.enabled:
            return True
        row = await self.db.run(lambda s: s.reconciliation(manifest_id))
        if row is None:  # not gated; a research manifest is never reconciled (gate lets it through)
            found = await self.db.run(lambda s: received_manifest(s, manifest_id))
            return found is not None and found[1].purpose is Purpose.RESEARCH
        if row.state is not ReconState.ARRIVED:
            return row.state is ReconState.MATCHED
        try:
            patients = await self._read_patients(row)
        except MeshError as exc:
            log.error("manifest %s: reconciliation cannot read the patient: %s", manifest_id, exc)
            waiting = replace(row, state=ReconState.WAITING, reason="unreadable", detail=exc.name)
            await self._record(waiting, ReconState.ARRIVED, "waits: the stored header cannot be read")
            return False
        patient = patients[0]
        d = patient.demographics
        numbers = nhs_numbers(patient, frozenset(self.settings.nhs_issuers))
        base = replace(row, patient_id=patient.patient_id.value, issuer=patient.patient_id.issuer,
                       name=d.name, birth_date=d.birth_date, sex=d.sex, fingerprint=patients_fingerprint(patients))
        await self._supersede_earlier(base)
        prior = await self.db.run(partial(self._carried_match, row=base, numbers=numbers))
        if prior is not None:  # a later revision naming the patient as the matched one did (late instances)
            carried = replace(base, state=ReconState.MATCHED, reason=prior.reason, nhs_number=prior.nhs_number,
                              local_id=prior.local_id, local_issuer=prior.local_issuer, local_name=prior.local_name,
                              local_birth_date=prior.local_birth_date, local_sex=prior.local_sex,
                              decided_by=AUTO, decided_ms=self._now_ms())
            return await self._record(carried, ReconState.ARRIVED,
                                      f"matched as manifest {prior.manifest_id} was (by {prior.decided_by}): "
                                      "the same patient identifiers, the local record unchanged")
        candidates = await self.db.run(lambda s: [p for n in numbers for p in s.patients(n)])
        decision = decide_study(patients, [c.local_patient() for c in candidates],
                          issuers=frozenset(self.settings.nhs_issuers),
                          demographics_must_agree=self.settings.demographics_must_agree)
        base = replace(base, nhs_number=decision.nhs_number or ",".join(numbers)[:200])
        if isinstance(decision, Match):
            r = decision.record
            matched = replace(base, state=ReconState.MATCHED, reason=Reason.MATCHED.value,
                              local_id=r.local_id, local_issuer=r.issuer, local_name=r.demographics.name,
                              local_birth_date=r.demographics.birth_date, local_sex=r.demographics.sex,
                              decided_by=AUTO, decided_ms=self._now_ms())
            return await self._record(matched, ReconState.ARRIVED, "matched by NHS number")
        waiting = replace(base, state=ReconState.WAITING, reason=decision.reason.value, detail=decision.detail)
        await self._record(waiting, ReconState.ARRIVED, f"waits for a decision: {decision.reason.value}"
                           + (f" ({decision.detail})" if decision.detail else ""))
        return False

    def _carried_match(self, store: MetadataStore, row: ReconciliationRow,
                       numbers: Sequence[str]) -> ReconciliationRow | None:
        """The same sender's earlier matched revision whose decision this one may keep (database thread): only
        when everything the decision used is unchanged (review finding 2): the arriving identifiers and
        demographics (the fingerprint, Other Patient IDs included), the local record (still there, as it was
        when matched) and the table's records for the arriving NHS numbers (none changed since)."""
        matched = [r for r in store.study_reconciliations(row.study_uid)
                   if r.state is ReconState.MATCHED and r.sender_org == row.sender_org
                   and r.manifest_id != row.manifest_id]
        if not matched:
            return None
        prior = matched[-1]
        if not prior.fingerprint or prior.fingerprint != row.fingerprint:
            return None
        record = store.patient(prior.local_id)
        if record is None or record.updated_ms > prior.decided_ms or \
                (record.issuer, record.name, record.birth_date, record.sex) != \
                (prior.local_issuer, prior.local_name, prior.local_birth_date, prior.local_sex):
            return None
        if any(p.updated_ms > prior.decided_ms for n in numbers for p in store.patients(n)):
            return None
        return prior

    async def _supersede_earlier(self, row: ReconciliationRow) -> None:
        """A later revision of the same sender's study supersedes its earlier revisions still undecided
        (review finding 9): they leave the queue (state superseded, audited); the later one is decided."""
        def earlier(store: MetadataStore) -> list[ReconciliationRow]:
            this = store.manifest(row.manifest_id)
            if this is None:
                return []
            out = []
            for r in store.study_reconciliations(row.study_uid):
                other = store.manifest(r.manifest_id)
                if r.sender_org == row.sender_org and r.manifest_id != row.manifest_id and other is not None \
                        and other.revision < this.revision and r.state in (ReconState.ARRIVED, ReconState.WAITING):
                    out.append(r)
            return out
        for old in await self.db.run(earlier):
            superseded = replace(old, state=ReconState.SUPERSEDED, decided_by=AUTO, decided_ms=self._now_ms(),
                                 detail=f"superseded by manifest {row.manifest_id}"[:200])
            await self._record(superseded, old.state, f"superseded by the later revision {row.manifest_id}; "
                               "the later one is decided")

    async def _read_patients(self, row: ReconciliationRow) -> list[ArrivingPatient]:
        """The patient every instance of the manifest names (a study naming two patients waits for a human)."""
        records = await self.db.run(partial(self._instances, row=row))
        if not records or self.blocks is None:
            raise StorageError("no stored instance of the study")
        return await trio.to_thread.run_sync(stored_patients, self.blocks, records)

    async def _record(self, row: ReconciliationRow, expected: ReconState, what: str) -> bool:
        """Store the new row if the old one is still `expected`, and audit it; True when stored."""
        stored = await self.db.run(lambda s: s.update_reconciliation(row, expected))
        if not stored:
            return False
        matched = row.state is ReconState.MATCHED
        outcome = Outcome.SUCCESS if matched else Outcome.MINOR_FAILURE
        local = (f"; forwarded as local record {row.local_issuer}/{hash_uid(row.local_id)} (COERCE: the arriving "
                 "identifiers kept in Other Patient IDs and Original Attributes Sequence)") if matched else ""
        await self.audit(AuditEvent(
            EventCode.PATIENT_RECORD, f"reconcile-{row.state.value}", outcome, actor=row.decided_by or AUTO,
            study=hash_uid(row.study_uid), manifest_id=str(row.manifest_id),
            detail=f"from {row.sender_org}: {what}{local}"[:600]))
        log.info("manifest %s from %s: reconciliation %s", row.manifest_id, row.sender_org, row.state.value)
        return True

    # -- a user's decision ----------------------------------------------------------------------------
    async def _waiting(self, manifest_id: CID) -> ReconciliationRow:
        row = await self.db.run(lambda s: s.reconciliation(manifest_id))
        if row is None:
            raise NotFoundError("that study is not in the reconciliation queue")
        if row.state is ReconState.SUPERSEDED:
            raise LocalProtocolError("a later revision of that study superseded it: decide the later one "
                                     f"({row.detail})")
        if row.state is not ReconState.WAITING:
            raise LocalProtocolError(f"that study is not waiting for a decision (it is {row.state.value})")
        found = await self.db.run(lambda s: received_manifest(s, manifest_id))
        if found is not None and found[0] is ManifestState.RECALLED:
            raise LocalProtocolError("the sender recalled that study: there is nothing to forward")
        return row

    async def match(self, manifest_id: CID, user: str, local_id: str | None = None,
                    entered: PatientInput | None = None, override_reason: str = "") -> ReconciliationRow:
        """A user matches a waiting study to a local record (from the table, or entered now). A record whose NHS
        number is not the one the study carries is refused unless `override_reason` says why (audited)."""
        if (local_id is None) == (entered is None):
            raise LocalProtocolError("give either a local record's ID or an entered record")
        override_reason = " ".join(override_reason.split())[:200]
        row = await self._waiting(manifest_id)
        if entered is not None:
            record = check_record(entered, now_ms=self._now_ms(), by=user)
        else:
            found: PatientRecord | None = await self.db.run(lambda s: s.patient(local_id or ""))
            if found is None:
                raise NotFoundError("no local record with that ID in the lookup table")
            record = found
        arriving = {normalise_nhs_number(n) for n in row.nhs_number.split(",")} - {""}
        mismatch = bool(arriving) and normalise_nhs_number(record.nhs_number) not in arriving
        if mismatch and not override_reason:
            raise LocalProtocolError("that local record's NHS number is not the one the study carries: check the "
                                     "patient, or match with an override and its reason")
        matched = replace(row, state=ReconState.MATCHED, local_id=record.local_id, local_issuer=record.issuer,
                          local_name=record.name, local_birth_date=record.birth_date, local_sex=record.sex,
                          decided_by=user, decided_ms=self._now_ms())
        how = "entered by hand" if entered is not None else "picked from the lookup table"
        if mismatch:
            how += f"; OVERRIDE: the record's NHS number differs from the study's, reason: {override_reason}"
        if not await self._record(matched, ReconState.WAITING, f"matched by a user ({how}; was {row.reason})"):
            raise LocalProtocolError("that study was decided meanwhile")
        if self.on_matched is not None:
            await self.on_matched(manifest_id)
        return matched

    async def reject(self, manifest_id: CID, user: str, why: str = "") -> ReconciliationRow:
        """A user refuses a waiting study: it is not forwarded."""
        row = await self._waiting(manifest_id)
        rejected = replace(row, state=ReconState.REJECTED, decided_by=user, decided_ms=self._now_ms(),
                           detail=(why.strip() or row.detail)[:200])
        if not await self._record(rejected, ReconState.WAITING, "rejected by a user; not forwarded"):
            raise LocalProtocolError("that study was decided meanwhile")
        return rejected
