"""UserStore in the node's SQLite file (tables `users` and `api_tokens`)."""

from __future__ import annotations

import sqlite3
from typing import Any

from meshnode.storage.sqlite_base import SqliteTables
from meshnode.storage.users import (
    MIN_SUBSTRING,
    SEARCH_LIMIT,
    ApiToken,
    Credentials,
    User,
    match_token_id,
    search_text,
)
from protocol.errors import LocalProtocolError, NotFoundError

_USER_COLUMNS = "name, roles, created_ms, disabled, display_name, email, source"
_TOKEN_COLUMNS = "token_id, user_name, label, created_ms, expires_ms, revoked, last_used_ms"


def _user(row: Any) -> User:
    return User(str(row[0]), tuple(r for r in str(row[1]).split(",") if r), int(row[2]), bool(row[3]),
                str(row[4]), str(row[5]), str(row[6]))


def _token(row: Any) -> ApiToken:
    return ApiToken(str(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]), bool(row[5]), int(row[6]))


class SqliteUserStore(SqliteTables):
    def add_user(self, user: User) -> None:
        with self._tx() as db:
            try:
                db.execute(f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                           (user.name, ",".join(user.roles), user.created_ms, int(user.disabled),
                            user.display_name, user.email, user.source))
            except sqlite3.IntegrityError:
                raise LocalProtocolError(f"user {user.name!r} exists") from None

    def user(self, name: str) -> User | None:
        rows = self._query(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,))
        return _user(rows[0]) if rows else None

    def users(self) -> list[User]:
        return [_user(r) for r in self._query(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")]

    def search_users(self, text: str, limit: int = SEARCH_LIMIT) -> list[User]:
        """Prefix matches come from the indexes (name, display name, email: NOCASE), other substrings from the
        trigram index (3+ characters): no search scans the table (bench/user_store.py times them)."""
        text = search_text(text)
        end = text + "\U0010ffff"
        prefix = self._query(
            f"SELECT {_USER_COLUMNS} FROM users WHERE name >= ? AND name < ? UNION "
            f"SELECT {_USER_COLUMNS} FROM users WHERE display_name >= ? COLLATE NOCASE"
            " AND display_name < ? COLLATE NOCASE UNION "
            f"SELECT {_USER_COLUMNS} FROM users WHERE email >= ? COLLATE NOCASE AND email < ? COLLATE NOCASE"
            " ORDER BY name LIMIT ?", (text, end, text, end, text, end, limit))
        hits = [_user(r) for r in prefix]
        if len(hits) < limit and len(text) >= MIN_SUBSTRING:  # the trigram index: any substring of 3+ characters
            seen = {u.name for u in hits}
            rest = self._query(
                f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))} FROM users_search s"
                " JOIN users u ON u.name = s.name WHERE users_search MATCH ? ORDER BY u.name LIMIT ?",
                ('"' + text.replace('"', '""') + '"', limit + len(seen)))
            hits += [u for u in map(_user, rest) if u.name not in seen][:limit - len(hits)]
        return hits

    def user_by_email(self, email: str) -> User | None:
        """By the NOCASE index on email (the arrival notifier looks staff up by address)."""
        if not email:
            return None
        rows = self._query(f"SELECT {_USER_COLUMNS} FROM users WHERE email = ? COLLATE NOCASE ORDER BY name LIMIT 1",
                           (email,))
        return _user(rows[0]) if rows else None

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self._tx() as db:
            if db.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name)).rowcount == 0:
                raise NotFoundError(f"no user {name!r}")

    def set_profile(self, name: str, display_name: str, email: str) -> None:
        with self._tx() as db:
            if db.execute("UPDATE users SET display_name = ?, email = ? WHERE name = ?",
                          (display_name, email, name)).rowcount == 0:
                raise NotFoundError(f"no user {name!r}")

    def credentials(self, name: str) -> Credentials | None:
        rows = self._query("SELECT password_hash, totp_secret, totp_last_step, credentials_ms FROM users"
                           " WHERE name = ?", (name,))
        return Credentials(str(rows[0][0]), str(rows[0][1]), int(rows[0][2]), int(rows[0][3])) if rows else None

    def bind_subject(self, name: str, subject: str) -> str:
        with self._tx() as db:
            db.execute("UPDATE users SET oidc_subject = ? WHERE name = ? AND oidc_subject = ''", (subject, name))
            row = db.execute("SELECT oidc_subject FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no user {name!r}")
            return str(row[0])

    def set_credentials(self, name: str, password_hash: str, totp_secret: str, now_ms: int) -> None:
        with self._tx() as db:
            if db.execute("UPDATE users SET password_hash = ?, totp_secret = ?, totp_last_step = 0,"
                          " credentials_ms = ? WHERE name = ?", (password_hash, totp_secret, now_ms, name)
                          ).rowcount == 0:
                raise NotFoundError(f"no user {name!r}")

    def use_totp_step(self, name: str, step: int) -> bool:
        with self._tx() as db:
            return bool(db.execute("UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?",
                                   (step, name, step)).rowcount)

    def set_roles(self, name: str, roles: tuple[str, ...]) -> None:
        with self._tx() as db:
            if db.execute("UPDATE users SET roles = ? WHERE name = ?", (",".join(roles), name)).rowcount == 0:
                raise NotFoundError(f"no user {name!r}")

    def disable_user(self, name: str) -> int:
        with self._tx() as db:
            if db.execute("UPDATE users SET disabled = 1 WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"no user {name!r}")
            return db.execute("UPDATE api_tokens SET revoked = 1 WHERE user_name = ? AND revoked = 0",
                              (name,)).rowcount

    def add_token(self, token_hash: bytes, token: ApiToken) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (token.user,)).fetchone() is None:
                raise NotFoundError(f"no user {token.user!r}")
            try:
                db.execute(f"INSERT INTO api_tokens (token_hash, {_TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                           (token_hash, token.token_id, token.user, token.label, token.created_ms,
                            token.expires_ms, int(token.revoked), token.last_used_ms))
            except sqlite3.IntegrityError:
                raise LocalProtocolError("token exists") from None

    def tokens(self, user: str | None = None) -> list[ApiToken]:
        where, params = ("WHERE user_name = ?", (user,)) if user is not None else ("", ())
        return [_token(r) for r in self._query(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens {where} ORDER BY user_name, created_ms, token_id", params)]

    def revoke_token(self, token_id: str) -> ApiToken:
        token = match_token_id(self.tokens(), token_id)
        with self._tx() as db:
            db.execute("UPDATE api_tokens SET revoked = 1 WHERE token_id = ?", (token.token_id,))
        return ApiToken(token.token_id, token.user, token.label, token.created_ms, token.expires_ms, True,
                        token.last_used_ms)

    def lookup(self, token_hash: bytes) -> tuple[User, ApiToken] | None:
        rows = self._query(
            f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLUMNS.split(','))}, {', '.join('t.' + c.strip() for c in _TOKEN_COLUMNS.split(','))}"
            " FROM api_tokens t JOIN users u ON u.name = t.user_name WHERE t.token_hash = ?", (token_hash,))
        if not rows:
            return None
        return _user(rows[0][:7]), _token(rows[0][7:])

    def touch_token(self, token_id: str, now_ms: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE api_tokens SET last_used_ms = max(last_used_ms, ?) WHERE token_id = ?",
                       (now_ms, token_id))
