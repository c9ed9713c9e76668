"""Research shares at the sender: the link from a de-identified copy to the original study, the shares
held for a human decision (pixel risk), and each project's re-link table (pseudonym -> original).

Part of MetadataStore (SQLite: sqlite_research.py; memory: MemoryResearchStore below). None of it ever
leaves the sender: a recipient sees only the research manifest and the de-identified instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from protocol.cid import CID


class ResearchState(str, Enum):
    HELD = "held"  # instances at pixel risk: waiting for a human (release with/without them, or refuse)
    #: the intent, written before the first copy is stored: the copy's study UID is known (and hidden from local
    #: queries); a restart finds it and records it as failed (the partial copy stays linked, nothing announced)
    SENDING = "sending"
    SHARED = "shared"  # the de-identified copy was ingested and its manifest announced (one transaction)
    REFUSED = "refused"  # by route policy (pixel_risk = "refuse") or by a human
    FAILED = "failed"  # de-identifying, storing or announcing failed: nothing announced; the partial copy linked


@dataclass(frozen=True)
class ResearchShareRow:
    share_id: str
    original_study_uid: str
    project: str
    #: the share as asked: {"to": [...], "priority": ..., "profile": DeidProfile.to_json()}
    request: str
    state: ResearchState
    created_ms: int
    #: JSON list of [hashed SOP Instance UID, reason] of the instances at pixel risk
    reasons: str = "[]"
    research_study_uid: str = ""
    manifest_id: CID | None = None
    decided_by: str = ""
    decision: str = ""
    decided_ms: int = 0


RelinkEntry = tuple[str, str, str]  # (kind, pseudonym, original)


class ResearchStore(Protocol):
    def save_research_share(self, row: ResearchShareRow) -> None:
        """Insert or replace the share's row (a new share; a decision goes through update_research_share)."""
        ...

    def update_research_share(self, row: ResearchShareRow, expected: ResearchState) -> bool:
        """Replace the share's row only if it is in state `expected` (compare-and-set: of a release and a
        refusal racing, one wins); True when replaced."""
        ...

    def research_copies(self) -> set[str]:
        """The study UIDs of every research copy made here (whatever the share's state)."""
        ...

    def research_copy_of(self, study_uid: str) -> ResearchShareRow | None:
        """A share whose copy is this study (indexed), or None: the study is not a research copy."""
        ...

    def research_share(self, share_id: str) -> ResearchShareRow | None: ...

    def research_shares(self, state: ResearchState | None = None) -> list[ResearchShareRow]: ...

    def research_share_for_manifest(self, manifest_id: CID) -> ResearchShareRow | None: ...

    def add_relink(self, project: str, entries: Sequence[RelinkEntry]) -> None:
        """Record pseudonyms (an existing one keeps its original: pseudonyms are keyed, so it is the same)."""
        ...

    def relink(self, project: str) -> list[RelinkEntry]: ...

    def has_relink(self, project: str) -> bool:
        """Whether the project has pseudonyms recorded (then its key must exist: a lost key is not remade)."""
        ...


class MemoryResearchStore:
    def __init__(self) -> None:
        super().__init__()
        self._research: dict[str, ResearchShareRow] = {}
        self._relink: dict[tuple[str, str, str], str] = {}

    def save_research_share(self, row: ResearchShareRow) -> None:
        self._research[row.share_id] = replace(row)

    def update_research_share(self, row: ResearchShareRow, expected: ResearchState) -> bool:
        current = self._research.get(row.share_id)
        if current is None or current.state is not expected:
            return False
        self._research[row.share_id] = replace(row)
        return True

    def research_copies(self) -> set[str]:
        return {r.research_study_uid for r in self._research.values() if r.research_study_uid}

    def research_copy_of(self, study_uid: str) -> ResearchShareRow | None:
        return next((r for r in self._research.values() if study_uid and r.research_study_uid == study_uid), None)

    def research_share(self, share_id: str) -> ResearchShareRow | None:
        return self._research.get(share_id)

    def research_shares(self, state: ResearchState | None = None) -> list[ResearchShareRow]:
        rows = [r for r in self._research.values() if state is None or r.state is state]
        return sorted(rows, key=lambda r: (r.created_ms, r.share_id))

    def research_share_for_manifest(self, manifest_id: CID) -> ResearchShareRow | None:
        return next((r for r in self._research.values() if r.manifest_id == manifest_id), None)

    def add_relink(self, project: str, entries: Sequence[RelinkEntry]) -> None:
        for kind, pseudonym, original in entries:
            self._relink.setdefault((project, kind, pseudonym), original)

    def relink(self, project: str) -> list[RelinkEntry]:
        return sorted((k, p, o) for (proj, k, p), o in self._relink.items() if proj == project)

    def has_relink(self, project: str) -> bool:
        return any(proj == project for proj, _, _ in self._relink)
