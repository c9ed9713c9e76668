"""ManifestCache: a stored manifest is decoded and verified once, by its CID, within a bounded size."""

from __future__ import annotations

import pytest

from meshnode.node.manifest_cache import ManifestCache
from protocol.errors import SignatureError
from tests.protocol.factories import NODE_A, make_manifest


def signed(n: int):  # type: ignore[no-untyped-def]
    return make_manifest(study_uid=f"1.2.826.0.1.3680043.8.498.{n}").sign(NODE_A)


def test_a_manifest_is_decoded_once_and_the_oldest_is_evicted() -> None:
    cache = ManifestCache(size=2)
    one, two, three = signed(1), signed(2), signed(3)
    first = cache.open(one.cid, one.encode())
    assert first.document == one.document
    assert cache.open(one.cid, one.encode()) is first
    cache.open(two.cid, two.encode())
    cache.open(one.cid, one.encode())  # one is now the most recently used
    cache.open(three.cid, three.encode())
    assert len(cache) == 2
    assert cache.open(one.cid, one.encode()) is first  # two was evicted, not one


def test_bytes_that_do_not_hash_to_the_id_are_never_cached_under_it() -> None:
    cache = ManifestCache()
    one, two = signed(1), signed(2)
    assert cache.open(one.cid, two.encode()).document == two.document
    assert len(cache) == 0
    assert cache.open(one.cid, one.encode()).document == one.document


def test_a_forged_stored_manifest_is_refused_not_cached() -> None:
    cache = ManifestCache()
    raw = bytearray(signed(1).encode())
    raw[-1] ^= 1  # the signature's last byte
    with pytest.raises(SignatureError):
        cache.open(signed(1).cid, bytes(raw))
    assert len(cache) == 0
