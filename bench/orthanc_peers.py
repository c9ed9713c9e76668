"""bench/orthanc_peers.py: Orthanc A -> Orthanc B with `POST /peers/B/store`, the baseline of node -> node.

    .venv/bin/python bench/orthanc_peers.py [--slices 300] [--repeat 3] [--folder DIR]

Two Orthanc processes (Debian's /usr/sbin/Orthanc), each with its own JSON
configuration, storage folder and loopback HTTP port (DICOM server off:
peers talk HTTP). A's configuration names B in OrthancPeers. The study is
uploaded to A through its REST API (the same files the nodes get); each run
then times `POST /peers/B/store` of the study with "Synchronous": true (the
call returns when the job has ended) and checks that B holds every instance
(the SOP Instance UIDs sent, no more, no fewer). Between runs the study is
deleted from B. Orthanc keeps its defaults otherwise (SyncStorageArea: B
fsyncs each file it stores, as the node does). Best of N.

Importable: `orthanc_peers_transfer(folder, work, repeat)` returns a TransferResult.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402
import requests  # noqa: E402

from bench.common import ensure_system_packages, free_port, print_table  # noqa: E402
from bench.dimse_baselines import TransferResult, study_files  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
STARTUP_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 900.0
STOP_TIMEOUT = 10.0


@dataclass
class Orthanc:
    """One Orthanc process on 127.0.0.1 with its own configuration and storage."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: IO[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.log.close()


def start_orthanc(work: Path, name: str, port: int, extra: dict[str, object]) -> Orthanc:
    storage = work / f"orthanc-{name}"
    storage.mkdir(parents=True)
    config = {
        "Name": f"bench-{name}", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": port, "DicomServerEnabled": False, "DicomPort": free_port(), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "StorageCompression": False,
        "HttpCompressionEnabled": False, "KeepAlive": True, "Plugins": [], **extra,
    }
    path = storage / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(work / f"orthanc-{name}.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Orthanc(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            if requests.get(server.url + "/system", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"Orthanc {name} did not start; see {work / f'orthanc-{name}.log'}")
        time.sleep(0.1)  # polling a starting server


def orthanc_version(server: Orthanc) -> str:
    return str(requests.get(server.url + "/system", timeout=10).json().get("Version", "?"))


def instance_uids(server: Orthanc, study_id: str) -> set[str]:
    response = requests.get(f"{server.url}/studies/{study_id}/instances", timeout=60)
    if response.status_code == 404:
        return set()
    response.raise_for_status()
    return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in response.json()}


class OrthancPair:
    """Orthanc A (holding the study) and B (empty), A's configuration naming B as a peer."""

    def __init__(self, work: Path, files: list[Path]) -> None:
        port_b = free_port()
        self.b = start_orthanc(work, "B", port_b, {})
        try:
            self.a = start_orthanc(work, "A", free_port(), {
                "OrthancPeers": {"B": [f"http://127.0.0.1:{port_b}/"]}})
        except BaseException:
            self.b.stop()
            raise
        self.version = orthanc_version(self.a)
        study_ids = set()
        with requests.Session() as s:
            for f in files:
                response = s.post(self.a.url + "/instances", data=f.read_bytes(), timeout=60)
                response.raise_for_status()
                study_ids.add(str(response.json()["ParentStudy"]))
        if len(study_ids) != 1:
            raise RuntimeError(f"the files name {len(study_ids)} studies in Orthanc A")
        self.study = study_ids.pop()
        self.expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        if instance_uids(self.a, self.study) != self.expected:
            raise RuntimeError("Orthanc A does not hold every instance uploaded")

    def store(self) -> float:
        """Seconds of one synchronous POST /peers/B/store of the study; B is checked, then emptied."""
        if instance_uids(self.b, self.study):
            raise RuntimeError("Orthanc B is not empty before the run")
        started = time.perf_counter()
        response = requests.post(f"{self.a.url}/peers/B/store",
                                 data=json.dumps({"Resources": [self.study], "Synchronous": True}),
                                 timeout=TRANSFER_TIMEOUT)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        held = instance_uids(self.b, self.study)
        if held != self.expected:
            raise RuntimeError(f"Orthanc B holds {len(held & self.expected)} of {len(self.expected)} instances "
                               f"(and {len(held - self.expected)} others)")
        requests.delete(f"{self.b.url}/studies/{self.study}", timeout=60).raise_for_status()
        return seconds

    def close(self) -> None:
        self.a.stop()
        self.b.stop()


def orthanc_peers_transfer(folder: Path, work: Path, repeat: int = 3) -> tuple[TransferResult, str]:
    """Best of `repeat` synchronous /peers/B/store runs of the study in `folder`, and Orthanc's version."""
    ensure_system_packages("orthanc")
    files = study_files(folder)
    pair = OrthancPair(work, files)
    try:
        seconds = min(pair.store() for _ in range(repeat))
    finally:
        pair.close()
    return TransferResult(seconds, sum(f.stat().st_size for f in files), len(files)), pair.version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="an existing study folder instead of a generated CT")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-orthanc-peers-"))
    try:
        folder = args.folder
        if folder is None:
            from meshnode.dicom import synthetic

            folder = work / "study"
            synthetic.generate_ct_study(folder, slices=args.slices, seed=1)
        result, version = orthanc_peers_transfer(folder, work, args.repeat)
        print_table(f"Orthanc {version} A -> B, POST /peers/B/store (synchronous), best of {args.repeat}",
                    ["images", "MB", "seconds", "MB/s", "images/s"],
                    [[result.images, f"{result.bytes / 1e6:,.1f}", f"{result.seconds:.3f}",
                      f"{result.mb_per_s:,.1f}", f"{result.images_per_s:,.0f}"]])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
