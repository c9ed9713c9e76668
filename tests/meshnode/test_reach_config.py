"""node.toml's [reach]: parsed, and every malformed relay setting refused with a ConfigError naming the key;
relay_service needs a certificate with role relay (meshnode.node.relay_service.check_relay_role)."""

from __future__ import annotations

import pytest

from meshnode.config import ConfigError, NodeConfig, parse_config
from meshnode.node.reach_config import Reachability, ReachConfig
from meshnode.node.relay_service import NO_DATA_CAP, check_relay_role, relay_limits
from protocol.certificate import Certificate, Role
from protocol.keys import SigningKey

AUTHORITY = SigningKey(bytes(range(32))).public_key
BASE = NodeConfig(org="RGT", authority_keys=(AUTHORITY,)).render()
RELAY = "/ip4/192.0.2.10/tcp/4001/p2p/12D3KooWGjSE7eCu5f1Pa8pGxscmoEcdQ5BRMGqbyMvL2dhrPCS5"


def _reach(lines: str) -> str:
    head, _, _ = BASE.partition("[reach]")
    return head + "[reach]\n" + lines + "\n"


def test_reach_parses() -> None:
    config = parse_config(_reach(f'reachability = "private"\nrelays = ["{RELAY}"]\nhole_punching = false\n'
                                 "relay_service = true\nrelay_max_reservations = 3\nrelay_mb_per_s = 2.5"))
    assert config.reach == ReachConfig(reachability=Reachability.PRIVATE, relays=(RELAY,), hole_punching=False,
                                       relay_service=True, relay_max_reservations=3, relay_mb_per_s=2.5)


def test_hole_punch_private_is_off_unless_set() -> None:
    assert parse_config(_reach('reachability = "auto"')).reach.hole_punch_private is False
    assert parse_config(_reach("hole_punch_private = true")).reach.hole_punch_private is True
    assert parse_config(_reach("hole_punch_loopback = true")).reach.hole_punch_loopback is True
    assert parse_config(_reach("")).reach.hole_punch_loopback is False


def test_rendered_reach_parses_back() -> None:
    config = NodeConfig(org="RGT", authority_keys=(AUTHORITY,),
                        reach=ReachConfig(reachability=Reachability.PRIVATE, relays=(RELAY,)))
    assert parse_config(config.render()).reach == config.reach


@pytest.mark.parametrize("lines, message", [
    ('reachability = "hidden"', "reach.reachability"),
    ('reachability = "private"', "needs reach.relays"),
    ('relays = ["/ip4/192.0.2.10/tcp/4001"]', "must be a relay's own address"),
    (f'relays = ["{RELAY}/p2p-circuit"]', "must be a relay's own address"),
    ('relays = ["not a multiaddr"]', "reach.relays"),
    ('relays = ["/ip4/192.0.2.10/tcp/4001/p2p/notapeer"]', "not a node's peer ID"),
    (f'relays = ["{RELAY}/p2p/{RELAY.rsplit("/", 1)[1]}"]', "not a node's peer ID"),
    ("relays = [" + ", ".join(f'"{RELAY}"' for _ in range(9)) + "]", "at most 8 relays"),
    ("relay_max_reservations = 0", "reach.relay_max_reservations"),
    ("relay_max_circuits_per_peer = 5000", "reach.relay_max_circuits_per_peer"),
    ("relay_reservation_seconds = 10", "reach.relay_reservation_seconds"),
    ("relay_mb_per_s = -1", "reach.relay_mb_per_s"),
    ('relay_service = "yes"', "reach.relay_service"),
    ("relay_everything = true", "relay_everything"),
])
def test_malformed_reach_refused(lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(_reach(lines))


def _certificate(*roles: str) -> Certificate:
    return Certificate(serial="0" * 32, org_code="RGT", org_name="Test", roles=tuple(sorted(roles)),
                       node_key=SigningKey(bytes([7]) * 32).public_key, not_before=0, not_after=10,
                       issuer=AUTHORITY.peer_id)


def test_relay_service_needs_role_relay() -> None:
    with pytest.raises(ConfigError, match="needs a node certificate with role relay"):
        check_relay_role(ReachConfig(relay_service=True), _certificate("acute-trust"))
    check_relay_role(ReachConfig(relay_service=True), _certificate(Role.RELAY.value))
    check_relay_role(ReachConfig(relay_service=False), _certificate("acute-trust"))


def test_relay_limits_follow_reach() -> None:
    limits = relay_limits(ReachConfig(relay_max_reservations=5, relay_max_circuits_per_peer=2,
                                      relay_reservation_seconds=600))
    assert (limits.max_reservations, limits.max_circuit_conns, limits.reservation_ttl) == (5, 2, 600)
    assert (limits.duration, limits.data) == (0, NO_DATA_CAP)
