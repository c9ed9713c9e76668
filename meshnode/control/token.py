"""The control API's bearer token: random, in a 0600 file in the node folder."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from common.files import read_file, write_atomic

TOKEN_FILE = "control.token"
ENDPOINT_FILE = "control.json"


def create_token(home: Path) -> str:
    """A fresh token for this run of the node (a restart invalidates the old one)."""
    token = secrets.token_urlsafe(32)
    write_atomic(home / TOKEN_FILE, (token + "\n").encode("ascii"), mode=0o600)
    return token


def read_token(home: Path) -> str:
    return read_file(home / TOKEN_FILE, "control token (is the node running?)", max_bytes=256).decode(
        "ascii", "replace").strip()


def token_matches(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.encode())
