"""A node directory: its key, its configuration, its certificate, its caches.

    DIR/node.key           Ed25519 seed, hex, mode 0600
    DIR/node.toml          configuration (see meshnode.config)
    DIR/certificate.cbor   the node certificate issued by an admin
    DIR/state/             small durable state (highest roster version accepted)
    DIR/cache/directory/   verified directory answers, for when it is unreachable
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigError
from meshnode.config import NodeConfig, load_config
from common.files import read_file, write_atomic
from common.keyfile import create_key_file, load_key_file
from protocol.certificate import Certificate
from protocol.document import Signed, open_document
from protocol.errors import (
    DocumentError,
    LocalProtocolError,
    StorageError,
    WrongOrganisationError,
)
from protocol.keys import SigningKey

HOME_ENV = "MESHNODE_HOME"
KEY_FILE = "node.key"
CONFIG_FILE = "node.toml"
CERT_FILE = "certificate.cbor"


def resolve_home(home: str | None) -> Path:
    """--home wins, then $MESHNODE_HOME; one of them is required."""
    value = home or os.environ.get(HOME_ENV)
    if not value:
        raise ConfigError(f"no node directory: pass --home DIR or set {HOME_ENV}")
    return Path(value)


@dataclass(frozen=True)
class NodeHome:
    path: Path

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def cert_path(self) -> Path:
        return self.path / CERT_FILE

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def directory_cache_dir(self) -> Path:
        return self.path / "cache" / "directory"

    @classmethod
    def create(cls, path: Path, config: NodeConfig) -> NodeHome:
        """Create a new node directory. Refuses to touch an existing node."""
        home = cls(path)
        if home.key_path.exists():
            raise LocalProtocolError(f"{path} already holds a node key; refusing to overwrite it")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            home.state_dir.mkdir(exist_ok=True)
            home.directory_cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create node directory {path}: {exc.strerror or exc}") from None
        create_key_file(home.key_path)
        write_atomic(home.config_path, config.render().encode("utf-8"))
        return home

    def signing_key(self) -> SigningKey:
        return load_key_file(self.key_path)

    def config(self) -> NodeConfig:
        return load_config(self.config_path)

    def save_config(self, config: NodeConfig) -> None:
        write_atomic(self.config_path, config.render().encode("utf-8"))

    def certificate(self) -> Signed[Certificate]:
        return open_document(read_file(self.cert_path, "node certificate", max_bytes=8192), Certificate)

    def install_certificate(self, data: bytes) -> Signed[Certificate]:
        """Check the certificate is for this node and its org, then install it."""
        signed = open_document(data, Certificate)
        cert = signed.document
        key = self.signing_key()
        if cert.node_key != key.public_key:
            raise DocumentError(
                f"certificate {cert.serial} is for {cert.peer_id}, not this node ({key.peer_id})"
            )
        org = self.config().org
        if cert.org_code != org:
            raise WrongOrganisationError(f"certificate is for org {cert.org_code}, this node is {org}")
        write_atomic(self.cert_path, data)
        return signed
