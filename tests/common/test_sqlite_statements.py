"""common.sqlite_db splits a migration into statements; a trigger's body (statements up to END) stays whole."""

from __future__ import annotations

from common.sqlite_db import _statements
from meshnode.storage.schema import MIGRATIONS


def test_a_trigger_body_is_one_statement() -> None:
    script = """
    CREATE TABLE t (a TEXT) STRICT;
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        INSERT INTO u VALUES (new.a);
        DELETE FROM v WHERE a = new.a;
    END;
    CREATE INDEX t_a ON t (a)
    """
    parts = _statements(script)
    assert len(parts) == 3 and parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END")
    assert parts[2] == "CREATE INDEX t_a ON t (a)"


def test_migrations_without_triggers_split_as_before() -> None:
    for migration in MIGRATIONS:
        if "TRIGGER" not in migration.upper():
            assert _statements(migration) == [s.strip() for s in migration.split(";") if s.strip()]
