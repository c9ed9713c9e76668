"""Where the authority passphrase comes from: a file, the environment, or a prompt."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from common.files import read_file
from protocol.errors import LocalProtocolError

PASSPHRASE_ENV = "MESHADMIN_PASSPHRASE"


def get_passphrase(passphrase_file: str | None, *, confirm: bool = False) -> str:
    if passphrase_file:
        text = read_file(Path(passphrase_file), "passphrase file", max_bytes=4096).decode("utf-8", "replace")
        return text.rstrip("\r\n")
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise LocalProtocolError(
            f"no passphrase: use --passphrase-file, set {PASSPHRASE_ENV}, or run in a terminal"
        )
    first = getpass.getpass("Authority passphrase: ")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise LocalProtocolError("the passphrases do not match")
    return first
