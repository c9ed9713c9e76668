"""The simulator makes the node's decisions by calling the very functions the node calls (imports, not
copies): this fails as soon as either side starts using a copy of its own."""

from __future__ import annotations

import meshnode.node.block_sink as node_block_sink
import meshnode.node.fetcher as node_fetcher
import meshnode.node.policy as node_policy
import protocol.access as access
import protocol.exchange_messages as exchange_messages
import protocol.fetch as fetch
import protocol.fetch_order as fetch_order
import simulations.engine.mesh as sim_mesh
import simulations.engine.mesh_design as sim_mesh_design


def test_access_rule_is_shared() -> None:
    assert node_policy.decide is access.decide is sim_mesh.decide
    assert node_policy.servable is access.servable is sim_mesh.servable
    assert node_fetcher.may_reuse is access.may_reuse


def test_fetch_order_is_shared() -> None:
    assert node_fetcher.fetch_order is fetch_order.fetch_order
    assert sim_mesh.start_offset is fetch_order.start_offset and sim_mesh.rotated is fetch_order.rotated
    # and the node's order is built from the same two pieces the simulator uses
    assert fetch_order.fetch_order.__globals__["start_offset"] is fetch_order.start_offset


def test_fetch_scheduler_is_shared() -> None:
    assert node_fetcher.FetchScheduler is fetch.FetchScheduler is sim_mesh.FetchScheduler


def test_block_check_is_shared() -> None:
    # a received block is kept or rejected (and its holder penalised) by one check on both sides
    assert node_block_sink.verify_block is exchange_messages.verify_block is sim_mesh_design.verify_block
