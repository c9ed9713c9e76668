"""Patient links in the node's SQLite file (link_store.py says what they are; tables in schema.py). Its own
connection to node.db, like the users store, so `meshnode` commands and the running node can both use it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from meshnode.patient.link_store import Change, LinkEvent
from meshnode.storage.sqlite_base import SqliteTables
from protocol.patient_link import PatientLink

_COLUMNS = ("link_id, kind, token_hash, studies, person, email, code_channel, code_to, created_by, parent_id,"
            " created_at, expires_at, code_salt, revoked_at, revoke_reason, forwards, wrong_attempts, locked_at,"
            " code_hash, code_expires_at, codes_sent, version")
_MARKS = ",".join("?" * len(_COLUMNS.split(",")))


def _values(x: PatientLink) -> tuple[object, ...]:
    return (x.link_id, x.kind, x.token_hash, json.dumps(list(x.studies)), x.person, x.email, x.code_channel,
            x.code_to, x.created_by, x.parent_id, x.created_at, x.expires_at, x.code_salt, x.revoked_at,
            x.revoke_reason, x.forwards, x.wrong_attempts, x.locked_at, x.code_hash, x.code_expires_at,
            x.codes_sent, x.version)


def _link(r: Sequence[object]) -> PatientLink:
    s = [str(v) for v in r]
    return PatientLink(link_id=s[0], kind=s[1], token_hash=s[2], studies=tuple(json.loads(s[3])), person=s[4],
                       email=s[5], code_channel=s[6], code_to=s[7], created_by=s[8], parent_id=s[9],
                       created_at=float(s[10]), expires_at=float(s[11]), code_salt=s[12], revoked_at=float(s[13]),
                       revoke_reason=s[14], forwards=int(s[15]), wrong_attempts=int(s[16]), locked_at=float(s[17]),
                       code_hash=s[18], code_expires_at=float(s[19]), codes_sent=int(s[20]), version=int(s[21]))


class _Lost(Exception):
    """A compare-and-set in update_links lost: roll the transaction back."""


def _insert(db: sqlite3.Connection, link: PatientLink) -> None:
    """A plain INSERT (not OR IGNORE, which would swallow a CHECK failure): a row the schema refuses raises
    ValueError, as in the memory store."""
    try:
        db.execute(f"INSERT INTO patient_links ({_COLUMNS}) VALUES ({_MARKS})", _values(link))
    except sqlite3.IntegrityError as exc:
        raise ValueError(f"patient link {link.link_id}: refused by the schema ({exc})") from None


def _add_events(db: sqlite3.Connection, events: Sequence[LinkEvent]) -> None:
    db.executemany("INSERT INTO patient_link_events (link_id, at, action, actor, client, detail) VALUES"
                   " (?,?,?,?,?,?)", [(e.link_id, e.at, e.action, e.actor, e.client, e.detail) for e in events])


class SqliteLinkStore(SqliteTables):
    def insert_link(self, link: PatientLink, events: tuple[LinkEvent, ...] = ()) -> bool:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM patient_links WHERE link_id = ? OR token_hash = ?",
                          (link.link_id, link.token_hash)).fetchone() is not None:
                return False
            _insert(db, link)
            _add_events(db, events)
            return True

    def link(self, link_id: str) -> PatientLink | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM patient_links WHERE link_id = ?", (link_id,))
        return _link(rows[0]) if rows else None

    def link_by_token(self, token_hash: str) -> PatientLink | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM patient_links WHERE token_hash = ?", (token_hash,))
        return _link(rows[0]) if rows else None

    def _update(self, db: sqlite3.Connection, link: PatientLink, expected_version: int) -> bool:
        sets = ", ".join(f"{c.strip()} = ?" for c in _COLUMNS.split(",")[1:])
        return db.execute(f"UPDATE patient_links SET {sets} WHERE link_id = ? AND version = ?",
                          (*_values(link)[1:], link.link_id, expected_version)).rowcount == 1

    def update_link(self, link: PatientLink, expected_version: int, events: tuple[LinkEvent, ...] = ()) -> bool:
        with self._tx() as db:
            if not self._update(db, link, expected_version):
                return False
            _add_events(db, events)
            return True

    def update_links(self, changes: tuple[Change, ...]) -> bool:
        try:
            with self._tx() as db:
                for link, expected, _ in changes:
                    if not self._update(db, link, expected):
                        raise _Lost()  # rolls back the ones already written
                for _, _, events in changes:
                    _add_events(db, events)
        except _Lost:
            return False
        return True

    def forward_link(self, parent: PatientLink, expected_version: int, child: PatientLink,
                     events: tuple[LinkEvent, ...] = ()) -> bool:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM patient_links WHERE link_id = ? OR token_hash = ?",
                          (child.link_id, child.token_hash)).fetchone() is not None:
                return False
            if not self._update(db, parent, expected_version):
                return False
            _insert(db, child)
            _add_events(db, events)
            return True

    def links(self, kind: str | None = None, created_by: str | None = None, limit: int = 200,
              offset: int = 0, owner: str | None = None) -> list[PatientLink]:
        where: list[str] = []
        args: list[object] = []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if created_by is not None:
            where.append("created_by = ?")
            args.append(created_by)
        if owner is not None:
            where.append("(created_by = ? OR parent_id IN (SELECT link_id FROM patient_links WHERE created_by = ?))")
            args += [owner, owner]
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return [_link(r) for r in self._query(f"SELECT {_COLUMNS} FROM patient_links{clause} ORDER BY created_at"
                                              " DESC, rowid DESC LIMIT ? OFFSET ?", (*args, limit, offset))]

    def children(self, link_id: str) -> list[PatientLink]:
        return [_link(r) for r in self._query(f"SELECT {_COLUMNS} FROM patient_links WHERE parent_id = ? ORDER BY"
                                              " created_at, link_id", (link_id,))]

    def add_events(self, events: tuple[LinkEvent, ...]) -> None:
        with self._tx() as db:
            _add_events(db, events)

    def events(self, link_id: str, limit: int = 1000) -> list[LinkEvent]:
        return [LinkEvent(str(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5])) for r in self._query(
            "SELECT link_id, at, action, actor, client, detail FROM (SELECT seq, link_id, at, action, actor, client,"
            " detail FROM patient_link_events WHERE link_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (link_id, limit))]

    def last_event_at(self, link_id: str, action: str, client: str) -> float:
        rows = self._query("SELECT at FROM patient_link_events WHERE link_id = ? AND action = ? AND client = ?"
                           " ORDER BY seq DESC LIMIT 1", (link_id, action, client))
        return float(str(rows[0][0])) if rows else 0.0
