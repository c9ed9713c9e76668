"""common.sqlite_db splits a migration into statements; a trigger's body (statements up to END) stays whole."""

from __future__ import annotations

from pathlib import Path

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


def test_threads_sharing_a_store_do_not_join_each_others_transactions(tmp_path: Path) -> None:
    """The small stores are called from trio's worker threads: two threads' transactions on one connection
    must run one after the other (before the lock, the second thread's BEGIN failed, or it joined the first's
    transaction and was rolled back with it)."""
    import threading

    from common.sqlite_db import SqliteConnection

    store = SqliteConnection(tmp_path / "t.db", ["CREATE TABLE t (n INTEGER NOT NULL) STRICT"])
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        try:
            for i in range(200):
                with store._tx() as db:
                    db.execute("INSERT INTO t VALUES (?)", (i,))
                    db.execute("INSERT INTO t VALUES (?)", (i,))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert store._query("SELECT COUNT(*) FROM t")[0][0] == 4 * 200 * 2
    store.close()
