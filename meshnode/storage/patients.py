"""The local patient lookup table and the reconciliation queue: records, the store Protocol, the memory store.

`patient_records`: the local records the PACS team maintains (CSV import,
CLI, control API, HTTP), one per local Patient ID, with its NHS number and
demographics. `reconciliations`: one row per received manifest the
reconciliation looked at (meshnode.gateway.reconciler), in one of the states
of `ReconState`. SQLite: meshnode.storage.sqlite_patients (mixed into the
metadata store); memory: `MemoryPatients` below (mixed into the memory store).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshnode.storage.records import InstanceRecord, Source
from protocol.cid import CID
from protocol.reconciliation import Demographics, LocalPatient

#: an instance as a manifest lists it: (SOP Instance UID, sha2-256 of the file)
InstanceKey = tuple[str, bytes]


@dataclass(frozen=True)
class PatientRecord:
    """One row of the local lookup table."""

    local_id: str
    issuer: str
    nhs_number: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    updated_ms: int = 0
    updated_by: str = ""

    def local_patient(self) -> LocalPatient:
        return LocalPatient(self.local_id, self.issuer, self.nhs_number,
                            Demographics(self.name, self.birth_date, self.sex))

    def json(self) -> dict[str, object]:
        return {"local_id": self.local_id, "issuer": self.issuer, "nhs_number": self.nhs_number,
                "name": self.name, "birth_date": self.birth_date, "sex": self.sex,
                "updated_ms": self.updated_ms, "updated_by": self.updated_by}


class ReconState(str, enum.Enum):
    ARRIVED = "arrived"  # the receipt was delivered; the automatic decision is due
    WAITING = "waiting"  # no confident match: a PACS-team user decides
    MATCHED = "matched"  # forwarded under the local record (automatically or by a user)
    REJECTED = "rejected"  # a user refused it: not forwarded
    SUPERSEDED = "superseded"  # a later revision of the same sender's study arrived before a decision: decide that one


@dataclass(frozen=True)
class ReconciliationRow:
    manifest_id: CID
    study_uid: str
    sender_org: str
    state: ReconState
    created_ms: int
    #: as the study arrived
    patient_id: str = ""
    issuer: str = ""
    nhs_number: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    #: why it waits (protocol.reconciliation.Reason value) and which attributes (never values)
    reason: str = ""
    detail: str = ""
    #: the local record chosen (MATCHED)
    local_id: str = ""
    local_issuer: str = ""
    local_name: str = ""
    local_birth_date: str = ""
    local_sex: str = ""
    decided_by: str = ""
    decided_ms: int = 0
    #: what the decision used (meshnode.gateway.reconciler.fingerprint): a later revision carries this row's
    #: match only when its own is the same ("" for rows from before: never carried)
    fingerprint: str = ""

    def json(self) -> dict[str, object]:
        return {"manifest": str(self.manifest_id), "study_uid": self.study_uid, "sender_org": self.sender_org,
                "state": self.state.value, "created_ms": self.created_ms,
                "arriving": {"patient_id": self.patient_id, "issuer": self.issuer, "nhs_number": self.nhs_number,
                             "name": self.name, "birth_date": self.birth_date, "sex": self.sex},
                "reason": self.reason, "detail": self.detail,
                "local": ({"local_id": self.local_id, "issuer": self.local_issuer, "name": self.local_name,
                           "birth_date": self.local_birth_date, "sex": self.local_sex}
                          if self.state is ReconState.MATCHED else None),
                "decided_by": self.decided_by, "decided_ms": self.decided_ms}


class PatientStore(Protocol):
    def put_patients(self, records: Sequence[PatientRecord]) -> int:
        """Insert or replace (by local_id) every record, atomically; returns how many."""
        ...

    def patient(self, local_id: str) -> PatientRecord | None: ...

    def patients(self, nhs_number: str | None = None) -> list[PatientRecord]:
        """All records (by local_id), or those with this NHS number."""
        ...

    def delete_patient(self, local_id: str) -> bool: ...

    def reconciliation(self, manifest_id: CID) -> ReconciliationRow | None: ...

    def reconciliations(self, states: Sequence[ReconState] = ()) -> list[ReconciliationRow]:
        """Rows in these states (all when empty), oldest first."""
        ...

    def add_reconciliation(self, row: ReconciliationRow, instances: Sequence[InstanceKey] = ()) -> bool:
        """Insert unless the manifest has a row, with the instances its manifest lists (what it holds back
        until matched); True when inserted."""
        ...

    def add_reconciliation_instances(self, manifest_id: CID, instances: Sequence[InstanceKey]) -> None:
        """Record more instances against a manifest's reconciliation (a keep-both copy of one of its instances,
        review 2 finding 4): held back with the rest until it is matched. Kept when the manifest's row is added
        later (add_reconciliation adds to them)."""
        ...

    def reconciliation_instances(self, manifest_id: CID) -> set[InstanceKey]:
        """The instances recorded against a manifest's reconciliation."""
        ...

    def update_reconciliation(self, row: ReconciliationRow, expected: ReconState) -> bool:
        """Replace the manifest's row only if it is in state `expected` (a replayed decision changes nothing)."""
        ...

    def study_reconciliations(self, study_uid: str) -> list[ReconciliationRow]:
        """Every row of this study (all its received manifests), oldest first."""
        ...

    def held_instances(self, study_uid: str | None = None) -> set[InstanceKey]:
        """Instances held back by reconciliation (of one study, or all): received instances listed by a
        manifest that arrived, waits, was rejected or superseded, and by no matched one. Local instances and
        what other manifests brought are never held, whatever Study UID they share. DICOMweb and the DIMSE
        query/retrieve SCP do not show them."""
        ...

    def held_studies(self) -> set[str]:
        """Studies every stored instance of which is held back (held_instances): not listed at all; and the
        research copies made here (de-identified copies of a research share, ResearchStore.research_copies),
        which are the mesh's to serve under their research manifest, never a clinical study of this node."""
        ...


