"""A real rsyslog (Debian's rsyslog + rsyslog-gnutls) as the audit repository: an RFC 5425 listener
(imtcp, gtls driver) on 127.0.0.1 writing each message's raw bytes, one a line, to a file."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.meshnode.audit_export.helpers import Pki

CONFIG = """\
global(workDirectory="{work}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{out}" template="raw")
"""


def rsyslogd() -> str | None:
    return shutil.which("rsyslogd") or (("/usr/sbin/rsyslogd") if Path("/usr/sbin/rsyslogd").exists() else None)


class Rsyslog:
    def __init__(self, folder: Path, pki: Pki, port: int) -> None:
        self.folder = folder
        self.port = port
        self.out = folder / "messages.log"
        (folder / "work").mkdir(parents=True, exist_ok=True)
        self.config = folder / "rsyslog.conf"
        self.config.write_text(CONFIG.format(work=folder / "work", ca=pki.ca_cert, cert=pki.server_cert,
                                             key=pki.server_key, port=port, out=self.out))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        binary = rsyslogd()
        assert binary is not None
        self.proc = subprocess.Popen([binary, "-n", "-f", str(self.config), "-i", str(self.folder / "pid")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.folder / "stderr", "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.folder / 'stderr').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsyslogd did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def messages(self) -> list[bytes]:
        if not self.out.exists():
            return []
        return [line for line in self.out.read_bytes().split(b"\n") if line]
