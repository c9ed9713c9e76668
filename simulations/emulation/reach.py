"""Two organisations behind NAT and a public relay, as real processes in network namespaces.

    public namespace (bridge 10.77.0.0/24): directory (10.77.0.1), relay node (10.77.0.10, role relay,
                                            [reach] relay_service = true)
    org A: NAT router 10.77.0.11 on the bridge | 192.168.101.1 -- node A 192.168.101.2
    org B: NAT router 10.77.0.12 on the bridge | 192.168.102.1 -- node B 192.168.102.2

Each router MASQUERADEs its node's connections and lets nothing in that its node did not start
(shaping.nat_rules); A and B run with `[reach] reachability = "private"` and the relay in `relays`. Built on
shaping.Shaper (namespaces, bridge, tc tbf on every link at one rate) and cluster.Cluster (the processes
through the CLIs). With `nat=False` the same three nodes all sit on the bridge with public addresses (the
direct case of bench/relay_link.py). Every name carries the Shaper's per-run tag; `close` removes the
processes and the namespaces (with them their veths, iptables rules and qdiscs) whatever happened.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import UnavailableError
from simulations.emulation.cluster import Cluster, NodeProc
from simulations.emulation.shaping import (
    PUBLIC_IF,
    NatRouter,
    Placement,
    Rate,
    Shaper,
    nat_problem,
)

log = logging.getLogger(__name__)

RELAY_KIND = "relay"
NODE_KIND = "acute-trust"
RECEIPT_TIMEOUT = 300.0
POLL = 0.25
CHECK_PORT = 7411  # the plain TCP checks' port (nothing else listens in these namespaces before the nodes)


@dataclass
class ReachMesh:
    work: Path
    rate: Rate
    nat: bool = True
    hole_punching: bool = False
    symmetric: bool = False  # NAT with a random port per connection (shaping.nat_rules)
    shaper: Shaper = field(default_factory=lambda: Shaper("netns", "network namespaces with NAT routers"))
    cluster: Cluster | None = None
    relay: NodeProc | None = None
    a: NodeProc | None = None
    b: NodeProc | None = None
    routers: dict[str, NatRouter] = field(default_factory=dict)
    relay_addr: str = ""

    def build_network(self) -> None:
        """The namespaces, links and NAT routers; no process yet."""
        problem = nat_problem()
        if problem is not None:
            raise UnavailableError(f"network namespaces with NAT are not possible here: {problem}")
        self.shaper.setup_core()
        self.cluster = Cluster(self.work)
        relay_place, _ = self.shaper.add_node(0, self.rate)
        self.relay = NodeProc("RELAY1", RELAY_KIND, self.work / "relay", relay_place)
        for index, org in ((1, "ORGA"), (2, "ORGB")):
            if self.nat:
                place, router = self.shaper.add_nat_node(index, self.rate, symmetric=self.symmetric)
                self.routers[org] = router
            else:
                place, _ = self.shaper.add_node(index, self.rate)
            node = NodeProc(org, NODE_KIND, self.work / f"node-{org.lower()}", place)
            if index == 1:
                self.a = node
            else:
                self.b = node

    def nodes(self) -> tuple[Cluster, NodeProc, NodeProc, NodeProc]:
        if self.cluster is None or self.relay is None or self.a is None or self.b is None:
            raise UnavailableError("the reach mesh's network is not built")
        return self.cluster, self.relay, self.a, self.b

    def start(self) -> None:
        """Authority and directory, then the relay, then A and B configured to reserve on it."""
        cluster, relay, a, b = self.nodes()
        cluster.start_authority_and_directory(self.shaper.directory())
        cluster.add_node(relay, {"reach.reachability": "public", "reach.relay_service": True})
        addrs = cluster.start_node(relay)
        own = next((x for x in addrs if f"/ip4/{relay.placement.host}/tcp/" in x), None)
        if own is None:
            raise UnavailableError(f"the relay listens on none of its namespace's addresses: {addrs}")
        self.relay_addr = own if "/p2p/" in own else f"{own}/p2p/{relay.peer_id}"
        for node in (a, b):
            # the namespaces' "public" side is 10.77.0.0/24, a private range: hole punching there needs
            # hole_punch_private (docs/operators.md, "Reservations, AutoNAT and hole punching")
            config: dict[str, object] = {"reach.relays": [self.relay_addr],
                                         "reach.hole_punching": self.hole_punching,
                                         "reach.hole_punch_private": self.hole_punching}
            config["reach.reachability"] = "private" if self.nat else "public"
            cluster.add_node(node, config)
            cluster.start_node(node)

    def close(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.stop_all()
        finally:
            self.shaper.teardown()


def tcp_check(place: Placement, *args: str, timeout: float = 30.0) -> str:
    """Run simulations.emulation.tcp_check in a placement; its one-line answer."""
    proc = subprocess.run([*place.prefix, sys.executable, "-m", "simulations.emulation.tcp_check", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise UnavailableError(f"tcp_check {args[0]} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1]


def can_connect(src: Placement, dst: Placement, host: str, seconds: float = 3.0) -> str:
    """Listen on CHECK_PORT in `dst`, connect from `src` to `host`: `connected` or why not."""
    listener = subprocess.Popen([*dst.prefix, sys.executable, "-m", "simulations.emulation.tcp_check", "listen",
                                 "0.0.0.0", str(CHECK_PORT), str(seconds + 5)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
    try:
        assert listener.stdout is not None  # Popen with stdout=PIPE
        if listener.stdout.readline().strip() != "READY":
            raise UnavailableError("the TCP check's listener did not start")
        return tcp_check(src, "connect", host, str(CHECK_PORT), str(seconds))
    finally:
        listener.kill()
        listener.wait()


def punch(a: Placement, b: Placement, a_public: str, b_public: str, port: int, seconds: float = 10.0) -> list[str]:
    """A TCP simultaneous open between A and B through their NATs (each binds `port` and dials the other's
    router at `port`, as DCUtR does with the NAT-observed addresses); both answers."""
    started = time.monotonic()
    procs = [subprocess.Popen([*p.prefix, sys.executable, "-m", "simulations.emulation.tcp_check", "punch",
                               p.host, str(port), peer, str(port), str(seconds)], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
             for p, peer in ((a, b_public), (b, a_public))]
    answers = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 30)
        answers.append(out.strip().splitlines()[-1] if out.strip() else f"no answer (exit {proc.returncode})")
    log.debug("punch took %.1f s: %s", time.monotonic() - started, answers)
    return answers


@dataclass(frozen=True)
class Sent:
    study: str
    manifest: str
    files: list[Path]
    seconds: float  # from POST /share to the verified receipt seen in the sender's outbox


def ingest_and_share(cluster: Cluster, sender: NodeProc, recipient: NodeProc, folder: Path,
                     timeout: float = RECEIPT_TIMEOUT) -> Sent:
    """Ingest the DICOM files in `folder` at `sender`, share the study with `recipient`'s organisation (urgent)
    and wait (polling its outbox, bounded) for the recipient's verified receipt at the sender."""
    import pydicom

    files = sorted(folder.rglob("*.dcm"))
    ingested = json.loads(str(cluster.cli(sender, "ingest", str(folder), "--no-progress", "--json")))
    if ingested.get("instances") != len(files):
        raise UnavailableError(f"{sender.org} ingested {ingested.get('instances')} of {len(files)} instances")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    started = time.monotonic()
    shared = cluster.call(sender, "POST", "/share", {"study": study, "to": [recipient.org], "priority": "urgent"})
    if not isinstance(shared, dict):
        raise UnavailableError("POST /share did not answer an object")
    manifest = str(shared["manifest_id"])
    deadline = started + timeout
    while not receipt_verified(cluster, sender, manifest, recipient.org):
        if time.monotonic() > deadline:
            raise UnavailableError(f"no verified receipt from {recipient.org} at {sender.org} within {timeout:g} s")
        time.sleep(POLL)  # polling a real process's visible state, bounded by the deadline
    return Sent(study, manifest, files, time.monotonic() - started)


