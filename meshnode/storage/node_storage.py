"""A node's storage as one object: block files, metadata, the audit chain head.

    HOME/store/blocks/..   block files (BlockStore)
    HOME/node.db           metadata (SqliteMetadataStore)
    HOME/state/audit-head  newest audit (seq, hash), written after each audit commit,
                           so a truncated log is detected too
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meshnode.files import read_file, write_atomic
from meshnode.storage.audit import AuditEvent, ChainProblem, EventCode, Outcome, verify_chain
from meshnode.storage.blockstore import BlockStore, ScrubResult
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import AddOutcome, InstanceRecord
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.errors import StorageError

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


class NodeStorage:
    def __init__(self, home: Path, metadata: MetadataStore, blocks: BlockStore) -> None:
        self.home = home
        self.metadata = metadata
        self.blocks = blocks
        self.head_path = home / "state" / "audit-head"

    @classmethod
    def open(cls, home: Path) -> NodeStorage:
        if not home.is_dir():
            raise StorageError(f"{home} is not a node folder; run `meshnode init` first")
        (home / "state").mkdir(exist_ok=True)
        blocks = BlockStore(home / "store")
        blocks.recover()
        return cls(home, SqliteMetadataStore(home / "node.db"), blocks)

    def close(self) -> None:
        self.metadata.close()

    # -- audit ------------------------------------------------------------------
    def write_head(self) -> None:
        head = self.metadata.audit_head()
        if head is not None:
            write_atomic(self.head_path, f"{head[0]} {head[1].hex()}\n".encode("ascii"))

    def recorded_head(self) -> tuple[int, bytes] | None:
        if not self.head_path.exists():
            return None
        text = read_file(self.head_path, "audit head", max_bytes=256).decode("ascii", "replace").split()
        try:
            return int(text[0]), bytes.fromhex(text[1])
        except (IndexError, ValueError):
            raise StorageError(f"{self.head_path} is corrupt") from None

    def audit(self, *events: AuditEvent) -> None:
        self.metadata.append_audit(list(events), now_ms())
        self.write_head()

    def block_quarantined(self, cid: CID, found_by: str) -> None:
        """A read found this block corrupt and the block store moved it to quarantine: it is no longer
        present (nothing advertises or counts it) and the alert is audited. For single-threaded callers
        (the CLI); the running node does the same on its database thread (meshnode.node.corruption)."""
        self.metadata.forget_blocks([cid])
        self.audit(corrupt_block_event(cid, found_by, actor=local_actor()))

    def add_instances(self, records: Sequence[InstanceRecord], events: Sequence[AuditEvent]) -> list[AddOutcome]:
        outcomes = self.metadata.add_instances(records, events, now_ms())
        self.write_head()
        return outcomes

    def verify_audit(self) -> tuple[int, list[ChainProblem]]:
        entries = self.metadata.audit_entries()
        problems = verify_chain(entries, self.recorded_head())
        self.audit(AuditEvent(EventCode.AUDIT_LOG_USED, "audit-verify", actor=local_actor(),
                              detail=f"{len(entries)} entries, {len(problems)} problem(s)"))
        return len(entries), problems

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
