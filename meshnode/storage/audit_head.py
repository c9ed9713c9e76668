"""The audit chain's recorded head, kept outside the database, that only moves forward.

    HOME/state/audit-head   "SEQ HASH": the newest entry seen, written after audit commits
    HOME/state/audit-alarm  JSON: an unacknowledged truncation or rewrite (see below)
    HOME/state/audit-head.lock

`advance` moves the head to the log's newest entry only when the log still
passes through the recorded one. When the log is shorter than the recorded
head, or holds a different entry at its seq, the head stays where it was, a
Security Alert (110113) is appended and the alarm file written: `audit verify`
fails from then on (the frozen head no longer matches, and the alarm is
reported) until an operator runs `meshnode audit acknowledge`. Ordinary
events keep being recorded meanwhile; only one alert is raised per alarm.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from common.files import exclusive_lock, read_file, write_atomic
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from protocol.errors import StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditAlarm:
    detected_ms: int
    recorded_seq: int
    recorded_hash: str
    log_seq: int
    problem: str


def head_problem(metadata: MetadataStore, recorded: tuple[int, bytes] | None,
                 current: tuple[int, bytes] | None) -> str | None:
    """Why the log no longer passes through the recorded head, or None when it does."""
    if recorded is None:
        return None
    seq, digest = recorded
    have = current[0] if current else 0
    if have < seq:
        return f"entry {seq} was recorded as the head but the log now ends at entry {have} (truncated)"
    at = metadata.audit_range(seq - 1, 1)
    if not at or at[0].seq != seq or at[0].hash != digest:
        return f"entry {seq} is not the entry recorded as the head (log truncated and refilled, or rewritten)"
    return None


class AuditHeadFile:
    def __init__(self, state_dir: Path) -> None:
        self.head_path = state_dir / "audit-head"
        self.alarm_path = state_dir / "audit-alarm"
        self.lock_path = state_dir / "audit-head.lock"

    def locked(self) -> AbstractContextManager[None]:
        """One writer at a time across processes (the node and a CLI command)."""
        return exclusive_lock(self.lock_path)

    def recorded(self) -> tuple[int, bytes] | None:
        if not self.head_path.exists():
            return None
        text = read_file(self.head_path, "audit head", max_bytes=256).decode("ascii", "replace").split()
        try:
            seq, digest = int(text[0]), bytes.fromhex(text[1])
        except (IndexError, ValueError):
            raise StorageError(f"{self.head_path} is corrupt") from None
        if seq < 1 or len(digest) != 32:
            raise StorageError(f"{self.head_path} is corrupt")
        return seq, digest

    def alarm(self) -> AuditAlarm | None:
        if not self.alarm_path.exists():
            return None
        raw = read_file(self.alarm_path, "audit alarm", max_bytes=64 * 1024)
        try:
            data = json.loads(raw)
            return AuditAlarm(int(data["detected_ms"]), int(data["recorded_seq"]), str(data["recorded_hash"]),
                              int(data["log_seq"]), str(data["problem"]))
        except (ValueError, KeyError, TypeError):
            # unreadable is still an alarm: it never silently clears
            return AuditAlarm(0, 0, "", 0, f"{self.alarm_path} is unreadable")

    def _write_head(self, head: tuple[int, bytes]) -> None:
        write_atomic(self.head_path, f"{head[0]} {head[1].hex()}\n".encode("ascii"))

    def advance(self, metadata: MetadataStore, now_ms: int) -> AuditAlarm | None:
        """Move the recorded head forward to the log's newest entry; a new alarm if the log went backwards."""
        with self.locked():
            recorded = self.recorded()
            pending = self.alarm()
            current = metadata.audit_head()
            problem = head_problem(metadata, recorded, current)
            if problem is None or recorded is None:
                if pending is None and current is not None and (recorded is None or current[0] > recorded[0]):
                    self._write_head(current)
                return None
            if pending is not None:
                return None  # raised once; the head stays frozen until acknowledged
            alarm = AuditAlarm(now_ms, recorded[0], recorded[1].hex(), current[0] if current else 0, problem)
            write_atomic(self.alarm_path, json.dumps(asdict(alarm), sort_keys=True).encode("utf-8"), mode=0o600)
            metadata.append_audit([AuditEvent(EventCode.SECURITY_ALERT, "audit-log-truncated",
                                              Outcome.SERIOUS_FAILURE, actor="meshnode", detail=problem[:300])],
                                  now_ms)
            log.error("audit log went backwards: %s; the recorded head stays at entry %d until an operator runs "
                      "`meshnode audit acknowledge`", problem, recorded[0])
            return alarm

    def rebase(self, head: tuple[int, bytes]) -> None:
        """After an operator's acknowledgement: the head is the log's again, the alarm cleared."""
        self._write_head(head)
        try:
            self.alarm_path.unlink()
        except FileNotFoundError:
            pass
