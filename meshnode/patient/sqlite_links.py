"""Patient links in the node's SQLite file (link_store.py says what they are; tables in schema.py). Its own
connection to node.db, like the users store, so `meshnode` commands and the running node can both use it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from meshnode.patient.link_store import LinkEvent
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


def _add_events(db: sqlite3.Connection, events: Sequence[LinkEvent]) -> None:
    db.executemany("INSERT INTO patient_link_events (link_id, at, action, actor, client, detail) VALUES"
                   " (?,?,?,?,?,?)", [(e.link_id, e.at, e.action, e.actor, e.client, e.detail) for e in events])


class SqliteLinkStore(SqliteTables):
    def insert_link(self, link: PatientLink, events: tuple[LinkEvent, ...] = ()) -> bool:
        with self._tx() as db:
            if db.execute(f"INSERT OR IGNORE INTO patient_links ({_COLUMNS}) VALUES ({_MARKS})",
                          _values(link)).rowcount != 1:
                return False
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

    def forward_link(self, parent: PatientLink, expected_version: int, child: PatientLink,
                     events: tuple[LinkEvent, ...] = ()) -> bool:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM patient_links WHERE link_id = ? OR token_hash = ?",
                          (child.link_id, child.token_hash)).fetchone() is not None:
                return False
            if not self._update(db, parent, expected_version):
                return False
            db.execute(f"INSERT INTO patient_links ({_COLUMNS}) VALUES ({_MARKS})", _values(child))
            _add_events(db, events)
            return True

    def links(self, kind: str | None = None, created_by: str | None = None, limit: int = 200) -> list[PatientLink]:
        where: list[str] = []
        args: list[object] = []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if created_by is not None:
            where.append("created_by = ?")
            args.append(created_by)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        return [_link(r) for r in self._query(f"SELECT {_COLUMNS} FROM patient_links{clause} ORDER BY created_at"
                                              " DESC, rowid DESC LIMIT ?", (*args, limit))]

    def children(self, link_id: str) -> list[PatientLink]:
        return [_link(r) for r in self._query(f"SELECT {_COLUMNS} FROM patient_links WHERE parent_id = ? ORDER BY"
                                              " created_at, link_id", (link_id,))]

    def add_events(self, events: tuple[LinkEvent, ...]) -> None:
        with self._tx() as db:
            _add_events(db, events)

    def events(self, link_id: str, limit: int = 1000) -> list[LinkEvent]:
        return [LinkEvent(str(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5])) for r in self._query(
            "SELECT link_id, at, action, actor, client, detail FROM patient_link_events WHERE link_id = ? ORDER BY"
            " seq LIMIT ?", (link_id, limit))]