class MemoryPatients:
    """PatientStore in dictionaries (part of MemoryMetadataStore)."""

    def __init__(self) -> None:
        self._patients: dict[str, PatientRecord] = {}
        self._reconciliations: dict[CID, ReconciliationRow] = {}
        self._reconciliation_instances: dict[CID, frozenset[InstanceKey]] = {}

    _instances: list[InstanceRecord]  # MemoryMetadataStore's

    def put_patients(self, records: Sequence[PatientRecord]) -> int:
        for r in records:
            self._patients[r.local_id] = r
        return len(records)

    def patient(self, local_id: str) -> PatientRecord | None:
        return self._patients.get(local_id)

    def patients(self, nhs_number: str | None = None) -> list[PatientRecord]:
        return [r for _, r in sorted(self._patients.items())
                if nhs_number is None or r.nhs_number == nhs_number]

    def delete_patient(self, local_id: str) -> bool:
        return self._patients.pop(local_id, None) is not None

    def reconciliation(self, manifest_id: CID) -> ReconciliationRow | None:
        return self._reconciliations.get(manifest_id)

    def reconciliations(self, states: Sequence[ReconState] = ()) -> list[ReconciliationRow]:
        rows = [r for r in self._reconciliations.values() if not states or r.state in states]
        return sorted(rows, key=lambda r: (r.created_ms, r.manifest_id.to_bytes()))

    def add_reconciliation(self, row: ReconciliationRow, instances: Sequence[InstanceKey] = ()) -> bool:
        if row.manifest_id in self._reconciliations:
            return False
        self._reconciliations[row.manifest_id] = row
        self.add_reconciliation_instances(row.manifest_id, instances)
        return True

    def add_reconciliation_instances(self, manifest_id: CID, instances: Sequence[InstanceKey]) -> None:
        self._reconciliation_instances[manifest_id] = \
            self._reconciliation_instances.get(manifest_id, frozenset()) | frozenset(instances)

    def reconciliation_instances(self, manifest_id: CID) -> set[InstanceKey]:
        return set(self._reconciliation_instances.get(manifest_id, ()))

    def update_reconciliation(self, row: ReconciliationRow, expected: ReconState) -> bool:
        current = self._reconciliations.get(row.manifest_id)
        if current is None or current.state is not expected:
            return False
        self._reconciliations[row.manifest_id] = row
        return True

    def study_reconciliations(self, study_uid: str) -> list[ReconciliationRow]:
        return [r for r in self.reconciliations() if r.study_uid == study_uid]

    def held_instances(self, study_uid: str | None = None) -> set[InstanceKey]:
        held: set[InstanceKey] = set()
        shown: set[InstanceKey] = set()
        for m, row in self._reconciliations.items():
            (shown if row.state is ReconState.MATCHED else held).update(self._reconciliation_instances.get(m, ()))
        return {(i.sop_instance_uid, i.digest) for i in self._instances
                if i.source is Source.RECEIVED and (study_uid is None or i.study_uid == study_uid)
                and (i.sop_instance_uid, i.digest) in held - shown}

    def held_studies(self) -> set[str]:
        held = self.held_instances()
        studies = {i.study_uid for i in self._instances if (i.sop_instance_uid, i.digest) in held}
        return studies - {i.study_uid for i in self._instances if (i.sop_instance_uid, i.digest) not in held}
