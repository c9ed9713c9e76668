"""The simulator makes the node's decisions by calling the very objects the node calls (imports, not copies).

For each decision (fetch order, fetch scheduling and its settings, the access rule, delivery retries, the
manifest lifecycle, when holders are asked what they hold) this checks, at run time, that the simulator's modules and the node's modules hold the
same protocol/ object, and, in their source, that neither the simulator nor the node's exchange modules
define a name of their own for any of them. It fails as soon as either side starts using a copy.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import meshnode.node.block_sink as node_block_sink
import meshnode.node.delivery as node_delivery
import meshnode.node.fetcher as node_fetcher
import meshnode.node.lifecycle as node_lifecycle
import meshnode.node.org_fetcher as node_org_fetcher
import meshnode.node.policy as node_policy
import meshnode.node.receiver as node_receiver
import meshnode.node.replication as node_replication
import meshnode.node.retry_driver as node_retry_driver
import meshnode.node.sender as node_sender
import protocol.access as access
import protocol.backoff as backoff
import protocol.delivery_policy as delivery_policy
import protocol.discovery as discovery
import protocol.exchange_messages as exchange_messages
import protocol.fetch as fetch
import protocol.fetch_order as fetch_order
import protocol.fetch_schedulers as fetch_schedulers
import protocol.fetch_settings as fetch_settings
import protocol.lifecycle as lifecycle
import protocol.org_fetch as org_fetch
import protocol.outbox as outbox
import protocol.replication as replication
import simulations.engine.mesh as sim_mesh
import simulations.engine.mesh_design as sim_mesh_design
import simulations.engine.org_nodes as sim_org_nodes
import simulations.engine.outboxes as sim_outboxes
import simulations.engine.hub as sim_hub
import simulations.engine.state as sim_state
import simulations.scenario.model as sim_model
from simulations.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Decision:
    name: str
    source: tuple[ModuleType, ...]  # the protocol/ modules that make it
    names: tuple[str, ...]  # the objects that carry it (each defined in one of `source`)
    node: tuple[tuple[ModuleType, str], ...]  # (node module, name it uses)
    sim: tuple[tuple[ModuleType, str], ...]  # (simulator module, name it uses)


DECISIONS = [
    Decision("fetch order", (fetch_order,), ("fetch_order", "start_offset", "rotated"),
             node=((node_fetcher, "fetch_order"),),
             sim=((sim_mesh, "start_offset"), (sim_mesh, "rotated"))),
    Decision("fetch scheduling", (fetch, fetch_settings, fetch_schedulers),
             ("FetchScheduler", "FetchSettings", "FetchSchedulers"),
             node=((node_fetcher, "FetchScheduler"), (node_fetcher, "FetchSchedulers"),
                   (node_fetcher, "FetchSettings")),
             sim=((sim_mesh, "FetchScheduler"), (sim_mesh, "FetchSchedulers"), (sim_mesh_design, "FetchSchedulers"),
                  (sim_mesh_design, "FetchSettings"), (sim_model, "FetchSettings"))),
    Decision("access rule", (access,), ("decide", "servable", "may_reuse", "may_serve", "superseded", "Share",
                                        "DEAD_STATES", "Verdict"),
             node=((node_policy, "decide"), (node_policy, "servable"), (node_policy, "superseded"),
                   (node_policy, "Share"), (node_fetcher, "may_reuse")),
             sim=((sim_mesh, "decide"), (sim_mesh, "servable"), (sim_mesh, "Share"))),
    Decision("manifest lifecycle", (lifecycle,), ("advance", "ManifestState", "ManifestEvent", "Side",
                                                  "TRANSITIONS"),
             node=((node_receiver, "advance"), (node_sender, "advance"), (node_fetcher, "ManifestEvent"),
                   (node_lifecycle, "ManifestEvent"), (node_lifecycle, "Side")),
             sim=((sim_mesh, "advance"), (sim_mesh_design, "advance"), (sim_mesh_design, "ManifestEvent"),
                  (sim_state, "ManifestState"))),
    Decision("discovery timing", (discovery,), ("DiscoverySchedule",),
             node=((node_fetcher, "DiscoverySchedule"),),
             sim=((sim_mesh, "DiscoverySchedule"), (sim_mesh_design, "DiscoverySchedule"))),
    # which node of a recipient org fetches a study, and when a sibling takes over (scenario [ha])
    Decision("org fetch", (org_fetch,), ("rank", "observe", "decide", "rendezvous_key", "OrgRole", "SiblingView",
                                         "holding_up", "down", "takeover_for", "without_siblings",
                                         "watch_interval", "WATCH_INTERVAL", "DOWN_AFTER_FAILURES", "DOWN_GRACE",
                                         "TAKEOVER_FRACTION"),
             node=((node_org_fetcher, "rank"), (node_org_fetcher, "observe"), (node_org_fetcher, "OrgRole"),
                   (node_org_fetcher, "decide"), (node_org_fetcher, "SiblingView"),
                   (node_org_fetcher, "holding_up"), (node_org_fetcher, "without_siblings"),
                   (node_org_fetcher, "watch_interval")),
             sim=((sim_org_nodes, "rank"), (sim_org_nodes, "observe"), (sim_org_nodes, "decide"),
                  (sim_org_nodes, "OrgRole"), (sim_org_nodes, "SiblingView"), (sim_org_nodes, "watch_interval"))),
    # what a node copies from its siblings (scenario [ha] replication)
    Decision("sibling copies", (replication,), ("copies", "ReplicationScope", "URGENT_PRIORITIES", "is_sibling"),
             node=((node_replication, "copies"), (node_replication, "ReplicationScope")),
             sim=((sim_org_nodes, "copies"), (sim_model, "ReplicationScope"))),
]

#: Delivery retries: the node's retry driver and the simulator's OutboxDriver run the same Outbox, built from a
#: DeliveryPolicy, and turn a uniform draw into a retry's jitter with the same function.
OUTBOX = Decision("delivery retries", (outbox, delivery_policy, backoff),
                  ("Outbox", "DeliveryPolicy", "jitter_fraction", "Backoff", "DeliveryState", "DeliveryKey"),
                  node=((node_retry_driver, "Outbox"), (node_retry_driver, "DeliveryPolicy"),
                        (node_retry_driver, "jitter_fraction"), (node_retry_driver, "DeliveryState"),
                        (node_delivery, "DeliveryPolicy"), (node_delivery, "DeliveryKey")),
                  sim=((sim_outboxes, "Outbox"), (sim_outboxes, "DeliveryPolicy"), (sim_outboxes, "jitter_fraction"),
                       (sim_outboxes, "DeliveryState"), (sim_outboxes, "DeliveryKey"), (sim_model, "DeliveryPolicy"),
                       (sim_hub, "DeliveryPolicy"), (sim_hub, "Backoff")))


def _origin(decision: Decision, name: str) -> object:
    for module in decision.source:
        if name in vars(module):
            return vars(module)[name]
    raise AssertionError(f"{name} is not defined in {[m.__name__ for m in decision.source]}")


def _check_shared(decision: Decision) -> None:
    for module, name in (*decision.node, *decision.sim):
        assert name in decision.names, f"{name} is not one of {decision.name}'s objects"
        assert getattr(module, name, None) is _origin(decision, name), \
            f"{module.__name__}.{name} is not protocol's {name} ({decision.name})"


@pytest.mark.parametrize("decision", DECISIONS, ids=[d.name for d in DECISIONS])
def test_node_and_simulator_use_the_same_protocol_object(decision: Decision) -> None:
    _check_shared(decision)
    # each carrier is defined where the decision is made, not re-exported from somewhere else
    for name in decision.names:
        assert getattr(_origin(decision, name), "__module__", None) in (None, *[m.__name__ for m in decision.source]) \
            or not callable(_origin(decision, name))


def test_node_and_simulator_retry_deliveries_with_the_same_outbox() -> None:
    _check_shared(OUTBOX)
    assert "backoff_s" not in vars(node_delivery)  # no second backoff beside the Outbox's
    # the node's deliveries run with protocol's policy (plus how many at once), and so does a scenario unless it
    # says otherwise; the simulator's hub has a policy of its own (the portal's, not the node's)
    node = delivery_policy.DeliveryPolicy()
    assert issubclass(node_retry_driver.RetryPolicy, delivery_policy.DeliveryPolicy)
    assert delivery_policy.DeliveryPolicy(**{f.name: getattr(node_delivery.POLICY, f.name)
                                             for f in dataclasses.fields(node)}) == node
    assert sim_model.Design(sim_model.DesignKind.MESH).delivery == node
    assert load_scenario(ROOT / "simulations" / "scenarios" / "five-trusts-faults.toml").design.delivery == node
    field = {f.name: f for f in dataclasses.fields(sim_model.Design)}["delivery"]
    assert field.default_factory is delivery_policy.DeliveryPolicy
    assert isinstance(sim_hub.HUB_POLICY, delivery_policy.DeliveryPolicy)


def test_both_drivers_draw_their_jitter_through_protocol() -> None:
    """Each driver's code calls jitter_fraction and builds its Outbox from the policy (no uniform(-j, j) of its
    own, no Outbox(...) with numbers of its own)."""
    for module in (node_retry_driver, sim_outboxes):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
        names = {f.id for f in calls if isinstance(f, ast.Name)} | {f.attr for f in calls if isinstance(f, ast.Attribute)}
        assert "jitter_fraction" in names and "outbox" in names, module.__name__
        assert not names & {"uniform", "Outbox", "restore"}, module.__name__


def test_the_node_builds_its_order_from_the_pieces_the_simulator_uses() -> None:
    assert fetch_order.fetch_order.__globals__["start_offset"] is fetch_order.start_offset
    assert fetch_order.fetch_order.__globals__["rotated"] is fetch_order.rotated


def test_block_check_is_shared() -> None:
    # a received block is kept or rejected (and its holder penalised) by one check on both sides
    assert node_block_sink.verify_block is exchange_messages.verify_block is sim_mesh_design.verify_block


def test_the_node_and_the_simulator_moves_come_from_one_table() -> None:
    assert vars(node_lifecycle)["lifecycle"] is lifecycle  # the node's driver applies protocol.lifecycle.advance
    assert lifecycle.advance.__globals__["TRANSITIONS"] is lifecycle.TRANSITIONS


def test_a_scenario_fetches_with_the_node_settings_unless_it_says_otherwise() -> None:
    design = load_scenario(ROOT / "simulations" / "scenarios" / "five-trusts.toml").design
    assert design.fetch == fetch_settings.FetchSettings()  # five-trusts restates two of them, the same
    field = {f.name: f for f in dataclasses.fields(sim_model.Design)}["fetch"]
    assert field.default_factory is fetch_settings.FetchSettings


def _python_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py"))


def _definitions(path: Path) -> list[tuple[str, int]]:
    """Every function, method or class a module defines (at any depth) and every module-level name it assigns,
    with its line. (A dataclass field or a local variable named like a decision is not a copy of it.)"""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((node.name, node.lineno))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            out += [(t.id, node.lineno) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append((node.target.id, node.lineno))
    return sorted(out, key=lambda d: d[1])


#: The fetch settings' names as the constants they used to be copied into (WINDOW_INITIAL, ...).
SETTING_CONSTANTS = {f.name.upper() for f in dataclasses.fields(fetch_settings.FetchSettings)} | {"REQUEST_BLOCKS"}


def test_neither_side_defines_a_decision_of_its_own() -> None:
    """simulations/ and the node's exchange modules (meshnode/node) define none of the decisions' names, nor a
    constant named after a fetch setting: they import them."""
    forbidden = {n: d.name for d in (*DECISIONS, OUTBOX) for n in d.names} | dict.fromkeys(SETTING_CONSTANTS,
                                                                                             "fetch settings")
    copies = [f"{path.relative_to(ROOT)}:{line}: {name} ({forbidden[name]})"
              for path in _python_files("simulations", "meshnode/node")
              for name, line in _definitions(path) if name in forbidden]
    assert copies == []


def test_the_copy_check_finds_a_copy(tmp_path: Path) -> None:
    """The check above can fail: a module that writes its own start_offset or WINDOW_MAX is caught."""
    copy = tmp_path / "copy.py"
    copy.write_text("WINDOW_MAX = 64\n\nclass X:\n    def start_offset(self) -> int:\n        return 0\n")
    assert [n for n, _ in _definitions(copy)] == ["WINDOW_MAX", "X", "start_offset"]


def _schedule_calls(module: ModuleType, settings: str) -> list[str]:
    """Every DiscoverySchedule(...) call in a module's source, its settings object written as `s`."""
    tree = ast.parse(Path(module.__file__ or "").read_text())
    return [ast.unparse(n).replace(settings, "s.") for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "DiscoverySchedule"]


