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

    def teardown(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT, check=False)
        self.namespaces.clear()


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
