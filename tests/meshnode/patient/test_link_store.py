"""Both LinkStore implementations (memory, SQLite) behave the same: one parametrised suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.patient.link_store import LinkEvent, LinkStore, MemoryLinkStore
from meshnode.patient.sqlite_links import SqliteLinkStore
from protocol import patient_link as pl

NOW = 1_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LinkStore]:
    if request.param == "memory":
        yield MemoryLinkStore()
    else:
        s = SqliteLinkStore(tmp_path / "node.db")
        yield s
        s.close()


def _link(now: float = NOW, **kw: object) -> pl.PatientLink:
    link, _ = pl.create(kind=pl.SHARE, studies=["1.2.3"], person="Ann", email="ann@example.org",
                        code_to="+447700900123", created_by="user:alice", days=None, policy=pl.LinkPolicy(),
                        now=now, draw=os.urandom)
    return replace(link, **kw)  # type: ignore[arg-type]


def test_round_trip_and_lookup(store: LinkStore) -> None:
    a = _link()
    assert store.insert_link(a, (LinkEvent(a.link_id, NOW, "created", "user:alice", "", "1 study"),))
    assert store.link(a.link_id) == a and store.link_by_token(a.token_hash) == a
    assert not store.insert_link(a)  # a replay writes nothing
    assert not store.insert_link(replace(_link(), token_hash=a.token_hash))  # nor a token hash twice
    assert store.link("0" * 32) is None and store.link_by_token("00") is None
    assert [e.action for e in store.events(a.link_id)] == ["created"]


def test_compare_and_set(store: LinkStore) -> None:
    a = _link()
    store.insert_link(a)
    b = replace(a, wrong_attempts=1, version=1)
    assert store.update_link(b, 0, (LinkEvent(a.link_id, NOW, "code wrong", "share:x"),))
    # a second writer that read version 0 loses, and its events are not written
    assert not store.update_link(replace(a, revoked_at=NOW, version=1), 0, (LinkEvent(a.link_id, NOW, "revoked",
                                                                                       "user:bob"),))
    assert store.link(a.link_id) == b
    assert [e.action for e in store.events(a.link_id)] == ["code wrong"]


def test_forward_is_atomic(store: LinkStore) -> None:
    a = _link()
    store.insert_link(a)
    child = replace(_link(), parent_id=a.link_id)
    assert not store.forward_link(replace(a, forwards=1, version=5), 4, child)  # stale parent: nothing written
    assert store.link(child.link_id) is None
    assert store.forward_link(replace(a, forwards=1, version=1), 0, child)
    assert store.children(a.link_id) == [child] and store.link(a.link_id).forwards == 1  # type: ignore[union-attr]
    assert not store.forward_link(replace(a, forwards=2, version=2), 1, child)  # the child again: refused
    assert store.link(a.link_id).version == 1  # type: ignore[union-attr]


def test_listing_newest_first(store: LinkStore) -> None:
    old, new = _link(NOW), _link(NOW + 5, kind=pl.UPLOAD, studies=(), created_by="user:bob")
    store.insert_link(old)
    store.insert_link(new)
    assert store.links() == [new, old]
    assert store.links(kind=pl.SHARE) == [old] and store.links(created_by="user:bob") == [new]
    assert store.links(limit=1) == [new]
