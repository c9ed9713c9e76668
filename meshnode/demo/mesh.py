"""The mesh scenario: authority, directory and three organisations' nodes as real processes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from meshnode.control.client import ControlClient
from meshnode.dicom import synthetic
from meshnode.demo.identity import IdentityDemo, Node
from meshnode.demo.workspace import Workspace
from meshnode.home import NodeHome


@dataclass
class MeshDemo:
    ws: Workspace
    identity: IdentityDemo = field(init=False)
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.identity = IdentityDemo(self.ws)

    def setup(self, orgs: list[tuple[str, str, str]], *, start: bool = True,
              config: Mapping[str, object] | None = None) -> dict[str, Node]:
        """Authority, directory, roster, and one node per (name, org, org name), started unless start=False.

        `config` sets node.toml keys (dotted, e.g. {"trust.roster_refresh_seconds": 2}) for every node.
        """
        d = self.identity
        d.create_authority()
        d.start_directory()
        d.publish_roster()
        for name, org, org_name in orgs:
            node = d.add_node(name, org, org_name, listen="/ip4/127.0.0.1/tcp/0")
            if config:
                self.configure(node, config)
            if start:
                self.start(node)
        return d.nodes

    def configure(self, node: Node, values: Mapping[str, object]) -> None:
        """Set node.toml keys, dotted ({"limits.upload_mb_per_s": 30}), as `meshnode config set` does: the
        node's own reader checks them before the file is written (comments kept); a ConfigError otherwise."""
        NodeHome(node.home).set_config(values)

    def audit(self, node: Node) -> list[dict[str, Any]]:
        out = self.ws.run("meshnode", "audit", "export", "--json", "--home", str(node.home)).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def start(self, node: Node) -> list[str]:
        proc, addrs = self.ws.start_node(node.home, node.name)
        self.procs[node.name] = proc
        node.addr = addrs[0]
        return addrs

    def stop(self, node: Node) -> int:
        return self.ws.stop(self.procs.pop(node.name))

    def node(self, name: str) -> Node:
        return self.identity.nodes[name]

    def cli(self, node: Node, *args: str) -> Any:
        return self.ws.run("meshnode", *args, "--home", str(node.home), "--json").json()

    def generate_and_ingest(self, node: Node, slices: int, seed: int = 1, rows: int = 512,
                            columns: int = 512) -> tuple[str, list[Path]]:
        files = synthetic.generate_ct_study(self.ws.root / f"study-{seed}", slices=slices, seed=seed, rows=rows,
                                            columns=columns)
        self.cli(node, "ingest", str(files[0].parent), "--no-progress")
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        if not any(s["study_uid"] == uid for s in self.cli(node, "studies")):
            raise LookupError(f"study {uid} was not ingested")
        return uid, files

    def share(self, node: Node, study: str, to: list[str], priority: str = "urgent") -> str:
        result = self.cli(node, "share", study, "--to", ",".join(to), "--priority", priority)
        return str(result["manifest_id"])

    def wait_for(self, check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(interval)  # polling a real process's visible state

    def inbox_entry(self, node: Node, manifest_id: str) -> dict[str, Any] | None:
        return next((r for r in self.cli(node, "inbox") if r["manifest_id"] == manifest_id), None)

    def delivered(self, sender: Node, manifest_id: str, orgs: list[str]) -> bool:
        """Asked of the node's control API from this process, not with `meshnode outbox`: this is what
        every wait polls, and a CLI process costs about 0.3 CPU-seconds to start, which on a 2-core
        machine takes a real share of the CPU from the nodes being waited for."""
        rows = ControlClient(sender.home).call("GET", "/outbox")
        row = next((r for r in rows if r["manifest_id"] == manifest_id), None)
        return row is not None and all(row["recipients"].get(o, {}).get("receipt_verified") for o in orgs)

    def close(self) -> None:
        self.ws.close()
