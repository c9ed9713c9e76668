"""bench/wado.py: WADO-RS retrieval of one CT study, meshnode vs Orthanc (orthanc-dicomweb), same run.

    .venv/bin/python bench/wado.py [--slices 300] [--repeat 3] [--folder DIR]

Both servers hold the same study (a generated 512x512x16-bit CT unless
--folder is given) and run as their own processes on 127.0.0.1 (free ports,
own storage folders):

- meshnode: a real node (authority, directory, `meshnode run` with [http]),
  the study ingested with `meshnode ingest`, a read-only API token;
- Orthanc from Debian with the orthanc-dicomweb plugin and its own JSON
  configuration, the study uploaded through its REST API.

Two measurements per server, alternating servers, after one warm-up each
(both read from the page cache):
  client: dicomweb-client `retrieve_study` (download, split the multipart
          body, parse every instance with pydicom), what a real client does;
  wire:   one GET of the same multipart body with requests, streamed and
          discarded: the server's own throughput.
MB/s counts the DICOM bytes of the study. Every run checks the instance count;
in the warm-up, every part of each server's multipart body is compared byte for
byte with the files it was given (meshnode must match all of them; Orthanc's
count is printed). Orthanc's and the DICOMweb plugin's versions are read from
the server (GET /system, GET /plugins/dicom-web). Verdicts (bench/summary.py):
meshnode >= Orthanc, client side and wire, from this run's figures.
Importable: `measure_wado(folder, work, repeat)` returns rows for a combined table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402
import requests  # noqa: E402
from dicomweb_client.api import DICOMwebClient  # noqa: E402

from bench.common import ensure_system_packages, free_port, print_table  # noqa: E402
from bench.summary import at_least, record  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STARTUP_TIMEOUT = 60.0
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class Server:
    name: str
    root: str  # DICOMweb root URL
    headers: dict[str, str]


@dataclass(frozen=True)
class WadoRow:
    server: str
    method: str
    seconds: float
    bytes: int
    images: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    def as_list(self, baseline: float | None) -> list[object]:
        ratio = f"{self.mb_per_s / baseline:.2f}x" if baseline else "-"
        return [self.server, self.method, self.images, f"{self.bytes / 1e6:.1f}", f"{self.seconds:.3f}",
                f"{self.mb_per_s:.1f}", f"{self.images / self.seconds:.0f}", ratio]


def _wait(check: Any, what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:g} s")
        time.sleep(0.1)  # polling a starting server


def start_orthanc(work: Path, files: list[Path]) -> tuple[subprocess.Popen[bytes], Server]:
    storage = work / "orthanc-storage"
    storage.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": port, "DicomPort": free_port(), "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "Plugins": [DICOMWEB_PLUGIN],
        "StorageCompression": False, "HttpCompressionEnabled": False, "KeepAlive": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _wait(lambda: requests.get(base + "/system", timeout=2).ok, "Orthanc")
    with requests.Session() as s:
        for f in files:
            s.post(base + "/instances", data=f.read_bytes(), timeout=60).raise_for_status()
    return proc, Server(orthanc_name(base), base + "/dicom-web", {})


def orthanc_name(base: str) -> str:
    """'Orthanc <version> + DICOMweb <version>', as the running server reports them."""
    version = requests.get(base + "/system", timeout=10).json().get("Version", "?")
    plugin = requests.get(base + "/plugins/dicom-web", timeout=10)
    plugin_version = plugin.json().get("Version", "?") if plugin.ok else "?"
    return f"Orthanc {version} + DICOMweb {plugin_version}"


def multipart_parts(content_type: str, body: bytes) -> list[memoryview]:
    """The payloads of a multipart/related body (RFC 2046 5.1.1), as views into `body`."""
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";")
                     if p.strip().lower().startswith("boundary=")), "")
    if not boundary:
        raise RuntimeError(f"no boundary in Content-Type {content_type!r}")
    view = memoryview(body)
    delimiter = b"--" + boundary.encode()
    parts: list[memoryview] = []
    at = body.find(delimiter)
    while at >= 0:
        start = at + len(delimiter)
        if body[start:start + 2] == b"--":  # the close delimiter
            return parts
        headers_end = body.find(b"\r\n\r\n", start)
        following = body.find(b"\r\n" + delimiter, headers_end)
        if headers_end < 0 or following < 0:
            raise RuntimeError("truncated multipart body")
        parts.append(view[headers_end + 4:following])
        at = following + 2
    raise RuntimeError("multipart body without a close delimiter")


def exact_parts(files: list[Path], content_type: str, body: bytes) -> int:
    """How many of `files` came back byte for byte, each matched to one part (raises on a count mismatch)."""
    parts = multipart_parts(content_type, body)
    if len(parts) != len(files):
        raise RuntimeError(f"{len(parts)} parts in the body, {len(files)} files sent")
    by_digest: dict[bytes, list[memoryview]] = {}
    for part in parts:
        by_digest.setdefault(hashlib.sha256(part).digest(), []).append(part)
    exact = 0
    for f in files:
        data = f.read_bytes()
        candidates = by_digest.get(hashlib.sha256(data).digest(), [])
        match = next((c for c in candidates if c == data), None)  # the bytes themselves, not only the digest
        if match is not None:
            candidates.remove(match)
            exact += 1
    return exact


def start_meshnode(work: Path, folder: Path) -> tuple[Any, Server]:
    from meshnode.demo.mesh import MeshDemo
    from meshnode.demo.workspace import Workspace

    mesh = MeshDemo(Workspace(work / "mesh"))
    node = mesh.setup([("a", "RGT", "Bench org")], start=False)["a"]
    with open(node.home / "node.toml", "a", encoding="utf-8") as f:
        f.write('\n[http]\nlisten = "127.0.0.1:0"\n')
    mesh.start(node)
    mesh.cli(node, "ingest", str(folder), "--no-progress")
    token = mesh.cli(node, "users", "add", "bench", "--role", "read")["token"]
    url = json.loads((node.home / "http.json").read_text())["url"]
    return mesh, Server("meshnode", url + "/dicomweb", {"Authorization": f"Bearer {token}"})


def client_run(server: Server, study: str, expected: int) -> float:
    client = DICOMwebClient(server.root, headers=server.headers)
    started = time.perf_counter()
    instances = client.retrieve_study(study)
    seconds = time.perf_counter() - started
    if len(instances) != expected:
        raise RuntimeError(f"{server.name}: {len(instances)} instances, expected {expected}")
    return seconds


def wire_run(server: Server, study: str) -> tuple[float, int]:
    """One timed GET of the study's multipart body, streamed and discarded: (seconds, bytes)."""
    started = time.perf_counter()
    with requests.get(f"{server.root}/studies/{study}", headers={**server.headers, "Accept": ACCEPT},
                      stream=True, timeout=300) as response:
        response.raise_for_status()
        size = 0
        for chunk in response.iter_content(chunk_size=1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def exact_run(server: Server, study: str, files: list[Path]) -> int:
    """Untimed: GET the study's body whole and count the files that came back byte for byte."""
    response = requests.get(f"{server.root}/studies/{study}", headers={**server.headers, "Accept": ACCEPT},
                            timeout=300)
    response.raise_for_status()
    return exact_parts(files, response.headers.get("Content-Type", ""), response.content)


def measure_wado(folder: Path, work: Path, repeat: int = 3) -> list[WadoRow]:
    """Rows for meshnode and Orthanc (client and wire), best of `repeat` after a warm-up."""
    ensure_system_packages("orthanc", "orthanc-dicomweb")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    total = sum(f.stat().st_size for f in files)
    orthanc, orthanc_server = start_orthanc(work, files)
    mesh, mesh_server = start_meshnode(work, folder)
    try:
        servers = [mesh_server, orthanc_server]
        times: dict[tuple[str, str], list[float]] = {}
        for server in servers:  # warm-up, and every part compared byte for byte with the files
            client_run(server, study, len(files))
            exact = exact_run(server, study, files)
            print(f"{server.name}: {exact} of {len(files)} instances returned byte for byte")
            if server is mesh_server and exact != len(files):
                raise RuntimeError(f"meshnode returned {len(files) - exact} instance(s) not byte-exact")
        for _ in range(repeat):
            for server in servers:
                times.setdefault((server.name, "client"), []).append(client_run(server, study, len(files)))
                seconds, size = wire_run(server, study)
                if size < total:
                    raise RuntimeError(f"{server.name}: a body of {size} bytes for {total} bytes of DICOM")
                times.setdefault((server.name, "wire"), []).append(seconds)
        return [WadoRow(name, method, min(t), total, len(files)) for (name, method), t in times.items()]
    finally:
        mesh.close()
        orthanc.terminate()
        try:
            orthanc.wait(10)
        except subprocess.TimeoutExpired:
            orthanc.kill()


def print_rows(rows: list[WadoRow], title: str) -> None:
    baseline = {r.method: r.mb_per_s for r in rows if r.server.startswith("Orthanc")}
    print_table(title, ["server", "measure", "images", "MB", "seconds", "MB/s", "images/s", "vs Orthanc"],
                [r.as_list(baseline.get(r.method)) for r in sorted(rows, key=lambda r: (r.method, r.server))])


def report_wado(rows: list[WadoRow], repeat: int) -> None:
    """Print the rows of measure_wado and the meshnode / Orthanc ratios."""
    size = rows[0].bytes / 1e6
    print_rows(rows, f"WADO-RS retrieve study: {rows[0].images} instances, {size:.1f} MB, "
                     f"best of {repeat} (127.0.0.1, page cache warm)")
    verdicts = []
    for name in ("client", "wire"):
        mesh = next(r for r in rows if r.method == name and r.server == "meshnode")
        other = next(r for r in rows if r.method == name and r.server != "meshnode")
        verdicts.append(at_least(f"WADO-RS retrieve of the study ({name}) >= Orthanc", mesh.mb_per_s, other.mb_per_s,
                                 "MB/s", peer=f"{other.server} {other.mb_per_s:,.1f} MB/s",
                                 peer_value=other.mb_per_s))
    print("best of N runs; the servers were measured alternately in the same run")
    record(*verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", type=Path, help="an existing study folder instead of a generated CT")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-wado-"))
    try:
        folder = args.folder
        if folder is None:
            from meshnode.dicom import synthetic

            folder = work / "study"
            synthetic.generate_ct_study(folder, slices=args.slices, seed=7)
        report_wado(measure_wado(folder, work, args.repeat), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
