"""A real Orthanc (/usr/sbin/Orthanc) for tests: its own config, storage folder and free ports.

Orthanc 1.10 has no bind-address option, so its DICOM port listens on every
interface; the HTTP API answers only local clients (RemoteAccessAllowed is
false), and the ports are picked free at run time.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshnode.demo.workspace import free_tcp_port

ORTHANC = "/usr/sbin/Orthanc"
START_TIMEOUT = 60.0
#: the AE title the end-to-end tests give Orthanc as the receiving organisation's (RJ1's) PACS
PACS_AE = "RJ1_PACS"


@dataclass
class Orthanc:
    root: Path
    ae_title: str = "ORTHANC"
    http_port: int = field(default_factory=free_tcp_port)
    dicom_port: int = field(default_factory=free_tcp_port)
    #: Orthanc's OverwriteInstances: a second C-STORE of a SOP Instance UID it holds replaces it (default: kept)
    overwrite: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which(ORTHANC) is not None or Path(ORTHANC).exists()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicom-mesh test PACS",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "Plugins": [],
            "StableAge": 1,
            "OverwriteInstances": self.overwrite,
            "HttpTimeout": 30,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> None:
        config = self.write_config()
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see {self.root / 'orthanc.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError("Orthanc did not start") from None
                time.sleep(0.1)  # polling a real process's readiness

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            data = response.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def instances(self) -> list[str]:
        ids: list[str] = self.get("/instances")
        return ids

    def instance_file(self, instance_id: str) -> bytes:
        data: bytes = self.get(f"/instances/{instance_id}/file")
        return data

    def sop_instance_uids(self) -> set[str]:
        return {str(self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]) for i in self.instances()}
