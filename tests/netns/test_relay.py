"""Studies both ways between two organisations behind NAT, through a public relay (real nodes, real NAT).

simulations/emulation/reach.py builds it: the directory and a relay node (role relay, `[reach]
relay_service = true`) in the public namespace, A and B each behind its own MASQUERADE router with no
inbound port open (tests/netns/test_nat_network.py checks that with plain TCP), `[reach] reachability =
"private"`, the relay in `relays`, hole punching off: the relay is the only way between them.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from meshnode.dicom import synthetic
from simulations.emulation.reach import (
    ReachMesh,
    exported_bytes,
    ingest_and_share,
    link_bytes,
    send_in_clear,
    tcp_peers,
)
from simulations.emulation.shaping import Placement, Rate

pytestmark = [pytest.mark.netns]

RATE = Rate(25e6, 25e6)  # 200 Mbit/s on every link: shaped, and quick enough
SLICES = 6
CAPTURE_TIMEOUT = 30.0
WINDOW = 64


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory, netns_ok: None) -> Iterator[ReachMesh]:
    mesh = ReachMesh(tmp_path_factory.mktemp("relayed"), RATE, nat=True, hole_punching=False)
    try:
        mesh.build_network()
        mesh.start()
        yield mesh
    finally:
        mesh.close()


def study(folder: Path, seed: int, patient: str) -> Path:
    synthetic.generate_ct_study(folder, slices=SLICES, seed=seed, patient_name=patient)
    return folder


@pytest.mark.parametrize("direction", ["A to B", "B to A"])
def test_a_study_crosses_both_nats_through_the_relay_byte_exact(relayed: ReachMesh, tmp_path: Path,
                                                                direction: str) -> None:
    cluster, relay, a, b = relayed.nodes()
    sender, recipient = (a, b) if direction == "A to B" else (b, a)
    folder = study(tmp_path / "study", seed=161 if sender is a else 162, patient=f"RELAYED^{sender.org}")
    before = link_bytes(relay.placement)
    sent = ingest_and_share(cluster, sender, recipient, folder)  # returns once the receipt is verified at the sender
    assert exported_bytes(cluster, recipient, sent.study, tmp_path / "export") == sorted(
        f.read_bytes() for f in sent.files)
    size = sum(len(f.read_bytes()) for f in sent.files)
    assert link_bytes(relay.placement) - before >= 2 * size  # every byte went in to the relay and out again
    others = {relayed.routers[o].public_ip for o in relayed.routers if o != sender.org}
    assert not tcp_peers(sender.placement) & others  # and no direct connection carried it


@contextmanager
def capture(place: Placement, pcap: Path) -> Iterator[None]:
    """tcpdump on the placement's eth0, whole packets, from when it listens until the block ends."""
    dump = subprocess.Popen([*place.prefix, "tcpdump", "-i", "eth0", "-s", "0", "-U", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert dump.stderr is not None  # Popen with stderr=PIPE
        line = dump.stderr.readline()  # "tcpdump: listening on eth0 ..." once it captures
        assert b"listening on" in line, line
        yield
    finally:
        dump.send_signal(signal.SIGINT)
        try:
            dump.wait(CAPTURE_TIMEOUT)
        except subprocess.TimeoutExpired:
            dump.kill()
            dump.wait()


def leaks(captured: bytes, patient: str, pixels: list[bytes]) -> list[str]:
    """What of the study a capture shows in the clear: the DICOM preamble marker, the patient's name, pixel
    data. Any 64-byte window of the pixel data holds a whole 32-byte piece starting at a multiple of 32, so
    looking for those pieces at every offset of the capture finds every 64-byte window (and more)."""
    found = []
    # the end of a PS3.10 preamble (pydicom writes 128 zero bytes) and its marker: 20 bytes, which random
    # ciphertext matches by chance with odds of about 2**-160 per offset (4 bytes alone: ~0.1 % per run)
    if bytes(16) + b"DICM" in captured:
        found.append("DICM")
    if patient.encode() in captured:
        found.append("patient name")
    half = WINDOW // 2
    pieces = {p[i:i + half] for p in pixels for i in range(0, len(p) - half + 1, half)}
    if any(captured[i:i + half] in pieces for i in range(len(captured) - half + 1)):
        found.append("pixel data")
    return found


def test_the_relay_sees_only_ciphertext(relayed: ReachMesh, tmp_path: Path, tcpdump_ok: None) -> None:
    """A capture of everything on the relay's interface during a transfer holds no DICOM preamble marker, no
    patient name and no 64-byte window of the study's pixel data, though the whole study passed through it.
    The control: the same capture while one of the files crosses the same interface over plain TCP finds
    all three (so the check can fail)."""
    cluster, relay, a, b = relayed.nodes()
    patient = "CIPHERTEXT^ONLY^PATIENT"
    folder = study(tmp_path / "study", seed=163, patient=patient)
    with capture(relay.placement, tmp_path / "relay.pcap"):
        sent = ingest_and_share(cluster, a, b, folder)
    captured = (tmp_path / "relay.pcap").read_bytes()
    pixels = [bytes(pydicom.dcmread(f).PixelData) for f in sent.files]
    assert len(captured) >= sum(len(p) for p in pixels)  # the study's bytes did cross this interface
    assert leaks(captured, patient, pixels) == []
    with capture(relay.placement, tmp_path / "control.pcap"):
        assert send_in_clear(a.placement, relay.placement, sent.files[0]) == sent.files[0].stat().st_size
    assert leaks((tmp_path / "control.pcap").read_bytes(), patient, pixels[:1]) == [
        "DICM", "patient name", "pixel data"]
