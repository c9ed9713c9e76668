"""In which order a recipient fetches a study's blocks (the node and the simulator both use this).

The first instance's blocks come first (it is usable soonest), then the rest from a starting point of this
node's own, so that recipients fetching at the same time hold different parts and serve each other.
Every recipient knows the manifest's (sorted) recipient list, so the k-th of n recipient orgs starts k/n of
the way through: two recipients start half a study apart, three a third apart, whatever their peer IDs.
Nodes of the same org are spread within the first half of their org's share by a hash of their peer ID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from protocol.cid import CID
from protocol.manifest import Manifest

T = TypeVar("T")


def start_offset(recipients: Sequence[str], org: str, node: str, rest: int) -> int:
    """Where, among the `rest` blocks after the first instance's, this node of `org` starts fetching.

    An org that is not a recipient (it should not be fetching) starts after every recipient's share."""
    if rest <= 0:
        return 0
    ordered = sorted(recipients)
    index = ordered.index(org) if org in ordered else len(ordered)
    share = rest / (len(ordered) + (org not in ordered))
    jitter = int.from_bytes(hashlib.sha256(node.encode()).digest()[:4], "big") % max(1, int(share / 2))
    return (int(index * share) + jitter) % rest


def rotated(first: Sequence[T], rest: Sequence[T], offset: int) -> list[T]:
    """`first`, then `rest` from `offset` round to just before it, each item once."""
    if not rest:
        return list(dict.fromkeys(first))
    return list(dict.fromkeys([*first, *rest[offset:], *rest[:offset]]))


def fetch_order(manifest: Manifest, org: str, peer_id: str) -> list[CID]:
    """The order in which this node (`peer_id` of `org`) fetches the manifest's distinct blocks."""
    order = manifest.block_order()
    first = list(manifest.instances[0].blocks)
    first_set = set(first)
    rest = [c for c in order if c not in first_set]
    return rotated(first, rest, start_offset(manifest.recipients, org, peer_id, len(rest)))