def receipt_verified(cluster: Cluster, sender: NodeProc, manifest: str, org: str) -> bool:
    rows = cluster.call(sender, "GET", "/outbox")
    if not isinstance(rows, list):
        raise UnavailableError("GET /outbox did not answer a list")
    row = next((r for r in rows if isinstance(r, dict) and r.get("manifest_id") == manifest), None)
    return row is not None and bool(row["recipients"].get(org, {}).get("receipt_verified"))


def exported_bytes(cluster: Cluster, node: NodeProc, study: str, out: Path) -> list[bytes]:
    """The study's DICOM files as `node` exports them (byte-exact export), sorted."""
    cluster.cli(node, "export", study, str(out))
    return sorted(p.read_bytes() for p in out.rglob("*.dcm"))


def link_bytes(place: Placement, dev: str = "eth0") -> int:
    """Bytes received plus sent on `dev` in a placement's namespace (the kernel's counters)."""
    out = subprocess.run([*place.prefix, "ip", "-j", "-s", "link", "show", dev], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])


def tcp_peers(place: Placement) -> set[str]:
    """Remote IPv4 addresses of the established TCP connections in a placement's namespace (`ss`)."""
    out = subprocess.run([*place.prefix, "ss", "-Htn", "state", "established"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    peers = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            peers.add(fields[-1].rsplit(":", 1)[0])
    return peers


def send_in_clear(src: Placement, dst: Placement, path: Path, seconds: float = 60.0) -> int:
    """Send a file's bytes unencrypted over plain TCP from `src` to `dst` (a control for captures); bytes
    received."""
    sink = subprocess.Popen([*dst.prefix, sys.executable, "-m", "simulations.emulation.tcp_check", "sink",
                             "0.0.0.0", str(CHECK_PORT), str(seconds)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert sink.stdout is not None  # Popen with stdout=PIPE
        if sink.stdout.readline().strip() != "READY":
            raise UnavailableError("the TCP sink did not start")
        tcp_check(src, "send", dst.host, str(CHECK_PORT), str(path), str(seconds), timeout=seconds + 10)
        out, _ = sink.communicate(timeout=seconds)
        return int(out.strip().splitlines()[-1])
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def dropped_inbound(router: NatRouter) -> int:
    """Packets a NAT router dropped from its public side that belonged to no tracked connection (its INPUT
    drop rule's counter: unsolicited SYNs, such as a hole punch that found no mapping)."""
    out = subprocess.run(["ip", "netns", "exec", router.ns, "iptables", "-L", "INPUT", "-v", "-n", "-x"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "DROP" and fields[5] == PUBLIC_IF:
            return int(fields[0])
    raise UnavailableError(f"no inbound DROP rule on {router.ns}")