def test_both_sides_time_discovery_with_the_schedule_built_from_the_fetch_settings() -> None:
    """Each simulated node runs a DiscoverySchedule built from the FetchSettings as the node's fetcher builds its
    own, and nothing else in the simulator's engine reads the discovery interval (no fixed tick of its own):
    only Mesh.new_discovery, and the run's manifest that reports it."""
    node_calls = _schedule_calls(node_fetcher, "self.settings.")
    assert len(node_calls) == 1 and node_calls == _schedule_calls(sim_mesh_design, "s.")
    assert "s.discovery_interval_max" in node_calls[0]
    readers: set[tuple[str, str]] = set()
    for path in _python_files("simulations/engine"):
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                readers |= {(path.name, fn.name) for n in ast.walk(fn)
                            if isinstance(n, ast.Attribute) and n.attr.startswith("discovery_interval")}
    assert readers == {("mesh_design.py", "new_discovery"), ("designs.py", "settings")}


def test_both_drivers_tell_the_scheduler_each_holders_path() -> None:
    """Whether a relayed holder is a slower source is protocol.fetch's decision (direct holders first, the
    relayed window cap); the node's fetcher and the simulator only say, at every peer_available, whether the
    holder is relayed (the node from common.p2p.paths, the simulator from its network model), so neither can
    model relays with a scheduling rule of its own or forget to tell it."""
    for module in (node_fetcher, sim_mesh):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == "peer_available"]
        assert calls and all(any(k.arg == "relayed" for k in c.keywords) for c in calls), module.__name__
    assert "set_relayed" in {n.func.attr for n in ast.walk(ast.parse(Path(node_fetcher.__file__ or "").read_text()))
                             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
