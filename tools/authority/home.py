"""The authority folder: the encrypted issuer key and the registry database."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import LocalProtocolError, StorageError
from protocol.keys import PublicKey, SigningKey
from tools.authority.keyfile import read_key, read_public_key, write_key
from tools.authority.registry import AuthorityRegistry

AUTHORITY_ENV = "MESHADMIN_AUTHORITY"


def resolve_authority_dir(value: str | None) -> Path:
    chosen = value or os.environ.get(AUTHORITY_ENV)
    if not chosen:
        raise LocalProtocolError(f"no authority folder: pass --dir DIR or set {AUTHORITY_ENV}")
    return Path(chosen)


@dataclass(frozen=True)
class AuthorityHome:
    path: Path

    @property
    def key_path(self) -> Path:
        return self.path / "authority.key"

    @property
    def db_path(self) -> Path:
        return self.path / "authority.db"

    @classmethod
    def create(cls, path: Path, passphrase: str) -> tuple[AuthorityHome, PublicKey]:
        home = cls(path)
        if home.key_path.exists():
            raise LocalProtocolError(f"{home.key_path} already exists; refusing to overwrite an authority key")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from None
        key = SigningKey(os.urandom(32))
        write_key(home.key_path, key, passphrase)
        home.registry().close()
        return home, key.public_key

    def public_key(self) -> PublicKey:
        return read_public_key(self.key_path)

    def signing_key(self, passphrase: str) -> SigningKey:
        return read_key(self.key_path, passphrase)

    def registry(self) -> AuthorityRegistry:
        if not self.path.is_dir():
            raise StorageError(f"{self.path} is not an authority folder")
        return AuthorityRegistry(self.db_path)
