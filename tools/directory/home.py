"""The directory's own folder: key, configuration, certificate, database.

    DIR/directory.key      Ed25519 seed, hex, mode 0600
    DIR/directory.toml     listen addresses and trusted authority keys
    DIR/certificate.cbor   its certificate (role `directory`), issued by an admin
    DIR/directory.db       SQLite: certificates, address records, roster
    DIR/address            the multiaddrs it listens on, written once it is up
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.files import read_file, write_atomic
from common.keyfile import create_key_file, load_key_file
from protocol.address_record import check_multiaddr_text
from protocol.certificate import Certificate, Role
from protocol.config_reader import MAX_CONFIG_BYTES, MISSING, Table, defaults, read
from protocol.document import DEFAULT_SKEW, Signed, open_document
from protocol.errors import ConfigError, DocumentError, StorageError
from protocol.keys import PublicKey, SigningKey
from protocol.trust import require_role


@dataclass(frozen=True)
class DirectoryConfig:
    listen: tuple[str, ...]
    authority_keys: tuple[PublicKey, ...]
    clock_skew: int = DEFAULT_SKEW

    def render(self) -> str:
        listen = ", ".join(f'"{a}"' for a in self.listen)
        keys = ", ".join(f'"{k.peer_id}"' for k in self.authority_keys)
        return (
            "# dicom-mesh directory configuration (written by `meshadmin directory init`).\n"
            "[directory]\n"
            "# libp2p multiaddrs to listen on (TCP + Noise + Yamux)\n"
            f"listen = [{listen}]\n"
            "# peer IDs of the authority keys whose rosters and certificates it accepts\n"
            f"authority_keys = [{keys}]\n"
            f"clock_skew_seconds = {self.clock_skew}\n"
        )


def _build(root: Table) -> DirectoryConfig:
    t = root.table("directory", required=True)
    config = DirectoryConfig(
        listen=t.texts("listen", MISSING, check=check_multiaddr_text, nonempty=True),
        authority_keys=tuple(PublicKey.from_peer_id(k)
                             for k in t.texts("authority_keys", MISSING, check=PublicKey.check_peer_id, nonempty=True)),
        clock_skew=t.integer("clock_skew_seconds", defaults(DirectoryConfig)["clock_skew"], 0, 86400),
    )
    t.finish()
    root.finish()
    return config


def parse_directory_config(data: str | bytes, source: str) -> DirectoryConfig:
    """directory.toml's text as a DirectoryConfig, or a ConfigError naming `source` and the key."""
    return read(data, source, _build)


@dataclass(frozen=True)
class DirectoryHome:
    path: Path

    @property
    def key_path(self) -> Path:
        return self.path / "directory.key"

    @property
    def config_path(self) -> Path:
        return self.path / "directory.toml"

    @property
    def cert_path(self) -> Path:
        return self.path / "certificate.cbor"

    @property
    def db_path(self) -> Path:
        return self.path / "directory.db"

    @property
    def address_path(self) -> Path:
        return self.path / "address"

    @classmethod
    def create(cls, path: Path, config: DirectoryConfig) -> tuple[DirectoryHome, SigningKey]:
        home = cls(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from None
        key = create_key_file(home.key_path)
        write_atomic(home.config_path, config.render().encode("utf-8"))
        return home, key

    def signing_key(self) -> SigningKey:
        return load_key_file(self.key_path)

    def config(self) -> DirectoryConfig:
        try:
            data = read_file(self.config_path, "directory configuration", max_bytes=MAX_CONFIG_BYTES)
        except StorageError as exc:
            if not self.config_path.exists():
                raise ConfigError(f"no {self.config_path}; run `meshadmin directory init` first") from None
            raise ConfigError(str(exc)) from None
        return parse_directory_config(data, str(self.config_path))

    def certificate_bytes(self) -> bytes:
        return read_file(self.cert_path, "directory certificate", max_bytes=8192)

    def install_certificate(self, data: bytes) -> Signed[Certificate]:
        signed = open_document(data, Certificate)
        require_role(signed.document, Role.DIRECTORY)
        if signed.document.node_key != self.signing_key().public_key:
            raise DocumentError("this certificate is not for this directory's key")
        write_atomic(self.cert_path, data)
        return signed
