"""A node's storage as one object: block files, metadata, the audit chain head.

    HOME/store/blocks/..   block files (BlockStore)
    HOME/node.db           metadata (SqliteMetadataStore)
    HOME/state/audit-head  newest audit (seq, hash), written after audit commits; it only moves
                           forward (meshnode.storage.audit_head), so a truncated log is detected too
    HOME/node.key          signs the audit chain's checkpoints (meshnode.storage.audit_checkpoint)
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.keyfile import load_key_file
from meshnode.storage.audit import AuditEvent, ChainProblem, EventCode, Outcome, verify_chain
from meshnode.storage.audit_checkpoint import checkpoint_problems, sign_checkpoint, tail_vouches
from meshnode.storage.audit_head import AuditAlarm, AuditHeadFile, head_problem
from meshnode.storage.blockstore import BlockStore, ScrubResult
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.conflicts import Incoming
from meshnode.storage.records import AddOutcome, InstanceRecord
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.errors import LocalProtocolError, StorageError
from protocol.keys import SigningKey

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 3600  # a block file younger than this may belong to an ingest still running


def corrupt_block_event(cid: CID, found_by: str, *, actor: str, detail: str = "") -> AuditEvent:
    """The 110113 alert for a stored block found corrupt on read (and quarantined)."""
    by = f" by {found_by}" if found_by else ""
    return AuditEvent(EventCode.SECURITY_ALERT, "corrupt-block-quarantined", Outcome.SERIOUS_FAILURE, actor=actor,
                      detail=f"block {cid} failed its hash check when read{by}; quarantined{detail}"[:300])


def now_ms() -> int:
    return int(time.time() * 1000)


def local_actor() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return "local:unknown"


@dataclass(frozen=True)
class GcResult:
    blocks_removed: int
    bytes_freed: int
    orphans_removed: int


@dataclass(frozen=True)
class Acknowledged:
    head_seq: int
    rebase_from: int
    rebase_to: int
    remaining: list[ChainProblem]  # what an acknowledgement cannot excuse (entries edited in place)


class NodeStorage:
    def __init__(self, home: Path, metadata: MetadataStore, blocks: BlockStore,
                 key: SigningKey | None = None) -> None:
        self.home = home
        self.metadata = metadata
        self.blocks = blocks
        self.key = key
        self.head = AuditHeadFile(home / "state")
        self.head_path = self.head.head_path
        metadata.set_audit_key(key)

    @classmethod
    def open(cls, home: Path) -> NodeStorage:
        if not home.is_dir():
            raise StorageError(f"{home} is not a node folder; run `meshnode init` first")
        (home / "state").mkdir(exist_ok=True)
        blocks = BlockStore(home / "store")
        blocks.recover()
        key_path = home / "node.key"
        key = load_key_file(key_path) if key_path.exists() else None
        return cls(home, SqliteMetadataStore(home / "node.db"), blocks, key)

    def close(self) -> None:
        self.metadata.close()

    # -- audit ------------------------------------------------------------------
    def write_head(self) -> AuditAlarm | None:
        """Move the recorded head forward (never back: a log that went backwards raises an alarm)."""
        return self.head.advance(self.metadata, now_ms())

    def recorded_head(self) -> tuple[int, bytes] | None:
        return self.head.recorded()

    def audit(self, *events: AuditEvent) -> None:
        self.metadata.append_audit(list(events), now_ms())
        self.write_head()

    def block_quarantined(self, cid: CID, found_by: str) -> None:
        """A read found this block corrupt and the block store moved it to quarantine: it is no longer
        present (nothing advertises or counts it) and the alert is audited. For single-threaded callers
        (the CLI); the running node does the same on its database thread (meshnode.node.corruption)."""
        self.metadata.forget_blocks([cid])
        self.audit(corrupt_block_event(cid, found_by, actor=local_actor()))

    def add_instances(self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent],
                      incoming: Sequence[Incoming] | None = None) -> list[AddOutcome]:
        outcomes = self.metadata.add_instances(records, events, now_ms(), incoming)
        self.write_head()
        return outcomes

    def audit_problems(self) -> tuple[int, list[ChainProblem]]:
        """Everything wrong with the log: its chain, the recorded head, an unacknowledged alarm, checkpoints."""
        recorded, alarm = self.head.recorded(), self.head.alarm()  # first: the log is at least as new
        entries, checkpoints, tail = self.metadata.audit_snapshot()
        problems = verify_chain(entries, recorded)
        if alarm is not None:
            problems.insert(0, ChainProblem(alarm.recorded_seq, f"unacknowledged audit alert: {alarm.problem}"
                                                                " (`meshnode audit acknowledge --reason ...`)"))
        problems += checkpoint_problems(entries, checkpoints, tail, self.key.public_key if self.key else None)
        return len(entries), problems

    def audit_alerts(self) -> list[ChainProblem]:
        """The cheap checks, for a status page: an unacknowledged alarm, the node's signature on the newest entry.
        (`audit_problems` checks everything.)"""
        out = []
        alarm = self.head.alarm()
        if alarm is not None:
            out.append(ChainProblem(alarm.recorded_seq, f"unacknowledged audit alert: {alarm.problem}"))
        head, tail = self.metadata.audit_head(), self.metadata.audit_tail()
        if head is not None and self.key is not None:
            if tail is None or not tail.valid_for(self.key.public_key):
                out.append(ChainProblem(head[0], "the newest entry has no valid signed checkpoint"))
            elif (tail.seq, tail.hash) != head:
                out.append(ChainProblem(min(tail.seq, head[0]) + 1, f"the node's signatures end at entry "
                                                                    f"{tail.seq} but the log at entry {head[0]}"))
        return out

    def verify_audit(self) -> tuple[int, list[ChainProblem]]:
        count, problems = self.audit_problems()
        if problems:
            event = AuditEvent(EventCode.SECURITY_ALERT, "audit-verify", Outcome.SERIOUS_FAILURE, actor=local_actor(),
                               detail=f"{count} entries, {len(problems)} problem(s); first: {problems[0].problem}"[:300])
        else:
            event = AuditEvent(EventCode.AUDIT_LOG_USED, "audit-verify", actor=local_actor(),
                               detail=f"{count} entries, 0 problem(s)")
        self.audit(event)
        if not problems:
            self.checkpoint()  # a verified log is signed at its head
        return count, problems

    def checkpoint(self) -> bool:
        """Keep a checkpoint at the log's head if it is newer than the last one, there is no unacknowledged
        alarm, and the node's own tail signature is on that head (never sign a chain changed under the node)."""
        head = self.metadata.audit_head()
        if self.key is None or head is None or self.head.alarm() is not None:
            return False
        if not tail_vouches(self.metadata.audit_tail(), head, self.key):
            return False
        if any(c.seq >= head[0] for c in self.metadata.audit_checkpoints()[-1:]):
            return False
        self.metadata.add_audit_checkpoint(sign_checkpoint(self.key, head[0], head[1], now_ms()))
        return True

    def acknowledge_audit(self, reason: str, actor: str) -> Acknowledged:
        """An operator accepts the log as it now is after a truncation or rewrite alert.

        Audited (110113, success, with the reason), then signed: a rebase checkpoint at the new head
        supersedes the earlier checkpoints the log no longer passes through, and the head file and
        alarm are reset. Entries whose content no longer matches their hash stay reported.
        """
        if self.key is None:
            raise StorageError("acknowledging an audit alert needs the node key (node.key)")
        reason = reason.strip()
        if not reason:
            raise LocalProtocolError("say why: --reason is required")
        with self.head.locked():
            recorded, alarm = self.head.recorded(), self.head.alarm()
            entries, checkpoints, tail = self.metadata.audit_snapshot()
            head_issue = head_problem(self.metadata, recorded, self.metadata.audit_head())
            checkpoint_issues = checkpoint_problems(entries, checkpoints, tail, self.key.public_key)
            if alarm is None and head_issue is None and not checkpoint_issues:
                raise LocalProtocolError("there is no audit alert to acknowledge")
            seqs = [p.seq for p in checkpoint_issues] + ([recorded[0]] if recorded and (alarm or head_issue) else [])
            seqs += [alarm.recorded_seq] if alarm and alarm.recorded_seq else []
            rebase_from, rebase_to = (max(1, min(seqs)), max(seqs)) if seqs else (1, 1)
            missing = [p.seq for p in checkpoint_issues if p.problem.startswith("no valid signed checkpoint")]
            event = AuditEvent(
                EventCode.SECURITY_ALERT, "audit-alert-acknowledged", actor=actor,
                detail=(f"entries {rebase_from}..{rebase_to} accepted as they are now: "
                        f"{alarm.problem if alarm else 'checkpoints no longer match'}; reason: {reason}")[:600])
            head = self.metadata.append_audit_rebased([event], now_ms(), self.key, rebase_from, rebase_to, missing)
            self.head.rebase(head)
        log.warning("audit alert acknowledged by %s: entries %d..%d accepted", actor, rebase_from, rebase_to)
        remaining = self.audit_problems()[1]
        return Acknowledged(head[0], rebase_from, rebase_to, remaining)

    # -- maintenance --------------------------------------------------------------
    def gc(self, *, orphan_grace_s: int = ORPHAN_GRACE_S) -> GcResult:
        """Delete blocks nothing live references, and block files no metadata knows (after a grace period)."""
        now = time.time()
        garbage = self.metadata.unreferenced_blocks(int(now))
        freed = 0
        for cid in garbage:
            try:
                freed += self.blocks.size_of(cid)
            except StorageError:
                pass
            self.blocks.delete(cid)
        self.metadata.forget_blocks(garbage)
        candidates = []
        for item in self.blocks.iter_cids():
            if isinstance(item, str) or self.blocks.path_of(item).stat().st_mtime > now - orphan_grace_s:
                continue
            candidates.append(item)
        known = self.metadata.present_blocks(candidates)
        orphans = 0
        for cid in candidates:
            if cid not in known:
                freed += self.blocks.size_of(cid)
                self.blocks.delete(cid)
                orphans += 1
        result = GcResult(len(garbage), freed, orphans)
        self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "gc", actor=local_actor(),
                              detail=f"{result.blocks_removed} blocks, {result.orphans_removed} orphans, "
                                     f"{result.bytes_freed} bytes"))
        return result

    def scrub(self) -> ScrubResult:
        result = self.blocks.scrub()
        if result.corrupt:
            self.metadata.forget_blocks(list(result.corrupt))
        self.audit(AuditEvent(
            EventCode.SECURITY_ALERT if result.corrupt else EventCode.APPLICATION_ACTIVITY, "scrub",
            actor=local_actor(),
            detail=f"{result.checked} checked, {len(result.corrupt)} corrupt quarantined, {len(result.stray)} stray"))
        return result
