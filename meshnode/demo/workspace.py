"""Drive the real command-line tools as separate processes in a scratch folder.

Used by the README demo and by the end-to-end tests, so the demo is exactly
what the tests assert on.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from protocol.errors import LocalProtocolError, UnavailableError

MODULES = {"meshadmin": "tools.cli.main", "meshnode": "meshnode.cli.main"}
COMMAND_TIMEOUT = 60.0
DEMO_PASSPHRASE = "demo passphrase, never use in production"


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)

    def json_dict(self) -> dict[str, object]:
        value = self.json()
        if not isinstance(value, dict):
            raise LocalProtocolError(f"expected a JSON object from {' '.join(self.args)}")
        return value


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["MESHADMIN_PASSPHRASE"] = DEMO_PASSPHRASE
        self.env.pop("MESHNODE_HOME", None)
        self.env.pop("MESHADMIN_AUTHORITY", None)
        self.env["PYTHONUNBUFFERED"] = "1"
        self._services: list[subprocess.Popen[str]] = []

    def run(self, tool: str, *args: str, check: bool = True) -> Result:
        cmd = [sys.executable, "-m", MODULES[tool], *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT,
            cwd=self.root, stdin=subprocess.DEVNULL,
        )
        result = Result((tool, *args), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise LocalProtocolError(
                f"`{tool} {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return result

    def start_directory(self, home: Path) -> tuple[subprocess.Popen[str], list[str]]:
        """Start `meshadmin directory serve` and wait for the address line it prints."""
        cmd = [sys.executable, "-m", MODULES["meshadmin"], "directory", "serve", "--home", str(home),
               "--listen", "/ip4/127.0.0.1/tcp/0"]
        return self.start_service(cmd, "directory")

    def start_node(self, home: Path, name: str) -> tuple[subprocess.Popen[str], list[str]]:
        """Start `meshnode run` and wait until it prints the addresses it listens on."""
        return self.start_service([sys.executable, "-m", MODULES["meshnode"], "run", "--home", str(home), "-v"], name)

    def start_service(self, cmd: list[str], name: str) -> tuple[subprocess.Popen[str], list[str]]:
        log = open(self.root / f"{name}.log", "a")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
                                cwd=self.root, stdin=subprocess.DEVNULL)
        self._services.append(proc)
        line = _readline_with_timeout(proc, proc.stdout, COMMAND_TIMEOUT)
        try:
            addrs = json.loads(line)["listening"]
        except (ValueError, KeyError, TypeError):
            self.stop(proc)
            path = self.root / f"{name}.log"
            tail = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
            raise UnavailableError(f"{name} did not start: {line!r}; see {path}; its log ends:\n"
                                   + "\n".join(tail)) from None
        return proc, [str(a) for a in addrs]

    def stop(self, proc: subprocess.Popen[str], timeout: float = 15.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self._services:
            self._services.remove(proc)
        return proc.returncode

    def close(self) -> None:
        for proc in list(self._services):
            self.stop(proc)


def _readline_with_timeout(proc: subprocess.Popen[str], stream: IO[str] | None, timeout: float) -> str:
    if stream is None:
        raise UnavailableError("no stdout to read from")
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise UnavailableError(f"no output within {timeout:g} s")
    return stream.readline()
