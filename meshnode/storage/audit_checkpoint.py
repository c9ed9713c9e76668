"""Signed checkpoints of the audit chain, and the export spool they feed.

A checkpoint is the node key's Ed25519 signature over `LABEL || canonical CBOR
of {seq, hash, at, rebase_from, rebase_to}`: "the audit chain's entry `seq`
has hash `hash`". Because every entry's hash covers the one before it, a valid
checkpoint at seq S vouches for entries 1..S; rebuilding the chain after
editing any of them (new hashes all the way up, a new head file) needs a new
signature the attacker cannot make without the key.

Every append signs, in its own transaction, the new newest entry (the
"tail", one row replaced each time: ~15 us) and keeps a checkpoint at each
multiple of CHECKPOINT_EVERY; `audit verify` and the running node (every few
minutes) keep one at the head too. `verify` requires the tail at the log's
newest entry and a kept checkpoint at every multiple of CHECKPOINT_EVERY from
the first one on, so deleting checkpoints is detected as well as rewriting
entries. An append signs only when the node's tail signature is on the entry
it follows: the node never vouches for a chain that changed under it (a node
whose log predates checkpoints is signed once an operator accepts it with
`meshnode audit acknowledge`: unsigned looks the same as signatures deleted).

An operator who acknowledges a truncation alert signs a rebase checkpoint:
checkpoints made before it (by signed time) for entries in
rebase_from..rebase_to are superseded, the ones the truncated log no longer
passes through.

Every checkpoint and every Security Alert entry is also queued in the export
spool (same transaction), for the audit repository (meshnode.audit_export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from meshnode.storage.audit import AuditEntry, ChainProblem, EventCode
from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.errors import MeshError
from protocol.keys import PublicKey, SigningKey

LABEL = "dicom-mesh/audit-checkpoint/v1"
CHECKPOINT_EVERY = 64


@dataclass(frozen=True)
class AuditCheckpoint:
    seq: int
    hash: bytes
    at_ms: int
    signature: bytes
    rebase_from: int = 0  # 0: an ordinary checkpoint
    rebase_to: int = 0

    def signing_input(self) -> bytes:
        return signing_input(self.seq, self.hash, self.at_ms, self.rebase_from, self.rebase_to)

    def valid_for(self, key: PublicKey) -> bool:
        try:
            key.verify(self.signing_input(), self.signature)
        except MeshError:
            return False
        return True

    def supersedes(self, other: AuditCheckpoint) -> bool:
        return (self.rebase_from > 0 and other.at_ms <= self.at_ms
                and self.rebase_from <= other.seq <= self.rebase_to and other is not self)


def signing_input(seq: int, digest: bytes, at_ms: int, rebase_from: int, rebase_to: int) -> bytes:
    body: dict[CborKey, CborValue] = {"seq": seq, "hash": digest, "at": at_ms, "rebase_from": rebase_from, "rebase_to": rebase_to}
    return LABEL.encode("ascii") + cbor.encode(body)


def sign_checkpoint(key: SigningKey, seq: int, digest: bytes, at_ms: int,
                    rebase_from: int = 0, rebase_to: int = 0) -> AuditCheckpoint:
    sig = key.sign(signing_input(seq, digest, at_ms, rebase_from, rebase_to))
    return AuditCheckpoint(seq, digest, at_ms, sig, rebase_from, rebase_to)


def tail_vouches(tail: AuditCheckpoint | None, last: tuple[int, bytes] | None, key: SigningKey | None,
                 trusted: AuditCheckpoint | None = None) -> bool:
    """May the node sign entries appended after `last`? Only when its own tail signature is on `last`, or
    the log is empty: it never vouches for a chain changed under it. A log that was never signed (kept
    before checkpoints existed) looks exactly like one whose signatures were deleted, so the node does
    not sign it on its own either: `meshnode audit acknowledge` does, as an audited operator decision.
    `trusted`: the tail this process itself wrote last; finding exactly it saves checking the signature."""
    if key is None:
        return False
    if last is None:
        return tail is None  # a new, empty log
    if tail is None:
        return False  # never signed, or its signatures deleted: only an operator can accept it (acknowledge)
    return tail.seq == last[0] and tail.hash == last[1] and (tail == trusted or tail.valid_for(key.public_key))


def due_checkpoints(entries: list[AuditEntry], vouched: bool, have_any: bool, key: SigningKey | None,
                    now_ms: int) -> tuple[list[AuditCheckpoint], AuditCheckpoint | None]:
    """What to sign after appending `entries`: a kept checkpoint at each multiple of CHECKPOINT_EVERY
    (and at the last entry when the log had none at all), and the new tail (the newest entry)."""
    if key is None or not entries or not vouched:
        return [], None
    kept = [sign_checkpoint(key, e.seq, e.hash, now_ms) for e in entries if e.seq % CHECKPOINT_EVERY == 0]
    if not have_any and not kept:
        kept.append(sign_checkpoint(key, entries[-1].seq, entries[-1].hash, now_ms))
    return kept, sign_checkpoint(key, entries[-1].seq, entries[-1].hash, now_ms)


def rebased_checkpoints(key: SigningKey, head: AuditEntry, hashes: dict[int, bytes], rebase_from: int,
                        rebase_to: int, now_ms: int) -> list[AuditCheckpoint]:
    """An acknowledgement's signatures: the accepted entries `hashes`, the rebase checkpoint at `head`,
    and last the new tail."""
    made = [sign_checkpoint(key, seq, digest, now_ms) for seq, digest in sorted(hashes.items())]
    made.append(sign_checkpoint(key, head.seq, head.hash, now_ms, max(rebase_from, 1), max(rebase_to, 1)))
    made.append(sign_checkpoint(key, head.seq, head.hash, now_ms))
    return made


def checkpoint_problems(entries: list[AuditEntry], checkpoints: list[AuditCheckpoint],
                        tail: AuditCheckpoint | None, key: PublicKey | None) -> list[ChainProblem]:
    """Every checkpoint that is forged, that the chain does not pass through, or that is missing."""
    if not entries:
        return []
    if key is None:
        return [ChainProblem(0, "no node key: the signed checkpoints cannot be checked")]
    head = entries[-1]
    if tail is None:
        problems = [ChainProblem(head.seq, "the newest entry has no signed checkpoint (deleted, or the log "
                                           "changed under the node)")]
    elif not tail.valid_for(key):
        problems = [ChainProblem(tail.seq, "the newest checkpoint's signature is not the node key's (forged)")]
    elif tail.seq != head.seq:
        problems = [ChainProblem(min(tail.seq, head.seq) + 1, f"the node's signatures end at entry {tail.seq} "
                                                              f"but the log at entry {head.seq}")]
    elif tail.hash != head.hash:
        problems = [ChainProblem(head.seq, "differs from the node's signed newest entry (rewritten)")]
    else:
        problems = []
    hashes = {e.seq: e.hash for e in entries}
    valid = [c for c in checkpoints if c.valid_for(key)]
    for c in checkpoints:
        if c not in valid:
            problems.append(ChainProblem(c.seq, "checkpoint signature is not the node key's (forged)"))
    rebases = [c for c in valid if c.rebase_from]
    live = [c for c in valid if not any(r.supersedes(c) for r in rebases)]
    matched: set[int] = set()
    for c in live:
        if c.seq not in hashes:
            problems.append(ChainProblem(c.seq, f"signed checkpoint at entry {c.seq}, which is missing"))
        elif hashes[c.seq] != c.hash:
            problems.append(ChainProblem(c.seq, "differs from the signed checkpoint (rewritten)"))
        else:
            matched.add(c.seq)
    first = min((c.seq for c in valid), default=0)
    step = CHECKPOINT_EVERY
    for seq in range((first // step + 1) * step, head.seq + 1, step):
        if seq not in matched and seq in hashes:
            problems.append(ChainProblem(seq, "no valid signed checkpoint where one is required (deleted)"))
    return sorted(problems, key=lambda p: p.seq)


# -- the export spool ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SpoolItem:
    id: int
    kind: str  # "entry" | "checkpoint"
    seq: int
    payload: dict[str, object]
    attempts: int = 0


def exported_entries(entries: list[AuditEntry]) -> list[AuditEntry]:
    """The entries that leave the node: every Security Alert."""
    return [e for e in entries if e.event.code is EventCode.SECURITY_ALERT]


def entry_payload(e: AuditEntry) -> bytes:
    return json.dumps({
        "seq": e.seq, "at_ms": e.at_ms, "code": int(e.event.code), "action": e.event.action,
        "outcome": int(e.event.outcome), "actor": e.event.actor, "actor_org": e.event.actor_org,
        "study": e.event.study, "manifest_id": e.event.manifest_id, "detail": e.event.detail,
        "hash": e.hash.hex(),
    }, sort_keys=True).encode("utf-8")


def checkpoint_payload(c: AuditCheckpoint) -> bytes:
    return json.dumps({
        "seq": c.seq, "hash": c.hash.hex(), "at_ms": c.at_ms, "rebase_from": c.rebase_from,
        "rebase_to": c.rebase_to, "signature": c.signature.hex(),
    }, sort_keys=True).encode("utf-8")


def spool_rows(entries: list[AuditEntry], checkpoints: list[AuditCheckpoint]) -> list[tuple[str, int, bytes]]:
    """(kind, seq, payload) in the order they are sent: by seq, an entry before its checkpoint."""
    rows = [("entry", e.seq, entry_payload(e)) for e in exported_entries(entries)]
    rows += [("checkpoint", c.seq, checkpoint_payload(c)) for c in checkpoints]
    return sorted(rows, key=lambda r: (r[1], r[0] == "checkpoint"))


def decode_payload(raw: bytes) -> dict[str, object]:
    value = json.loads(raw.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("spool payload is not an object")
    return value
