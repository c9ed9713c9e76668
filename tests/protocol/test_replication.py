"""protocol.replication: which studies a node copies from its siblings, and who is a sibling."""

from __future__ import annotations

import pytest

from meshnode.node.replication_config import ReplicationConfig
from protocol.access import Share, Verdict, decide, may_serve
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority
from protocol.replication import ReplicationScope, copies, is_sibling


@pytest.mark.parametrize(("scope", "priority", "expected"), [
    ("all", Priority.STAT, True), ("all", Priority.URGENT, True), ("all", Priority.ROUTINE, True),
    ("urgent", Priority.STAT, True), ("urgent", Priority.URGENT, True), ("urgent", Priority.ROUTINE, False),
    ("nothing", Priority.STAT, False), ("nothing", Priority.URGENT, False), ("nothing", Priority.ROUTINE, False),
])
def test_what_each_mode_copies(scope: str, priority: Priority, expected: bool) -> None:
    assert copies(scope, priority) is expected
    assert copies(ReplicationScope(scope), priority) is expected


def test_the_config_mode_is_the_protocol_scope() -> None:
    assert isinstance(ReplicationConfig().mode, ReplicationScope)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        copies("some", Priority.STAT)


def test_a_sibling_is_one_org_three_times() -> None:
    assert is_sibling("RGT", "RGT", "RGT")
    assert not is_sibling("RGT", "RJ1", "RGT")  # another org asking
    assert not is_sibling("RGT", "RGT", "RJ1")  # another org's manifest
    assert not is_sibling("RJ1", "RGT", "RGT")  # asking a node of another org
    assert not is_sibling("", "", "")


SHARE = Share("RGT", frozenset({"RJ1"}), ManifestState.ANNOUNCED, 2000)


def test_access_lets_a_sibling_read_its_orgs_manifest_and_nothing_else() -> None:
    assert decide(SHARE, "RGT", 1000, own_org="RGT") is Verdict.ALLOWED
    assert decide(SHARE, "RGT", 1000) is Verdict.NOT_ENTITLED  # without this node's org: as before
    assert decide(SHARE, "RGT", 1000, own_org="RJ1") is Verdict.NOT_ENTITLED  # a recipient's node: never the sender
    assert decide(SHARE, "RXH", 1000, own_org="RGT") is Verdict.NOT_ENTITLED
    assert decide(SHARE, "RGT", 1000, own_org="RGT", unlisted=1) is Verdict.UNLISTED
    assert decide(SHARE, "RGT", 3000, own_org="RGT") is Verdict.NOT_LIVE  # expired
    recalled = Share("RGT", frozenset({"RJ1"}), ManifestState.RECALLED, 2000)
    assert decide(recalled, "RGT", 1000, own_org="RGT") is Verdict.NOT_LIVE
    assert may_serve(SHARE, "RGT", "RGT", 1000, listed=True, obtained=False)
    assert not may_serve(SHARE, "RJ1", "RGT", 1000, listed=True, obtained=True)


def test_a_siblings_manifest_serves_only_what_this_node_copied_under_it() -> None:
    """Rule 4 by this node's provenance (review M3): the org signing a manifest is not enough."""
    assert may_serve(SHARE, "RGT", "RGT", 1000, listed=True, obtained=False, signed=True)  # this node signed it
    assert not may_serve(SHARE, "RGT", "RGT", 1000, listed=True, obtained=False, signed=False)  # a sibling did
    assert not may_serve(SHARE, "RGT", "RJ1", 1000, listed=True, obtained=False, signed=False)
    assert may_serve(SHARE, "RGT", "RJ1", 1000, listed=True, obtained=True, signed=False)  # copied under it
    assert not may_serve(SHARE, "RJ1", "RJ1", 1000, listed=True, obtained=False, signed=True)  # not its org's
