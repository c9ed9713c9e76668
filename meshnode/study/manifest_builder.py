"""Build the signed-manifest body for a local study from what storage holds."""

from __future__ import annotations

from collections.abc import Sequence

from meshnode.storage.records import InstanceRecord, StudyAttributes
from protocol.errors import LocalProtocolError
from protocol.manifest import InstanceEntry, Manifest, Priority, Purpose, StudySummary


def _clip(value: str, limit: int) -> str:
    cleaned = "".join(c if c >= " " or c == "\t" else " " for c in value)
    return cleaned[:limit]


def summarise(study: StudyAttributes, instances: Sequence[InstanceRecord]) -> StudySummary:
    modalities = sorted({i.series.modality for i in instances if i.series.modality})
    return StudySummary(
        patient_name=_clip(study.patient_name, 324),
        patient_id=_clip(study.patient_id, 64),
        birth_date=_clip(study.birth_date, 8),
        sex=_clip(study.sex, 16),
        modality=_clip("\\".join(modalities), 64),
        study_date=_clip(study.study_date, 8),
        description=_clip(study.description, 256),
        series_count=len({i.series_uid for i in instances}),
        instance_count=len(instances),
    )


def build_manifest(
    instances: Sequence[InstanceRecord],
    *,
    sender_org: str,
    sender_peer: str,
    recipients: Sequence[str],
    priority: Priority,
    purpose: Purpose,
    created_at: int,
    expires_at: int,
    revision: int = 1,
    attention: str = "",
    note: str = "",
) -> Manifest:
    """The manifest of a study: every instance, its digest and its ordered blocks.

    When the same SOP Instance UID was ingested twice with different bytes,
    the most recently stored version is shared (a manifest lists a UID once).
    """
    if not instances:
        raise LocalProtocolError("a manifest needs at least one instance")
    latest: dict[str, InstanceRecord] = {}
    for record in instances:
        latest[record.sop_instance_uid] = record
    chosen = list(latest.values())
    study_uids = {r.study_uid for r in chosen}
    if len(study_uids) != 1:
        raise LocalProtocolError("a manifest covers exactly one study")
    entries = tuple(
        InstanceEntry(
            sop_class_uid=r.sop_class_uid,
            sop_instance_uid=r.sop_instance_uid,
            series_uid=r.series_uid,
            transfer_syntax=r.transfer_syntax,
            size=r.size,
            digest=r.digest,
            blocks=r.blocks,
        )
        for r in chosen
    )
    return Manifest(
        study_uid=chosen[0].study_uid,
        sender_org=sender_org,
        sender_peer=sender_peer,
        recipients=tuple(sorted(set(recipients))),
        priority=priority,
        purpose=purpose,
        created_at=created_at,
        expires_at=expires_at,
        revision=revision,
        summary=summarise(chosen[0].study, chosen),
        instances=entries,
        attention=attention,
        note=note,
    )
