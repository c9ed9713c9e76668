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


def test_update_links_is_all_or_nothing(store: LinkStore) -> None:
    a, b = _link(), _link()
    store.insert_link(a)
    store.insert_link(b)
    revoked_a, revoked_b = replace(a, revoked_at=NOW, version=1), replace(b, revoked_at=NOW, version=1)
    ev = (LinkEvent(a.link_id, NOW, "revoked", "user:alice"),)
    # b's version is stale: a is not written either, nor any event
    assert not store.update_links(((revoked_a, 0, ev), (revoked_b, 7, ())))
    assert store.link(a.link_id) == a and store.events(a.link_id) == []
    assert store.update_links(((revoked_a, 0, ev), (revoked_b, 0, ())))
    assert store.link(a.link_id) == revoked_a and store.link(b.link_id) == revoked_b
    assert [e.action for e in store.events(a.link_id)] == ["revoked"]


def test_owner_offset_newest_events_and_last_event(store: LinkStore) -> None:
    mine, other = _link(NOW), _link(NOW + 1, created_by="user:bob")
    store.insert_link(mine)
    store.insert_link(other)
    child = replace(_link(NOW + 2), parent_id=mine.link_id, created_by=f"share:{mine.link_id}")
    assert store.forward_link(replace(mine, forwards=1, version=1), 0, child)
    assert [x.link_id for x in store.links(owner="user:alice")] == [child.link_id, mine.link_id]
    assert [x.link_id for x in store.links(offset=1, limit=1)] == [other.link_id]
    store.add_events(tuple(LinkEvent(mine.link_id, NOW + n, "opened", "share:x", f"c{n % 2}") for n in range(10)))
    assert [e.at for e in store.events(mine.link_id, limit=3)] == [NOW + 7, NOW + 8, NOW + 9]  # newest, in order
    assert store.last_event_at(mine.link_id, "opened", "c0") == NOW + 8
    assert store.last_event_at(mine.link_id, "opened", "nobody") == 0.0


def test_a_row_the_schema_refuses_raises_in_both(store: LinkStore) -> None:
    with pytest.raises(ValueError):
        store.insert_link(replace(_link(), code_channel="fax"))
    assert store.links() == []
