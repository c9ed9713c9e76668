"""node.toml's [reach] section: reaching a node behind NAT or a firewall, and serving as a relay.

    [reach]
    reachability = "auto"          # auto (AutoNAT decides) | public | private (always reserve on relays)
    relays = ["/ip4/192.0.2.10/tcp/4001/p2p/12D3KooW..."]   # relay nodes to reserve a slot on (role relay)
    hole_punching = true           # upgrade a relayed connection to a direct one with DCUtR where both can
    relay_service = false          # run Circuit Relay v2 for other certified nodes (needs role relay)
    relay_max_reservations = 128   # nodes holding a slot on this relay at once
    relay_max_circuits = 512       # relayed connections through this relay at once
    relay_max_circuits_per_peer = 16
    relay_reservation_seconds = 3600   # a slot lasts this long unless refreshed
    relay_mb_per_s = 0             # cap on the bytes per second relayed, all circuits together (0: none)

A node whose `reachability` is private, or auto and found unreachable by AutoNAT, reserves a slot on each
of `relays` and publishes the relayed addresses (`<relay>/p2p-circuit/p2p/<itself>`) in its signed address
record. A relay only forwards bytes, which are Noise-encrypted end to end between the two nodes; it serves
only nodes with a valid certificate and keeps nothing on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocol.address_record import check_multiaddr_text
from protocol.config_reader import Table
from protocol.errors import ConfigError, MeshError
from protocol.keys import PublicKey

#: relays one node may reserve on
MAX_RELAYS = 8


class Reachability(str, Enum):
    AUTO = "auto"
    PUBLIC = "public"
    PRIVATE = "private"


def check_relay_addr(value: str, key: str) -> str:
    """A relay's address: a multiaddr ending in /p2p/<peer ID>, not itself a relayed address."""
    check_multiaddr_text(value, key)
    if "/p2p/" not in value or "/p2p-circuit" in value:
        raise ConfigError(f"{key}: {value[:80]!r} must be a relay's own address ending in /p2p/<peer ID>")
    transport, _, peer_id = value.rpartition("/p2p/")
    try:
        PublicKey.from_peer_id(peer_id)
    except MeshError:
        raise ConfigError(f"{key}: {peer_id[:60]!r} is not a node's peer ID (12D3KooW...)") from None
    if "/p2p/" in transport:
        raise ConfigError(f"{key}: {value[:80]!r} is not a node's peer ID: one /p2p/ part only")
    return value


@dataclass(frozen=True)
class ReachConfig:
    reachability: Reachability = Reachability.AUTO
    relays: tuple[str, ...] = ()
    hole_punching: bool = True
    #: hole punching may dial private addresses (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) a peer
    #: sends: only where both NATs sit in one private network (common.p2p.hole_punch)
    hole_punch_private: bool = False
    #: hole punching may dial loopback addresses: for several nodes on one machine (the real-process tests)
    #: only; a peer naming 127.0.0.1 otherwise points the node at its own services
    hole_punch_loopback: bool = False
    relay_service: bool = False
    relay_max_reservations: int = 128
    relay_max_circuits: int = 512
    relay_max_circuits_per_peer: int = 16
    relay_reservation_seconds: int = 3600
    relay_mb_per_s: float = 0.0

    def render(self) -> str:
        return RENDER.format(reach=self.reachability.value,
                             relays="[" + ", ".join(f'"{r}"' for r in self.relays) + "]",
                             punch="true" if self.hole_punching else "false")


RENDER = """
# Reaching this node behind NAT or a firewall (docs/operators.md, "Behind NAT"). With no inbound port
# open, list relay nodes here: the node reserves a slot on them and publishes the relayed addresses.
[reach]
reachability = "{reach}"
relays = {relays}
hole_punching = {punch}
"""


def parse_reach(root: Table) -> ReachConfig:
    d = ReachConfig()
    t = root.table("reach")
    reach = t.text("reachability", d.reachability.value, choices=tuple(r.value for r in Reachability))
    relays = t.texts("relays", (), check=check_relay_addr)
    if len(relays) > MAX_RELAYS:
        raise ConfigError(f"reach.relays: at most {MAX_RELAYS} relays")
    config = ReachConfig(
        reachability=Reachability(reach),
        relays=tuple(relays),
        hole_punching=t.boolean("hole_punching", d.hole_punching),
        hole_punch_private=t.boolean("hole_punch_private", d.hole_punch_private),
        hole_punch_loopback=t.boolean("hole_punch_loopback", d.hole_punch_loopback),
        relay_service=t.boolean("relay_service", d.relay_service),
        relay_max_reservations=t.integer("relay_max_reservations", d.relay_max_reservations, 1, 100_000),
        relay_max_circuits=t.integer("relay_max_circuits", d.relay_max_circuits, 1, 100_000),
        relay_max_circuits_per_peer=t.integer("relay_max_circuits_per_peer", d.relay_max_circuits_per_peer, 1, 1024),
        relay_reservation_seconds=t.integer("relay_reservation_seconds", d.relay_reservation_seconds, 60, 86400),
        relay_mb_per_s=t.number("relay_mb_per_s", d.relay_mb_per_s, 0, 100_000),
    )
    t.finish()
    if config.reachability is Reachability.PRIVATE and not config.relays:
        raise ConfigError('reach.reachability = "private" needs reach.relays: nobody could reach this node')
    return config
