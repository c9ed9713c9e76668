"""Uploads through patient upload links (issue 14): each resumable upload with its durable offset, and the
verdict on every file it held; accepted files wait in quarantine (state `held`) until the PACS team
accepts (ingested) or rejects (deleted) the link's uploads.

Two implementations: SQLite (sqlite_uploads.py, in node.db on its own connection) and memory (below, for
tests). Decisions are a compare-and-set on `held`: of two staff users deciding at once, one wins.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Protocol

RECEIVING = "receiving"
CHECKED = "checked"
HELD = "held"
ACCEPTED = "accepted"
REJECTED = "rejected"
#: a refused or skipped file: nothing is held
NONE = "none"


@dataclass(frozen=True)
class UploadRow:
    upload_id: str  # 32 hex digits, random
    link_id: str
    #: the file's name as the uploader gave it (text only)
    name: str
    length: int
    #: bytes fsynced and acknowledged
    received: int
    state: str
    created_ms: int


@dataclass(frozen=True)
class FileRow:
    link_id: str
    upload_id: str
    name: str
    outcome: str  # accepted / refused / skipped
    reason: str
    sha256: str = ""
    size: int = 0
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    state: str = NONE
    decided_by: str = ""
    created_ms: int = 0
    #: a member of a ZIP upload (its size counts towards the link's total, besides the archive's)
    archived: bool = False
    #: who uploaded: the link's person, as the staff user entered them
    person: str = ""
    file_id: int = 0
    #: the refusal's error name (upload_errors; not stored: for the audit of this upload only)
    error: str = field(default="", compare=False)


@dataclass(frozen=True)
class LinkUsage:
    bytes: int
    files: int


class UploadStore(Protocol):
    def create_upload(self, row: UploadRow) -> None: ...

    def upload(self, link_id: str, upload_id: str) -> UploadRow | None:
        """The upload, only if it belongs to `link_id` (another link's ID is None)."""
        ...

    def set_received(self, upload_id: str, received: int) -> None: ...

    def delete_upload(self, upload_id: str) -> None: ...

    def receiving(self, link_id: str) -> list[UploadRow]:
        """The link's uploads not yet checked (arriving, or complete and being checked), oldest first."""
        ...

    def stale_uploads(self, before_ms: int) -> list[UploadRow]:
        """Uploads still receiving that were created before `before_ms` (abandoned: their link has ended)."""
        ...

    def usage(self, link_id: str) -> LinkUsage:
        """Bytes declared by the link's uploads plus bytes unpacked from its archives; its uploads still
        receiving plus its files checked."""
        ...

    def finish(self, upload_id: str, files: list[FileRow]) -> None:
        """The upload is checked: its files' verdicts, in one transaction."""
        ...

    def files(self, link_id: str) -> list[FileRow]: ...

    def held_links(self) -> list[str]: ...

    def decide(self, link_id: str, state: str, by: str, file_ids: list[int] | None = None) -> list[FileRow]:
        """Move the link's held files (only those of `file_ids` if given: what the decider saw) to `state`
        (accepted / rejected); the rows moved (none if another decision came first)."""
        ...


class MemoryUploadStore:
    def __init__(self) -> None:
        self._uploads: dict[str, UploadRow] = {}
        self._files: list[FileRow] = []
        self._ids = itertools.count(1)

    def create_upload(self, row: UploadRow) -> None:
        if row.upload_id in self._uploads:
            raise ValueError("upload ID exists")
        self._uploads[row.upload_id] = row

    def upload(self, link_id: str, upload_id: str) -> UploadRow | None:
        row = self._uploads.get(upload_id)
        return row if row is not None and row.link_id == link_id else None

    def set_received(self, upload_id: str, received: int) -> None:
        self._uploads[upload_id] = replace(self._uploads[upload_id], received=received)

    def delete_upload(self, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)

    def receiving(self, link_id: str) -> list[UploadRow]:
        return sorted((u for u in self._uploads.values() if u.link_id == link_id and u.state == RECEIVING),
                      key=lambda u: u.created_ms)

    def stale_uploads(self, before_ms: int) -> list[UploadRow]:
        return [u for u in self._uploads.values() if u.state == RECEIVING and u.created_ms < before_ms]

    def usage(self, link_id: str) -> LinkUsage:
        ups = [u for u in self._uploads.values() if u.link_id == link_id]
        unpacked = sum(f.size for f in self._files if f.link_id == link_id and f.archived)
        files = sum(1 for u in ups if u.state == RECEIVING) + sum(1 for f in self._files if f.link_id == link_id)
        return LinkUsage(sum(u.length for u in ups) + unpacked, files)

    def finish(self, upload_id: str, files: list[FileRow]) -> None:
        self._uploads[upload_id] = replace(self._uploads[upload_id], state=CHECKED)
        self._files.extend(replace(f, file_id=next(self._ids)) for f in files)

    def files(self, link_id: str) -> list[FileRow]:
        return [f for f in self._files if f.link_id == link_id]

    def held_links(self) -> list[str]:
        return sorted({f.link_id for f in self._files if f.state == HELD})

    def decide(self, link_id: str, state: str, by: str, file_ids: list[int] | None = None) -> list[FileRow]:
        moved: list[FileRow] = []
        for i, f in enumerate(self._files):
            if f.link_id == link_id and f.state == HELD and (file_ids is None or f.file_id in file_ids):
                self._files[i] = replace(f, state=state, decided_by=by)
                moved.append(f)
        return moved
