"""bench/relay_link.py: one study A -> B direct vs through a relay, every link shaped by tc tbf at one rate.

    .venv/bin/python bench/relay_link.py [--slices 100] [--mbit 200]

The network is simulations/emulation/reach.py's (on shaping.py and cluster.py, reused, not copied): a
public namespace with a bridge where the directory and a relay node (role relay, `[reach] relay_service =
true`) run, and two organisations' nodes A and B. Every link (the relay's, A's, B's; a NAT router's public
side where there is one) is shaped with tc tbf at --mbit up and down.

Measured, in this order, each on a freshly built network:
- direct: A and B on the bridge with public addresses;
- relayed: A and B each behind its own NAT router (MASQUERADE, no inbound port), `reachability =
  "private"`, hole punching off, so every byte goes A -> relay -> B over Circuit Relay v2.
Each is A's own audit log from `share` to B's verified receipt (every block durable and verified at B), as
bench/shaped_link.py times it.

Verdict (bench/summary.py): relayed >= half of direct on the same link. Through the relay the study
crosses two shaped hops instead of one (A's uplink and the relay's downlink, then the relay's uplink and
B's downlink), each at the same rate, so the link alone allows the same figure; what the relay costs is
its CPU (every byte is decrypted from A's connection to it and encrypted again onto B's, each leg with
its own Noise and yamux, around the end-to-end Noise it cannot read) and the longer round trip.
Needs root, `ip`, `tc` and iptables; when they are missing the bench prints why and records nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table
from bench.shaped_link import share_seconds
from bench.summary import at_least, record
from protocol.errors import UnavailableError
from simulations.emulation.reach import ReachMesh, ingest_and_share
from simulations.emulation.shaping import Rate, nat_problem

RELAY_SHARE_OF_DIRECT = 0.5


def measure(work: Path, study: Path, size: int, mbit: float, nat: bool) -> float:
    """MB/s of one study A -> B, direct (nat=False) or through the relay (nat=True, hole punching off)."""
    mesh = ReachMesh(work, Rate(mbit * 1e6 / 8, mbit * 1e6 / 8), nat=nat, hole_punching=False)
    try:
        mesh.build_network()
        mesh.start()
        cluster, _, a, b = mesh.nodes()
        sent = ingest_and_share(cluster, a, b, study)
        return size / 1e6 / share_seconds(cluster, a, sent.manifest, b.org)
    finally:
        mesh.close()


def run(work: Path, slices: int, mbit: float) -> tuple[float, float, int] | str:
    """(direct MB/s, relayed MB/s, study bytes), or why the network cannot be built here."""
    problem = nat_problem()
    if problem is not None:
        return problem
    from meshnode.dicom import synthetic

    files = synthetic.generate_ct_study(work / "study", slices=slices, seed=16)
    size = sum(f.stat().st_size for f in files)
    try:
        direct = measure(work / "direct", work / "study", size, mbit, nat=False)
        relayed = measure(work / "relayed", work / "study", size, mbit, nat=True)
    except UnavailableError as exc:
        return f"the run failed: {exc}"
    return direct, relayed, size


def report(result: tuple[float, float, int] | str, slices: int, mbit: float) -> None:
    if isinstance(result, str):
        print(f"\nrelay vs direct ({mbit:g} Mbit/s, network namespaces): SKIPPED: {result}")
        return
    direct, relayed, size = result
    print_table(f"One study A -> B over {mbit:g} Mbit/s tc tbf links, {slices}-slice CT, {size / 1e6:,.0f} MB "
                "(share to verified receipt)",
                ["path", "MB/s", "share of direct"],
                [["direct (both nodes public)", f"{direct:,.1f}", "1.00"],
                 ["through the relay (both behind NAT, hole punching off)", f"{relayed:,.1f}",
                  f"{relayed / direct:.2f}"]])
    record(at_least(f"relayed A -> B >= {RELAY_SHARE_OF_DIRECT:.0%} of direct over {mbit:g} Mbit/s links",
                    relayed, RELAY_SHARE_OF_DIRECT * direct, "MB/s", peer=f"direct {direct:,.1f} MB/s",
                    peer_value=direct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--mbit", type=float, default=200.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    try:
        report(run(work, args.slices, args.mbit), args.slices, args.mbit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
