"""The authority's own records: what it issued, what it revoked, which rosters it signed.

Lives next to the encrypted key in the authority directory, as authority.db.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from protocol.certificate import Certificate, check_serial
from protocol.document import Signed
from protocol.errors import LocalProtocolError, NotFoundError, StorageError
from protocol.keys import PublicKey, SigningKey
from protocol.roster import Roster
from common.sqlite_db import open_database

MIGRATIONS = (
    """
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        org_code TEXT NOT NULL,
        org_name TEXT NOT NULL,
        peer_id TEXT NOT NULL,
        roles TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        raw BLOB NOT NULL
    ) STRICT;
    CREATE TABLE revocations (
        serial TEXT PRIMARY KEY,
        revoked_at INTEGER NOT NULL,
        reason TEXT NOT NULL
    ) STRICT;
    CREATE TABLE rosters (
        version INTEGER PRIMARY KEY,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        raw BLOB NOT NULL
    ) STRICT;
    CREATE TABLE extra_authorities (
        public_key BLOB PRIMARY KEY
    ) STRICT
    """,
)


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str
    org_code: str
    org_name: str
    peer_id: str
    roles: tuple[str, ...]
    not_before: int
    not_after: int
    revoked: bool


class AuthorityRegistry:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def issue(
        self,
        key: SigningKey,
        *,
        node_key: PublicKey,
        org_code: str,
        org_name: str,
        roles: tuple[str, ...],
        not_before: int,
        not_after: int,
    ) -> Signed[Certificate]:
        cert = Certificate(
            serial=secrets.token_hex(16),
            org_code=org_code,
            org_name=org_name,
            roles=tuple(sorted(set(roles))),
            node_key=node_key,
            not_before=not_before,
            not_after=not_after,
            issuer=key.peer_id,
        )
        signed = cert.sign(key)
        try:
            self._db.execute(
                "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (cert.serial, org_code, org_name, cert.peer_id, ",".join(cert.roles),
                 not_before, not_after, signed.encode()),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot record certificate: {exc}") from exc
        return signed

    def certificates(self) -> list[IssuedCertificate]:
        rows = self._db.execute(
            "SELECT c.serial, org_code, org_name, peer_id, roles, not_before, not_after, r.serial IS NOT NULL"
            " FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial ORDER BY org_code, not_before"
        ).fetchall()
        return [
            IssuedCertificate(s, o, n, p, tuple(r.split(",")), nb, na, bool(rv))
            for s, o, n, p, r, nb, na, rv in rows
        ]

    def revoke(self, serial: str, now: int, reason: str, *, allow_unknown: bool = False) -> bool:
        """Record a revocation. Returns False when it was already revoked."""
        check_serial(serial)
        known = self._db.execute("SELECT 1 FROM certificates WHERE serial = ?", (serial,)).fetchone()
        if not known and not allow_unknown:
            raise NotFoundError(f"no certificate with serial {serial} was issued by this authority")
        cur = self._db.execute(
            "INSERT OR IGNORE INTO revocations VALUES (?, ?, ?)", (serial, now, reason[:512])
        )
        return cur.rowcount == 1

    def revoked_serials(self) -> frozenset[str]:
        return frozenset(s for (s,) in self._db.execute("SELECT serial FROM revocations"))

    def add_authority(self, key: PublicKey) -> None:
        self._db.execute("INSERT OR IGNORE INTO extra_authorities VALUES (?)", (key.raw,))

    def extra_authorities(self) -> list[PublicKey]:
        return [PublicKey(k) for (k,) in self._db.execute("SELECT public_key FROM extra_authorities")]

    def next_roster(self, key: SigningKey, now: int, valid_for: int) -> Signed[Roster]:
        if valid_for <= 0:
            raise LocalProtocolError("roster validity must be positive")
        (latest,) = self._db.execute("SELECT coalesce(max(version), 0) FROM rosters").fetchone()
        authorities = {key.public_key, *self.extra_authorities()}
        roster = Roster(
            version=latest + 1,
            issued_at=now,
            expires_at=now + valid_for,
            authorities=tuple(sorted(authorities, key=lambda k: k.raw)),
            revoked=self.revoked_serials(),
        )
        signed = roster.sign(key)
        self._db.execute(
            "INSERT INTO rosters VALUES (?, ?, ?, ?)",
            (roster.version, roster.issued_at, roster.expires_at, signed.encode()),
        )
        return signed

