"""The identity-plane scenario, one method per step (README demo and e2e test)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from meshnode.demo.workspace import Result, Workspace, free_tcp_port


@dataclass
class Node:
    name: str
    org: str
    org_name: str
    home: Path
    peer_id: str = ""
    serial: str = ""
    addr: str = ""


@dataclass
class IdentityDemo:
    ws: Workspace
    authority_key: str = ""
    directory_peer: str = ""
    directory_addr: str = ""
    directory_proc: subprocess.Popen[str] | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def auth_dir(self) -> str:
        return str(self.ws.root / "authority")

    @property
    def directory_home(self) -> Path:
        return self.ws.root / "directory"

    def create_authority(self) -> str:
        out = self.ws.run("meshadmin", "authority", "init", "--dir", self.auth_dir, "--json").json_dict()
        self.authority_key = str(out["authority_key"])
        return self.authority_key

    def start_directory(self) -> str:
        home = str(self.directory_home)
        out = self.ws.run("meshadmin", "directory", "init", "--home", home, "--authority-key",
                          self.authority_key, "--listen", "/ip4/127.0.0.1/tcp/0", "--json").json_dict()
        self.directory_peer = str(out["peer_id"])
        cert = str(self.ws.root / "directory-cert.cbor")
        self.ws.run("meshadmin", "issue", "--dir", self.auth_dir, "--node", self.directory_peer,
                    "--org", "MESHDIR", "--org-name", "dicom-mesh directory", "--role", "directory",
                    "--out", cert, "--json")
        self.ws.run("meshadmin", "directory", "install-cert", "--home", home, cert)
        self.directory_proc, addrs = self.ws.start_directory(self.directory_home)
        self.directory_addr = addrs[0]
        return self.directory_addr

    def publish_roster(self) -> dict[str, object]:
        return self.ws.run("meshadmin", "roster", "publish", "--dir", self.auth_dir, "--valid-hours", "24",
                           "--directory", self.directory_addr, "--json").json_dict()

    def add_node(self, name: str, org: str, org_name: str, listen: str | None = None,
                 role: str = "acute-trust") -> Node:
        node = Node(name, org, org_name, self.ws.root / name)
        node.addr = listen or f"/ip4/127.0.0.1/tcp/{free_tcp_port()}"
        out = self.ws.run("meshnode", "init", "--home", str(node.home), "--org", org, "--authority-key",
                          self.authority_key, "--directory", self.directory_addr, "--listen", node.addr,
                          "--json").json_dict()
        node.peer_id = str(out["peer_id"])
        cert = str(self.ws.root / f"{name}-cert.cbor")
        issued = self.ws.run("meshadmin", "issue", "--dir", self.auth_dir, "--node", node.peer_id,
                             "--org", org, "--org-name", org_name, "--role", role,
                             "--out", cert, "--json").json_dict()
        node.serial = str(issued["serial"])
        self.ws.run("meshnode", "certificate", "install", "--home", str(node.home), cert)
        self.nodes[name] = node
        return node

    def register(self, node: Node) -> dict[str, object]:
        return self.ws.run("meshnode", "directory", "register", "--home", str(node.home), "--json").json_dict()

    def resolve(self, node: Node, org: str) -> Result:
        return self.ws.run("meshnode", "directory", "resolve", org, "--home", str(node.home), "--json", check=False)

    def revoke(self, node: Node) -> dict[str, object]:
        return self.ws.run("meshadmin", "revoke", node.serial, "--dir", self.auth_dir,
                           "--reason", "key compromised (demo)", "--json").json_dict()

    def stop_directory(self) -> int:
        if self.directory_proc is None:
            return 0
        code = self.ws.stop(self.directory_proc)
        self.directory_proc = None
        return code
