"""The hash-chained audit log (DICOM PS3.15 A.5 event codes).

Each entry carries the hash of the previous one: hash = sha256(prev_hash ||
canonical CBOR of the entry's fields). Editing, deleting or reordering any
entry breaks the chain at that point, and `verify_chain` says where.
Entries never carry patient names or IDs: studies appear as hashed UIDs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

from protocol import cbor

GENESIS = bytes(32)


class EventCode(IntEnum):
    APPLICATION_ACTIVITY = 110100
    AUDIT_LOG_USED = 110101
    INSTANCES_ACCESSED = 110103
    INSTANCES_TRANSFERRED = 110104
    EXPORT = 110106
    IMPORT = 110107
    PATIENT_RECORD = 110110
    QUERY = 110112
    SECURITY_ALERT = 110113
    USER_AUTHENTICATION = 110114


class Outcome(IntEnum):
    """DICOM EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class AuditEvent:
    """What a caller records; storage assigns seq, time and hashes."""

    code: EventCode
    action: str
    outcome: Outcome = Outcome.SUCCESS
    actor: str = ""
    actor_org: str = ""
    study: str = ""  # hashed study UID (records.hash_uid), never the UID in clear
    manifest_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at_ms: int
    event: AuditEvent
    prev_hash: bytes
    hash: bytes


def entry_hash(seq: int, at_ms: int, event: AuditEvent, prev_hash: bytes) -> bytes:
    body = cbor.encode(
        {
            "seq": seq,
            "at": at_ms,
            "code": int(event.code),
            "action": event.action,
            "outcome": int(event.outcome),
            "actor": event.actor,
            "actor_org": event.actor_org,
            "study": event.study,
            "manifest": event.manifest_id,
            "detail": event.detail,
        }
    )
    return hashlib.sha256(prev_hash + body).digest()


def chain(last_seq: int, last_hash: bytes, events: list[AuditEvent], at_ms: int) -> list[AuditEntry]:
    """New entries following the entry (last_seq, last_hash); (0, GENESIS) for an empty log."""
    seq, prev = last_seq, last_hash
    out = []
    for event in events:
        seq += 1
        digest = entry_hash(seq, at_ms, event, prev)
        out.append(AuditEntry(seq, at_ms, event, prev, digest))
        prev = digest
    return out


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


def verify_chain(entries: list[AuditEntry], head: tuple[int, bytes] | None = None) -> list[ChainProblem]:
    """Every place the chain is broken. `head` is the last (seq, hash) recorded outside the log."""
    problems: list[ChainProblem] = []
    prev_hash, expected_seq = GENESIS, 1
    for entry in entries:
        if entry.seq != expected_seq:
            kind = "missing (deleted)" if entry.seq > expected_seq else "out of order"
            problems.append(ChainProblem(entry.seq, f"entry {expected_seq} {kind}: found {entry.seq} instead"))
        if entry.prev_hash != prev_hash:
            problems.append(ChainProblem(entry.seq, "does not follow the entry before it (deleted or reordered)"))
        if entry_hash(entry.seq, entry.at_ms, entry.event, entry.prev_hash) != entry.hash:
            problems.append(ChainProblem(entry.seq, "content does not match its hash (edited)"))
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    if head is not None:
        last_seq, last_hash = head
        if not entries or entries[-1].seq < last_seq:
            have = entries[-1].seq if entries else 0
            problems.append(ChainProblem(have + 1, f"entries {have + 1}..{last_seq} are missing (log truncated)"))
        else:
            at_head = next((e for e in entries if e.seq == last_seq), None)
            if at_head is None or at_head.hash != last_hash:
                problems.append(ChainProblem(last_seq, "entry differs from the recorded chain head"))
    return problems
