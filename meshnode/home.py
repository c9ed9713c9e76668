"""A node directory: its key, its configuration, its certificate, its caches.

    DIR/node.key           Ed25519 seed, hex, mode 0600
    DIR/node.toml          configuration (see meshnode.config)
    DIR/certificate.cbor   the node certificate issued by an admin
    DIR/state/             small durable state (highest roster version accepted)
    DIR/cache/directory/   verified directory answers, for when it is unreachable
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from common.files import exclusive_lock, read_file, write_atomic
from common.keyfile import create_key_file, load_key_file
from meshnode.config import NodeConfig, load_config, parse_config
from protocol.certificate import Certificate
from protocol.config_reader import MAX_CONFIG_BYTES, set_key
from protocol.document import Signed, open_document
from protocol.errors import (
    ConfigError,
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
CONFIG_LOCK_FILE = ".node.toml.lock"


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

    def set_config(self, values: Mapping[str, object]) -> NodeConfig:
        """Set node.toml keys, given dotted (``{"limits.upload_mb_per_s": 30, "dimse.enabled": True}``).

        The file is edited with tomlkit, so its comments and layout stay; a table that is not there yet
        (``[http]`` is only a comment until set) is added at the end. The result is read by the node's
        strict reader before anything is written: a key it does not know, a wrong type or a value out of
        range is a ConfigError and the file is unchanged. The new file replaces the old atomically.
        """
        path = self.config_path
        if not path.exists():
            raise ConfigError(f"no configuration at {path}; run `meshnode init` first")
        with self._config_lock():  # one edit at a time: each sees the one before it
            try:
                data = read_file(path, "node configuration", max_bytes=MAX_CONFIG_BYTES)
            except StorageError as exc:
                raise ConfigError(str(exc)) from None
            try:
                doc = tomlkit.parse(data.decode("utf-8"))
            except (UnicodeDecodeError, TOMLKitError) as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from None
            for key, value in values.items():
                set_key(doc, key, value)
            text = tomlkit.dumps(doc)
            config = parse_config(text, str(path), self.path)
            mode = path.stat().st_mode & 0o777
            write_atomic(path, text.encode("utf-8"), mode=mode)
        return config

    def _config_lock(self) -> AbstractContextManager[None]:
        """An exclusive lock on node.toml's edits, held on a lock file beside it (node.toml itself is
        replaced by each edit, so it cannot carry the lock). Threads and processes alike wait for it."""
        return exclusive_lock(self.path / CONFIG_LOCK_FILE)

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
