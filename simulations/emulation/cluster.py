"""An authority, a directory and one real node per organisation, each a process started through the CLIs.

The same steps an operator (and meshnode/demo) takes, re-implemented here
because simulations/ may not import tools/: `meshadmin authority init`,
`meshadmin directory init|install-cert|serve`, `meshadmin roster publish`,
`meshadmin issue`, `meshnode init`, `meshnode certificate install`,
`meshnode run`. Each process is started inside its organisation's placement
(a network namespace, or plain 127.0.0.1).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from protocol.config_reader import assignments
from protocol.errors import UnavailableError
from simulations.emulation.shaping import Placement

log = logging.getLogger(__name__)

MODULES = {"meshadmin": "tools.cli.main", "meshnode": "meshnode.cli.main"}
COMMAND_TIMEOUT = 120.0
PASSPHRASE = "meshsim emulation passphrase, never use in production"


@dataclass
class NodeProc:
    org: str
    kind: str
    home: Path
    placement: Placement
    peer_id: str = ""
    proc: subprocess.Popen[str] | None = None
    probe: subprocess.Popen[str] | None = None


@dataclass
class Cluster:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    services: list[subprocess.Popen[str]] = field(default_factory=list)
    authority_key: str = ""
    directory_addr: str = ""
    authority_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["MESHADMIN_PASSPHRASE"] = PASSPHRASE
        self.env.pop("MESHNODE_HOME", None)
        self.env.pop("MESHADMIN_AUTHORITY", None)
        self.env["PYTHONUNBUFFERED"] = "1"

    @property
    def auth_dir(self) -> str:
        return str(self.root / "authority")

    def run(self, placement: Placement, tool: str, *args: str) -> dict[str, object]:
        cmd = [*placement.prefix, sys.executable, "-m", MODULES[tool], *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT,
                              cwd=self.root, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise UnavailableError(f"`{tool} {' '.join(args[:3])} ...` exited {proc.returncode}: "
                                   f"{proc.stderr.strip()[-400:]}")
        out = proc.stdout.strip()
        value = json.loads(out) if out.startswith("{") else {}
        return value if isinstance(value, dict) else {}

    def start_service(self, placement: Placement, cmd: list[str], name: str) -> tuple[subprocess.Popen[str], list[str]]:
        log_file = open(self.root / f"{name}.log", "a")
        proc = subprocess.Popen([*placement.prefix, sys.executable, "-m", *cmd], stdout=subprocess.PIPE,
                                stderr=log_file, text=True, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL)
        log_file.close()
        self.services.append(proc)
        line = _readline(proc, proc.stdout, COMMAND_TIMEOUT)
        try:
            addrs = [str(a) for a in json.loads(line)["listening"]]
        except (ValueError, KeyError, TypeError):
            raise UnavailableError(f"{name} did not start ({line!r}); see {self.root / (name + '.log')}") from None
        return proc, addrs

    def start_authority_and_directory(self, placement: Placement) -> None:
        out = self.run(placement, "meshadmin", "authority", "init", "--dir", self.auth_dir, "--json")
        self.authority_key = str(out["authority_key"])
        home = str(self.root / "directory")
        listen = f"/ip4/{placement.host}/tcp/0"
        out = self.run(placement, "meshadmin", "directory", "init", "--home", home, "--authority-key",
                       self.authority_key, "--listen", listen, "--json")
        cert = str(self.root / "directory-cert.cbor")
        self.run(placement, "meshadmin", "issue", "--dir", self.auth_dir, "--node", str(out["peer_id"]), "--org",
                 "MESHDIR", "--org-name", "meshsim directory", "--role", "directory", "--out", cert, "--json")
        self.run(placement, "meshadmin", "directory", "install-cert", "--home", home, cert)
        _, addrs = self.start_service(placement, [MODULES["meshadmin"], "directory", "serve", "--home", home,
                                                  "--listen", listen], "directory")
        self.directory_addr = next((a for a in addrs if f"/ip4/{placement.host}/" in a), addrs[0])
        self.run(placement, "meshadmin", "roster", "publish", "--dir", self.auth_dir, "--valid-hours", "24",
                 "--directory", self.directory_addr, "--json")

    def add_node(self, node: NodeProc, config: Mapping[str, object]) -> None:
        p = node.placement
        out = self.run(p, "meshnode", "init", "--home", str(node.home), "--org", node.org, "--authority-key",
                       self.authority_key, "--directory", self.directory_addr, "--listen",
                       f"/ip4/{p.host}/tcp/0", "--json")
        node.peer_id = str(out["peer_id"])
        cert = str(self.root / f"{node.org}-cert.cbor")
        with self.authority_lock:  # nodes may be added in parallel; the authority's registry one at a time
            self.run(p, "meshadmin", "issue", "--dir", self.auth_dir, "--node", node.peer_id, "--org", node.org,
                     "--org-name", f"{node.org} (meshsim emulation)", "--role", node.kind, "--out", cert, "--json")
        self.run(p, "meshnode", "certificate", "install", "--home", str(node.home), cert)
        if config:
            self.configure(node, config)

    def configure(self, node: NodeProc, config: Mapping[str, object]) -> None:
        """Set node.toml keys (dotted: {"limits.upload_mb_per_s": 0.5}) through the node's CLI, whose reader
        checks them before the file is written (comments kept)."""
        self.run(node.placement, "meshnode", "config", "set", "--home", str(node.home), *assignments(config))

    def start_node(self, node: NodeProc) -> list[str]:
        """Start the node and its control probe; the addresses it listens on."""
        cmd = [MODULES["meshnode"], "run", "--home", str(node.home), "-v"]
        node.proc, addrs = self.start_service(node.placement, cmd, node.org)
        node.probe = subprocess.Popen([*node.placement.prefix, sys.executable, "-m", "simulations.emulation.probe",
                                       str(node.home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, env=self.env, cwd=self.root)
        self.services.append(node.probe)
        return addrs

    def call(self, node: NodeProc, method: str, path: str, body: dict[str, object] | None = None) -> object:
        probe = node.probe
        if probe is None or probe.stdin is None or probe.stdout is None:
            raise UnavailableError(f"no control probe for {node.org}")
        probe.stdin.write(json.dumps({"method": method, "path": path, "body": body}) + "\n")
        probe.stdin.flush()
        answer = json.loads(_readline(probe, probe.stdout, 60.0))
        if not answer.get("ok"):
            raise UnavailableError(f"{node.org}: {answer.get('error')}")
        return answer["value"]

    def cli(self, node: NodeProc, *args: str) -> object:
        cmd = [*node.placement.prefix, sys.executable, "-m", MODULES["meshnode"], *args, "--home", str(node.home)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT,
                              cwd=self.root, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise UnavailableError(f"`meshnode {' '.join(args[:2])}` at {node.org} exited {proc.returncode}: "
                                   f"{proc.stderr.strip()[-400:]}")
        return proc.stdout

    def stop_all(self) -> None:
        for proc in reversed(self.services):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.services):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.services.clear()


def _readline(proc: subprocess.Popen[str], stream: IO[str] | None, timeout: float) -> str:
    if stream is None:
        raise UnavailableError("no output stream")
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise UnavailableError(f"no answer within {timeout:g} s")
    return stream.readline()
