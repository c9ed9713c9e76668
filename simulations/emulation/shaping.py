"""Link shaping for emulation: network namespaces with tc, or the node's own upload limiter.

`netns` (needs root, `ip` and the kernel's tbf qdisc): every organisation's
node runs in its own network namespace, joined to a bridge in a core
namespace by a veth pair; tc tbf on the node's side of the pair shapes its
uplink, on the bridge side its downlink. The directory runs in the core
namespace. Nothing is visible from the host's own namespace, and names carry
a per-run tag, so parallel runs do not collide.

`limiter` (anywhere): every process on 127.0.0.1; each node's
`upload_mb_per_s` (its UploadLimiter) is set to its uplink rate. Downlinks
are not shaped (the node has no download limiter), which the run's manifest
and `meshsim validate` take into account.

`add_nat_node` (netns only) puts a node behind a NAT router instead
(`nat_rules` says what the router does): the router's public side is on the
bridge, shaped like any node's link, and the node sits alone on the router's
private side.

Latency is not emulated by either: the kernel here has no netem qdisc, so
round trips are those of a veth pair or loopback (well under 1 ms).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

from protocol.errors import UnavailableError

log = logging.getLogger(__name__)

CORE_IP = "10.77.0.1"
PREFIX_LEN = 24
TIMEOUT = 20.0


@dataclass(frozen=True)
class Rate:
    up: float  # bytes/s
    down: float


@dataclass
class Placement:
    """Where a process runs and how to start it there."""

    prefix: list[str]  # prepended to the command (e.g. ip netns exec NS)
    host: str  # the IPv4 address it listens on


@dataclass
class Shaper:
    mode: str  # netns | limiter
    reason: str
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)

    def directory(self) -> Placement:
        if self.mode == "netns":
            return Placement(["ip", "netns", "exec", self.core], CORE_IP)
        return Placement([], "127.0.0.1")

    @property
    def core(self) -> str:
        return f"msim{self.tag}c"

    def setup_core(self) -> None:
        if self.mode != "netns":
            return
        _ip("netns", "add", self.core)
        self.namespaces.append(self.core)
        _ns(self.core, "ip", "link", "set", "lo", "up")
        _ns(self.core, "ip", "link", "add", "br0", "type", "bridge")
        _ns(self.core, "ip", "addr", "add", f"{CORE_IP}/{PREFIX_LEN}", "dev", "br0")
        _ns(self.core, "ip", "link", "set", "br0", "up")

    def add_node(self, index: int, rate: Rate) -> tuple[Placement, dict[str, object]]:
        """Place node `index` with these link rates; returns where it runs and node.toml overrides."""
        if self.mode != "netns":
            return Placement([], "127.0.0.1"), {"limits.upload_mb_per_s": round(rate.up / 1e6, 6)}
        ns = f"msim{self.tag}n{index}"
        inner, outer = f"vi{self.tag}{index}", f"vo{self.tag}{index}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", self.core)
        host = f"10.77.0.{10 + index}"
        _ns(ns, "ip", "link", "set", "lo", "up")
        _ns(ns, "ip", "link", "set", inner, "name", "eth0")
        _ns(ns, "ip", "addr", "add", f"{host}/{PREFIX_LEN}", "dev", "eth0")
        _ns(ns, "ip", "link", "set", "eth0", "up")
        _ns(self.core, "ip", "link", "set", outer, "master", "br0")
        _ns(self.core, "ip", "link", "set", outer, "up")
        _ns(ns, "tc", "qdisc", "add", "dev", "eth0", "root", *_tbf(rate.up))
        _ns(self.core, "tc", "qdisc", "add", "dev", outer, "root", *_tbf(rate.down))
        return Placement(["ip", "netns", "exec", ns], host), {}

    def add_nat_node(self, index: int, rate: Rate, *, symmetric: bool = False) -> tuple[Placement, NatRouter]:
        """Place node `index` in a private network behind its own NAT router (MASQUERADE, no inbound port
        open); the router's public side is on the bridge at 10.77.0.(10+index), shaped at `rate` as
        `add_node` shapes a node's link; `symmetric` picks a random public port per connection instead
        (nat_rules). Needs the netns mode."""
        if self.mode != "netns":
            raise UnavailableError("a node behind NAT needs network namespaces (root, ip, tc and iptables)")
        router = NatRouter(f"msim{self.tag}r{index}", f"10.77.0.{10 + index}", f"192.168.{100 + index}.1",
                           f"192.168.{100 + index}.2")
        ns = f"msim{self.tag}n{index}"
        for name in (router.ns, ns):
            _ip("netns", "add", name)
            self.namespaces.append(name)
            _ns(name, "ip", "link", "set", "lo", "up")
        pub_in, pub_out = f"vp{self.tag}{index}", f"vo{self.tag}{index}"
        lan_r, lan_n = f"vl{self.tag}{index}", f"vi{self.tag}{index}"
        _ip("link", "add", pub_in, "type", "veth", "peer", "name", pub_out)
        _ip("link", "set", pub_in, "netns", router.ns)
        _ip("link", "set", pub_out, "netns", self.core)
        _ip("link", "add", lan_r, "type", "veth", "peer", "name", lan_n)
        _ip("link", "set", lan_r, "netns", router.ns)
        _ip("link", "set", lan_n, "netns", ns)
        _ns(router.ns, "ip", "link", "set", pub_in, "name", PUBLIC_IF)
        _ns(router.ns, "ip", "link", "set", lan_r, "name", PRIVATE_IF)
        _ns(router.ns, "ip", "addr", "add", f"{router.public_ip}/{PREFIX_LEN}", "dev", PUBLIC_IF)
        _ns(router.ns, "ip", "addr", "add", f"{router.private_ip}/{PREFIX_LEN}", "dev", PRIVATE_IF)
        _ns(ns, "ip", "link", "set", lan_n, "name", "eth0")
        _ns(ns, "ip", "addr", "add", f"{router.node_ip}/{PREFIX_LEN}", "dev", "eth0")
        for name, dev in ((router.ns, PUBLIC_IF), (router.ns, PRIVATE_IF), (ns, "eth0")):
            _ns(name, "ip", "link", "set", dev, "up")
        _ns(ns, "ip", "route", "add", "default", "via", router.private_ip)
        _ns(self.core, "ip", "link", "set", pub_out, "master", "br0")
        _ns(self.core, "ip", "link", "set", pub_out, "up")
        _ns(router.ns, "tc", "qdisc", "add", "dev", PUBLIC_IF, "root", *_tbf(rate.up))
        _ns(self.core, "tc", "qdisc", "add", "dev", pub_out, "root", *_tbf(rate.down))
        for rule in nat_rules(symmetric=symmetric):
            _ns(router.ns, *rule)
        return Placement(["ip", "netns", "exec", ns], router.node_ip), router

    def teardown(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT, check=False)
        self.namespaces.clear()


@dataclass(frozen=True)
class NatRouter:
    """A NAT router's namespace and addresses: public (on the bridge), private (its LAN side), its node's."""

    ns: str
    public_ip: str
    private_ip: str
    node_ip: str


PUBLIC_IF = "pub"
PRIVATE_IF = "lan"


def nat_rules(*, symmetric: bool = False) -> list[list[str]]:
    """What a NAT router does, as the commands that set it up in its namespace.

    Outbound: forwarding on, every connection from the LAN leaving by the public side is source-NATed to
    the router's public address (MASQUERADE). Linux keeps the connection's source port when no other
    tracked connection uses it on that address, and the mapping depends only on the inside address and
    port, not on where the packet goes: the endpoint-independent mapping (RFC 4787 section 4.1) that
    home and office routers give and that TCP hole punching needs.

    Inbound: nothing is open. The FORWARD policy drops, and only packets of a connection conntrack
    already tracks (ESTABLISHED, RELATED) come back in; the router itself answers nothing from the
    public side either (INPUT drops the rest silently, no RST), as a firewall that opens no port does.
    A simultaneous TCP open still passes: the peer's SYN arrives at the mapped address and port after
    the node's own SYN went out, conntrack sees it as the reply direction of that connection
    (ESTABLISHED), and NAT forwards it in; DCUtR times both SYNs for exactly that. Dropping silently
    matters: a RST for a SYN that arrives a little early would close the peer's attempt.

    `symmetric`: MASQUERADE --random-fully, a random public port for every connection (endpoint-dependent
    mapping, as carrier-grade and some enterprise NATs do). The port a peer predicts (router address,
    listen port) then maps to nothing, and TCP hole punching cannot work: only the relay gets through.
    """
    ipt = "iptables"
    return [
        ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        [ipt, "-t", "nat", "-A", "POSTROUTING", "-o", PUBLIC_IF, "-j", "MASQUERADE",
         *(["--random-fully"] if symmetric else [])],
        [ipt, "-P", "FORWARD", "DROP"],
        [ipt, "-A", "FORWARD", "-i", PRIVATE_IF, "-o", PUBLIC_IF, "-j", "ACCEPT"],
        [ipt, "-A", "FORWARD", "-i", PUBLIC_IF, "-o", PRIVATE_IF, "-m", "conntrack", "--ctstate",
         "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        [ipt, "-A", "INPUT", "-i", PUBLIC_IF, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j",
         "ACCEPT"],
        [ipt, "-A", "INPUT", "-i", PUBLIC_IF, "-j", "DROP"],
    ]


def nat_problem() -> str | None:
    """Why nodes cannot be put behind NAT here (None when they can): namespaces with tc, plus iptables."""
    problem = _netns_problem()
    if problem is not None:
        return problem
    if shutil.which("iptables") is None:
        return "`iptables` is not installed"
    probe = Shaper("netns", "probe")
    try:
        _ip("netns", "add", probe.core)
        probe.namespaces.append(probe.core)
        _ns(probe.core, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "MASQUERADE")
        _ns(probe.core, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT")
    except (UnavailableError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot set up iptables NAT in a namespace: {exc}"
    finally:
        probe.teardown()
    return None


def _tbf(bytes_per_s: float) -> list[str]:
    bits = max(8_000, int(bytes_per_s * 8))
    burst = max(32_768, int(bytes_per_s / 50))  # 20 ms of traffic
    return ["tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", "50ms"]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        raise UnavailableError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[:300]}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _ns(ns: str, *args: str) -> None:
    _run(["ip", "netns", "exec", ns, *args])


def detect(requested: str) -> Shaper:
    """The shaping to use: netns when asked for or available, else the node's limiter (with the reason)."""
    if requested == "limiter":
        return Shaper("limiter", "asked for the node's upload limiter (--shaping limiter)")
    problem = _netns_problem()
    if problem is None:
        return Shaper("netns", "network namespaces with tc tbf (root, ip and tc available)")
    if requested == "netns":
        raise UnavailableError(f"--shaping netns is not possible here: {problem}")
    log.warning("shaping links with the node's upload limiter instead of tc: %s", problem)
    return Shaper("limiter", f"network namespaces unavailable ({problem}); the node's upload limiter shapes uplinks")


def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = Shaper("netns", "probe")
    try:
        _ip("netns", "add", probe.core)
        probe.namespaces.append(probe.core)
        _ns(probe.core, "ip", "link", "add", "br0", "type", "bridge")
        _ns(probe.core, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        _ns(probe.core, "tc", "qdisc", "add", "dev", "p0", "root", *_tbf(1e6))
    except (UnavailableError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a namespace with a bridge, veth and tbf: {exc}"
    finally:
        probe.teardown()
    return None
