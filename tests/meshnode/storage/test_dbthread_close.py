"""DatabaseThread.close against a caller mid-call (review of issue 12, finding 2): Node.run closed the store
while an association thread was inside DatabaseThread.run_blocking, which crashed the process (SIGSEGV in
sqlite3). close() now waits for the call under way, and every later call raises UnavailableError."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.errors import UnavailableError


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_close_waits_for_the_call_under_way_and_refuses_later_ones(tmp_path: Path, kind: str) -> None:
    store: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if kind == "sqlite" else MemoryMetadataStore()
    db = DatabaseThread(store)
    inside, release = threading.Event(), threading.Event()
    got: list[object] = []

    def work(s: MetadataStore) -> int:
        with s.atomic():
            inside.set()
            release.wait(30)
            return len(s.studies())  # uses the connection after close() was asked for

    def caller() -> None:
        try:
            got.append(db.run_blocking(work))
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever the thread met
            got.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    assert inside.wait(30)
    closer = threading.Thread(target=db.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close waits for the call under way (the lock), it does not pull the store away
    release.set()
    t.join(30)
    closer.join(30)
    assert got == [0]
    with pytest.raises(UnavailableError):
        db.run_blocking(lambda s: s.studies())
    with pytest.raises(UnavailableError):
        trio.run(db.run, lambda s: s.studies())
    db.close()  # twice: harmless
