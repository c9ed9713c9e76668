"""The conflict queue: instances that came with a SOP Instance UID the node holds with other bytes.

The decision what to do with a newcomer is protocol.conflict.decide (per route, per [[pacs]]
destination, node default for file ingest). A held newcomer (policy reject or keep-both) is a row
here with its whole instance record; its blocks are durable and referenced by the row
(`conflict_blocks`), so gc keeps them, but it is in no study, no search and no manifest until a
human (or the keep-both policy) decides. Two kinds:

- `store`: arrived at this node (DIMSE, STOW-RS, file ingest);
- `pacs:<destination>`: a received manifest revision replaces an instance the node already forwarded to
  that PACS, and the destination's on_replace is `hold` (meshnode.gateway.forward_conflicts).

Every row keeps both digests (sha256 of the stored version and of the newcomer). A decided row stays
(the history: who decided what, when); deciding it again is a ConflictError that changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.records import (
    AddOutcome,
    InstanceRecord,
    SeriesAttributes,
    Source,
    StudyAttributes,
    hash_uid,
)
from protocol.cid import CID
from protocol.conflict import (
    DEFAULT_POLICY,
    ConflictError,
    ConflictPolicy,
    ConflictState,
    Decision,
)
from protocol.errors import LocalProtocolError, MeshError, StorageError
from protocol.lifecycle import ManifestState

KIND_STORE = "store"
PACS_KIND_PREFIX = "pacs:"


@dataclass(frozen=True)
class Incoming:
    """How one instance given to add_instances came: the conflict policy in force, and for the queue, from
    whom and on which route."""

    policy: ConflictPolicy = DEFAULT_POLICY
    source: str = ""
    route: str = ""
    manifest_id: str = ""  # a received manifest's instance: that manifest (a held row keeps it)


def received_revision(sender_org: str, manifest_id: str) -> Incoming:
    """A received manifest's instances: the sender's signed revision supersedes its own earlier version of an
    instance of the same study (its lineage); any other instance with the UID makes it a held conflict."""
    return Incoming(ConflictPolicy.REPLACE, f"manifest {manifest_id} from {sender_org}", "", manifest_id)


def held_by_manifest(store: ConflictStore) -> dict[str, int]:
    """Pending held instances (kind store) per received manifest ID (text)."""
    out: dict[str, int] = {}
    for row in store.conflicts(ConflictState.PENDING):
        if row.kind == KIND_STORE and row.manifest_id:
            out[row.manifest_id] = out.get(row.manifest_id, 0) + 1
    return out


def held_among(store: ConflictStore, records: Sequence[InstanceRecord], outcomes: Sequence[AddOutcome]) -> int:
    """How many of a received manifest's `records` are held in the conflict queue after add_instances gave
    `outcomes`: held now, or a duplicate of a newcomer still pending (a later revision sending it again)."""
    pending = {(r.sop_instance_uid, r.newcomer_digest) for r in store.conflicts(ConflictState.PENDING)
               if r.kind == KIND_STORE}
    return sum(1 for rec, o in zip(records, outcomes) if o is AddOutcome.CONFLICT
               or (o is AddOutcome.DUPLICATE and (rec.sop_instance_uid, rec.digest) in pending))


def held_detail(held: int) -> str:
    """What the inbox and the arrival event say of a received study with held instances ("" : none)."""
    if not held:
        return ""
    return (f"{held} instance(s) held: their SOP Instance UID is held here with other bytes; not available "
            "locally (search, retrieval, PACS forward) until a person decides (meshnode conflicts)")


#: a received manifest's instances (without the manifest named): see received_revision
RECEIVED_REVISION = Incoming(ConflictPolicy.REPLACE, "received manifest")

Lineage = tuple[str, str, str]


def lineage(rec: InstanceRecord) -> Lineage:
    """Who an instance belongs to: (source, origin, study). Ingested here: ("local", "", study); received:
    ("received", sender org, study). Only a newcomer of the same lineage may replace a stored version."""
    return rec.source.value, rec.origin, rec.study_uid


def other_lineage(newcomer: InstanceRecord, stored: Sequence[Lineage]) -> str:
    """Why the stored versions of a newcomer's UID are not its lineage ("" when all are): for the log and the
    audit (organisation codes only, no patient data)."""
    mine = lineage(newcomer)
    for source, origin, study in stored:
        if (source, origin, study) == mine:
            continue
        held = "from local ingest" if source == Source.LOCAL.value else f"from organisation {origin or 'unknown'}"
        return f"the UID is held here {held}" + (" in another study" if study != newcomer.study_uid else "")
    return ""


def own_lineage(records: Sequence[InstanceRecord], origin: str | None = None) -> list[InstanceRecord]:
    """The instances of a study this node signs a manifest of: one lineage only. Those ingested here when
    there are any (a received instance that reused the Study UID of a study of this node's is never announced
    under this node's signature; naming an `origin` then is refused). A received study shared onward: its
    one origin's instances; when it holds several origins' (one reused another's Study UID), the caller
    names the origin, else LocalProtocolError naming them (organisation codes only)."""
    local = [r for r in records if r.source is Source.LOCAL]
    if local:
        if origin:
            raise LocalProtocolError("this study holds instances ingested here: only they are shared "
                                     f"(not organisation {origin}'s)")
        return local
    origins = sorted({r.origin for r in records})
    if origin:
        if origin not in origins:
            raise LocalProtocolError(f"this study holds no instances from organisation {origin} "
                                     f"(from: {', '.join(o or 'unknown' for o in origins)})")
        return [r for r in records if r.origin == origin]
    if len(origins) > 1:
        raise LocalProtocolError("this received study holds instances from several organisations ("
                                 f"{', '.join(o or 'unknown' for o in origins)}): name the one to share onward "
                                 "(meshnode share --origin ORG)")
    return list(records)


@dataclass(frozen=True)
class ConflictRow:
    conflict_id: int
    kind: str  # "store" or "pacs:<destination>"
    sop_instance_uid: str
    study_uid: str
    existing_digest: bytes  # sha256 of the version the node (or the PACS) holds
    newcomer_digest: bytes  # sha256 of the version that came
    policy: ConflictPolicy
    state: ConflictState
    source: str  # who sent the newcomer (a calling AE and address, "ingest", a manifest)
    route: str  # the route it came on ("" : none)
    created_ms: int
    newcomer: InstanceRecord | None = None  # the held instance (kind store)
    decided_ms: int | None = None
    decided_by: str = ""
    new_uid: str = ""  # kept both: the newcomer's new SOP Instance UID
    manifest_id: str = ""  # kind pacs: the received manifest whose instance is held

    def json(self) -> dict[str, object]:
        """As the operator sees it (CLI --json, control API, HTTP): UIDs in clear for the staff, digests in hex."""
        return {"id": self.conflict_id, "kind": self.kind, "sop_instance_uid": self.sop_instance_uid,
                "uid_hash": hash_uid(self.sop_instance_uid), "study_uid": self.study_uid,
                "existing_sha256": self.existing_digest.hex(), "newcomer_sha256": self.newcomer_digest.hex(),
                "newcomer_size": self.newcomer.size if self.newcomer else None,
                "newcomer_blocks": [str(c) for c in self.newcomer.blocks] if self.newcomer else [],
                "policy": self.policy.value, "state": self.state.value, "source": self.source,
                "route": self.route, "created_ms": self.created_ms, "decided_ms": self.decided_ms,
                "decided_by": self.decided_by, "new_uid": self.new_uid, "manifest_id": self.manifest_id}


class ConflictStore(Protocol):
    """Part of MetadataStore (both implementations). Held newcomers are added by add_instances(policies=...)."""

    def conflicts(self, state: ConflictState | None = None) -> list[ConflictRow]:
        """Every conflict (in this state, if given), oldest first."""
        ...

    def conflict(self, conflict_id: int) -> ConflictRow | None: ...

    def superseded_digests(self, sop_instance_uid: str) -> list[bytes]:
        """Digests of versions of this UID that a newer one replaced here (kind store, state replaced)."""
        ...

    def add_forward_conflict(self, row: ConflictRow, events: Sequence[AuditEvent], now_ms: int) -> int | None:
        """A held PACS forward (kind pacs:<destination>); None when the same one is held already."""
        ...

    def decide_conflict(self, conflict_id: int, decision: Decision, actor: str, events: Sequence[AuditEvent],
                        now_ms: int, renamed: InstanceRecord | None = None,
                        expected_existing: bytes | None = None) -> ConflictRow:
        """Apply a decision on a pending conflict, with its audit entries, atomically: REPLACE supersedes
        the stored instance(s) of the UID with the newcomer (kind store), KEEP_BOTH adds `renamed` (the
        newcomer under its new UID, blocks durable), DISCARD drops the newcomer. ConflictError (nothing
        changed) if there is no such conflict, it was decided already, the decision does not apply, its
        manifest was recalled, or the stored version is not the one the conflict shows (or, when given,
        `expected_existing`, the digest the deciding user saw): compare-and-set (check_current)."""
        ...


def conflict_alert(row: ConflictRow, what: str, actor: str = "") -> AuditEvent:
    """The audit entry of a conflict (110113 Security Alert): hashed UIDs, both digests."""
    outcome = Outcome.MINOR_FAILURE if row.state is ConflictState.PENDING else Outcome.SUCCESS
    return AuditEvent(EventCode.SECURITY_ALERT, "sop-instance-uid-conflict", outcome, actor=actor or row.source,
                      study=hash_uid(row.study_uid), manifest_id=row.manifest_id,
                      detail=f"{what}: {hash_uid(row.sop_instance_uid)} ({row.kind}) stored sha256 "
                             f"{row.existing_digest.hex()}, newcomer sha256 {row.newcomer_digest.hex()}"
                             + (f", policy {row.policy.value}" if row.state is ConflictState.PENDING else "")
                             + (f", new UID {hash_uid(row.new_uid)}" if row.new_uid else ""))


def check_applicable(row: ConflictRow | None, conflict_id: int, decision: Decision,
                     renamed: InstanceRecord | None) -> ConflictRow:
    """The pending row a decision applies to; ConflictError otherwise (both stores call it first)."""
    if row is None:
        raise ConflictError(f"no conflict {conflict_id}; nothing changed")
    if row.state is not ConflictState.PENDING:
        raise ConflictError(f"conflict {conflict_id} was decided already ({row.state.value}"
                            f"{' by ' + row.decided_by if row.decided_by else ''}); nothing changed")
    if decision is Decision.KEEP_BOTH:
        if row.kind != KIND_STORE:
            raise ConflictError(f"conflict {conflict_id}: a PACS holds one version per UID; keep-both applies "
                                "to instances arriving at this node only")
        if renamed is None or renamed.sop_instance_uid == row.sop_instance_uid:
            raise ConflictError(f"conflict {conflict_id}: keep-both needs the newcomer under a new UID")
    return row


def check_current(row: ConflictRow, decision: Decision, stored: Sequence[bytes] | None,
                  manifest_state: ManifestState | None, expected_existing: bytes | None) -> None:
    """Inside the decision's transaction, after check_applicable: ConflictError (nothing changed) when
    - the conflict's manifest was recalled by its sender (only DISCARD applies: nothing is accepted from a
      withdrawn manifest, and nothing is requeued);
    - the deciding user saw another stored version (`expected_existing`, compare-and-set);
    - the stored version is no longer the one the conflict shows (`stored`: the digests stored under the
      UID now, kind store; a decision re-bases the others of its UID, so this is a version gone since).
    DISCARD needs no stored version: it only drops the newcomer."""
    n = row.conflict_id
    if decision is Decision.DISCARD:
        return
    if manifest_state is ManifestState.RECALLED:
        raise ConflictError(f"conflict {n}: its manifest was recalled by its sender; only discard applies; "
                            "nothing changed")
    if expected_existing is not None and expected_existing != row.existing_digest:
        raise ConflictError(f"conflict {n}: the stored version is sha256 {row.existing_digest.hex()}, not the one "
                            f"you saw ({expected_existing.hex()}); look again; nothing changed")
    if stored is not None and row.existing_digest not in stored:
        now = ", ".join(d.hex() for d in stored) or "none"
        raise ConflictError(f"conflict {n}: the stored version changed since it was held (stored sha256 now: "
                            f"{now}); nothing changed")


# -- the held record as JSON (SQLite keeps it in one column) -------------------------------------------


def record_to_json(rec: InstanceRecord) -> str:
    st, se = rec.study, rec.series
    return json.dumps({
        "sop": rec.sop_instance_uid, "class": rec.sop_class_uid, "ts": rec.transfer_syntax, "size": rec.size,
        "digest": rec.digest.hex(), "blocks": [str(c) for c in rec.blocks], "sizes": list(rec.block_sizes),
        "number": rec.instance_number, "rows": rec.rows, "columns": rec.columns, "frames": rec.frames,
        "flags": list(rec.flags), "source": rec.source.value, "origin": rec.origin,
        "series": [se.series_uid, se.modality, se.series_number, se.description],
        "study": [st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date,
                  st.study_time, st.description, st.accession],
    }, sort_keys=True)


def record_from_json(text: str) -> InstanceRecord:
    try:
        d = json.loads(text)
        se, st = d["series"], d["study"]
        return InstanceRecord(
            sop_instance_uid=str(d["sop"]), sop_class_uid=str(d["class"]),
            series=SeriesAttributes(str(se[0]), str(se[1]), None if se[2] is None else int(se[2]), str(se[3])),
            study=StudyAttributes(*(str(v) for v in st)), transfer_syntax=str(d["ts"]), size=int(d["size"]),
            digest=bytes.fromhex(d["digest"]), blocks=tuple(CID.parse(c) for c in d["blocks"]),
            block_sizes=tuple(int(n) for n in d["sizes"]), instance_number=d["number"], rows=d["rows"],
            columns=d["columns"], frames=d["frames"], flags=tuple(str(f) for f in d["flags"]),
            source=Source(d["source"]), origin=str(d.get("origin", "")))
    except (ValueError, KeyError, IndexError, TypeError, MeshError) as exc:
        raise StorageError(f"unreadable held instance record: {exc}") from None
