"""Helpers for the HTTP tests: nodes with [http] on, users, a real webhook receiver."""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from meshnode.dicom import synthetic
from meshnode.demo.identity import Node
from meshnode.demo.mesh import MeshDemo


def enable_http(node: Node, extra: str = "") -> None:
    """Turn on the node's HTTP listener on a free port (and add more node.toml text)."""
    with open(node.home / "node.toml", "a", encoding="utf-8") as f:
        f.write(f'\n[http]\nlisten = "127.0.0.1:0"\n{extra}\n')


def http_url(node: Node) -> str:
    return str(json.loads((node.home / "http.json").read_text())["url"])


def add_user(mesh: MeshDemo, node: Node, name: str, *roles: str) -> str:
    args = [a for r in roles for a in ("--role", r)]
    return str(mesh.cli(node, "users", "add", name, *args)["token"])


def study_files(root: Path, name: str, *, slices: int, seed: int, patient_id: str, patient_name: str,
                study_date: str, rows: int = 128, columns: int = 128, dx: bool = False) -> list[Path]:
    """A synthetic study with a chosen patient and date (the generator's date is fixed)."""
    out = root / name
    if dx:
        files = synthetic.generate_dx_study(out, images=slices, rows=rows, columns=columns, seed=seed,
                                            patient_id=patient_id, patient_name=patient_name)
    else:
        files = synthetic.generate_ct_study(out, slices=slices, rows=rows, columns=columns, seed=seed,
                                            patient_id=patient_id, patient_name=patient_name)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyDate = study_date
        ds.save_as(f, enforce_file_format=True)
    return files


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records POSTs; the first `fail_first` get HTTP 500."""

    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[str]:
        return [json.loads(r.body)["event"] for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
