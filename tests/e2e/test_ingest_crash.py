"""kill -9 an ingest at random points: the store stays consistent and re-running completes it."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from meshnode.dicom import synthetic
from meshnode.storage.node_storage import NodeStorage
from protocol.cid import CID

pytestmark = pytest.mark.e2e

KILLS = 20
SLICES = 400


def check_consistent(home: Path) -> int:
    """No partial block under a CID; every recorded instance complete; audit chain whole. Returns instances."""
    db = sqlite3.connect(home / "node.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    storage = NodeStorage.open(home)
    storage.blocks.recover(min_age_s=0)  # the killed writer is gone: its temp files are stale
    try:
        for item in storage.blocks.iter_cids():
            assert isinstance(item, CID), f"stray file {item}"
            assert item.matches(storage.blocks.get(item, verify=False)), f"partial block visible as {item}"
        count = 0
        for study in storage.metadata.studies():
            for inst in storage.metadata.instances(study.attributes.study_uid):
                size = sum(len(storage.blocks.get(c)) for c in inst.blocks)
                assert size == inst.size
                count += 1
        assert storage.verify_audit()[1] == []
        return count
    finally:
        storage.close()


def block_files(home: Path) -> int:
    """Blocks visible under their CID."""
    return sum(1 for _, _, files in os.walk(home / "store" / "blocks") for f in files if f.startswith("b"))


def progress(home: Path) -> int:
    """Blocks written so far: visible ones plus those staged in temp files."""
    tmp = home / "store" / "tmp"
    return block_files(home) + (len(os.listdir(tmp)) if tmp.exists() else 0)


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except FileNotFoundError:
            pass
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie (a dead worker stays a zombie until init reaps it)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def kill_after(cmd: list[str], home: Path, blocks: int, timeout: float = 60.0) -> bool:
    """Run cmd and SIGKILL it once `blocks` blocks are written. False if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if progress(home) >= blocks:
                workers = children(proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                # its worker processes die with it, instead of lingering (and writing) as orphans
                while any(alive(w) for w in workers):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"worker processes {workers} outlived the killed ingest")
                    time.sleep(0.01)  # polling for the processes to be gone
                return True
            if time.monotonic() > deadline:
                raise AssertionError("ingest made no progress")
            time.sleep(0.002)  # polling the store's state, not waiting for time to pass
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_during_ingest(tmp_path: Path) -> None:
    src = tmp_path / "ct"
    made = synthetic.generate_ct_study(src, slices=SLICES, rows=128, columns=128, seed=11)
    home = tmp_path / "node"
    subprocess.run([sys.executable, "-m", "meshnode.cli.main", "init", "--home", str(home), "--org", "RGT"],
                   check=True, capture_output=True)
    cmd = [sys.executable, "-m", "meshnode.cli.main", "ingest", str(src), "--home", str(home), "--no-progress",
           "--workers", "2"]
    rng = random.Random(20261129)
    total_blocks = 2 * SLICES
    seen_counts, killed = [], 0
    while killed < KILLS:
        committed = block_files(home)
        remaining = total_blocks - committed
        assert remaining > 1, "the ingest finished before every kill landed"
        # at most halfway through what is left: a kill aimed at the very last block can land after the final
        # commit (the store is polled every 2 ms), and then it interrupted nothing
        killed += kill_after(cmd, home, committed + rng.randint(1, max(1, min(remaining // 2, 200))))
        seen_counts.append(check_consistent(home))
    print("kills mid-ingest:", killed, "instances committed after each:", seen_counts)
    assert seen_counts == sorted(seen_counts)  # committed work is never lost
    assert seen_counts[-1] < SLICES  # the last kill interrupted it for real
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert check_consistent(home) == SLICES
    out = tmp_path / "out"
    study = pydicom.dcmread(made[0], stop_before_pixels=True).StudyInstanceUID
    subprocess.run([sys.executable, "-m", "meshnode.cli.main", "export", study, str(out), "--home", str(home)],
                   check=True, capture_output=True)
    assert sorted(p.read_bytes() for p in out.rglob("*.dcm")) == sorted(p.read_bytes() for p in made)
