"""The node's SQLite schema is in one place (meshnode/storage/schema.py), every table STRICT, and the
metadata store assembled from its parts still is exactly the MetadataStore Protocol, as the memory one is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from common.sqlite_db import open_database
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.schema import MIGRATIONS
from meshnode.storage.sqlite_gateway import SqliteGatewayStore
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.sqlite_webhook_queue import SqliteWebhookQueue

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_STATEMENTS = ("CREATE TABLE", "ALTER TABLE", "CREATE INDEX", "DROP TABLE", "CREATE TRIGGER", "CREATE VIEW")


def tables_not_strict(db: sqlite3.Connection) -> list[str]:
    rows = db.execute("SELECT name, strict FROM pragma_table_list WHERE schema = 'main' AND type = 'table'").fetchall()
    return sorted(str(name) for name, strict in rows if not str(name).startswith("sqlite_") and not strict)


def test_every_table_of_a_new_node_database_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    stores = [SqliteMetadataStore(path), SqliteGatewayStore(path), SqliteUserStore(path), SqliteWebhookQueue(path)]
    db = sqlite3.connect(path)
    try:
        (version,) = db.execute("SELECT max(version) FROM schema_migrations").fetchone()
        tables = {str(n) for (n,) in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert version == len(MIGRATIONS)
        assert {"studies", "manifests", "transfers", "deliveries", "audit", "gateway_announcements", "users",
                "webhook_queue"} <= tables
        assert tables_not_strict(db) == []
    finally:
        db.close()
        for store in stores:
            store.close()


def test_the_strictness_check_finds_a_table_that_is_not_strict(tmp_path: Path) -> None:
    db = open_database(tmp_path / "node.db", (*MIGRATIONS, "CREATE TABLE loose (a TEXT)"))
    try:
        assert tables_not_strict(db) == ["loose"]
    finally:
        db.close()


def test_the_node_database_schema_is_written_only_in_schema_py() -> None:
    elsewhere = [
        f"{path.relative_to(ROOT)}: {statement}"
        for path in sorted((ROOT / "meshnode").rglob("*.py"))
        if path != ROOT / "meshnode" / "storage" / "schema.py"
        for statement in SCHEMA_STATEMENTS
        if statement in path.read_text(encoding="utf-8").upper()
    ]
    assert elsewhere == []


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_both_metadata_stores_are_exactly_the_protocol() -> None:
    """The SQLite store is composed of parts (catalog, exchange, identity, audit): none is missing and
    neither store grows methods the Protocol does not declare."""
    assert public(SqliteMetadataStore) == public(MetadataStore)
    assert public(MemoryMetadataStore) == public(MetadataStore)
