"""kill -9 a node while four associations C-STORE into it (group commit): every instance whose C-STORE-RSP
said success is held after the crash, byte for byte; nothing recorded is partial; the node starts again and
takes the rest."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from meshnode.dicom import synthetic
from meshnode.storage.node_storage import NodeStorage
from protocol.cid import CID
from tests.e2e.dimse_tools import dataset_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CALLER = "MODALITY"
ROUTE_AE = "MESH_RJ1"
CT = "1.2.840.10008.5.1.4.1.1.2"
ASSOCIATIONS = 4
SLICES = 50  # per association (one study each)
KILLS = 3
JOIN_S = 60.0


def start(demo: MeshDemo, node: Node) -> int:
    demo.start(node)
    return int(json.loads((node.home / "dimse.json").read_text())["port"])


def sender(port: int, files: list[Path], acked: list[Path]) -> None:
    """One association: C-STORE the files in order; a file goes to `acked` once its response says success.
    Stops at the first failure or when the node goes away."""
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title=ROUTE_AE)
    if not assoc.is_established:
        return
    try:
        for f in files:
            status = assoc.send_c_store(f)
            if int(getattr(status, "Status", -1)) != 0:
                return
            acked.append(f)
    except Exception:  # noqa: BLE001 - the node was killed under us: what was acknowledged is recorded
        return
    finally:
        if assoc.is_established:
            assoc.release()


def check_after_crash(home: Path, acked: list[Path]) -> int:
    """Every acknowledged instance held and exact; every recorded instance whole; audit chain intact."""
    storage = NodeStorage.open(home)
    storage.blocks.recover(min_age_s=0)  # the killed node's temp files are stale
    try:
        for item in storage.blocks.iter_cids():
            assert isinstance(item, CID), f"stray file {item}"
            assert item.matches(storage.blocks.get(item, verify=False)), f"partial block visible as {item}"
        held: dict[str, bytes] = {}
        for study in storage.metadata.studies():
            for rec in storage.metadata.instances(study.attributes.study_uid):
                data = b"".join(storage.blocks.get(c) for c in rec.blocks)
                assert len(data) == rec.size and hashlib.sha256(data).digest() == rec.digest, "a recorded instance is partial"
                held[rec.sop_instance_uid] = dataset_bytes(data)
        contents = set(held.values())
        lost = [f.name for f in acked if dataset_bytes(f) not in contents]
        assert lost == [], "acknowledged with success, not held (byte for byte) after the crash"
        assert storage.verify_audit()[1] == []
        return len(held)
    finally:
        storage.close()


def test_kill_during_concurrent_c_stores(tmp_path: Path) -> None:
    studies = [synthetic.generate_ct_study(tmp_path / f"ct{i}", slices=SLICES, rows=128, columns=128, seed=30 + i)
               for i in range(ASSOCIATIONS)]
    demo = MeshDemo(Workspace(tmp_path / "mesh"))
    try:
        node = demo.setup([("a", "RGT", "Org A")], start=False)["a"]
        demo.configure(node, {"dimse.enabled": True, "dimse.port": 0})
        with open(node.home / "node.toml", "a") as fh:
            fh.write(f'\n[[caller]]\nae_title = "{CALLER}"\nallow = ["store"]\n'
                     f'\n[[route]]\nname = "rj1"\ncalled_ae = "{ROUTE_AE}"\nto = ["RJ1"]\nquiet_period_seconds = 3600\n')
        rng = random.Random(20261205)
        acked: list[list[Path]] = [[] for _ in studies]
        counts = []
        for _ in range(KILLS):
            port = start(demo, node)
            before = sum(map(len, acked))
            remaining = [files[len(done):] for files, done in zip(studies, acked)]
            threads = [threading.Thread(target=sender, args=(port, rest, done), daemon=True)
                       for rest, done in zip(remaining, acked)]
            for t in threads:
                t.start()
            target = before + rng.randint(10, 40)
            deadline = time.monotonic() + JOIN_S
            while sum(map(len, acked)) < target:
                assert time.monotonic() < deadline, "the C-STOREs made no progress"
                time.sleep(0.002)  # polling the senders' acknowledgements
            demo.procs.pop("a").kill()  # SIGKILL, mid-burst
            for t in threads:
                t.join(JOIN_S)
                assert not t.is_alive()
            everything = [f for done in acked for f in done]
            assert len(everything) < ASSOCIATIONS * SLICES, "the burst finished before the kill"
            counts.append(check_after_crash(node.home, everything))
        assert counts == sorted(counts)  # nothing once held is lost by a later crash
        # the node starts again and takes the rest
        port = start(demo, node)
        threads = [threading.Thread(target=sender, args=(port, files[len(done):], done), daemon=True)
                   for files, done in zip(studies, acked)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN_S)
        assert [len(done) for done in acked] == [SLICES] * ASSOCIATIONS
        held = sum(int(s["instances"]) for s in demo.cli(node, "studies"))
        assert held == ASSOCIATIONS * SLICES
    finally:
        demo.close()
