"""Node and directory keys at rest: the Ed25519 seed in hex, in a file of mode 0600."""

from __future__ import annotations

import os
from pathlib import Path

from common.files import read_file, write_atomic
from protocol.errors import LocalProtocolError, MeshError, StorageError
from protocol.keys import SEED_SIZE, SigningKey


def create_key_file(path: Path) -> SigningKey:
    if path.exists():
        raise LocalProtocolError(f"{path} already exists; refusing to overwrite a key")
    key = SigningKey(os.urandom(SEED_SIZE))
    write_atomic(path, (key.seed.hex() + "\n").encode("ascii"), mode=0o600)
    return key


def load_key_file(path: Path) -> SigningKey:
    raw = read_file(path, "key file", max_bytes=256)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise StorageError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        return SigningKey(bytes.fromhex(raw.decode("ascii").strip()))
    except (ValueError, UnicodeDecodeError, MeshError) as exc:
        raise StorageError(f"{path} is not a key file: {exc}") from None
