"""The authority's issuer key at rest: encrypted with a passphrase, file mode 0600.

Format (deterministic CBOR):
    {"format": "dicom-mesh/authority-key/v1", "kdf": "argon2id", "opslimit": int,
     "memlimit": int, "salt": 16 bytes, "nonce": 24 bytes, "box": ciphertext,
     "public_key": 32 bytes}
The secret box holds the 32-byte Ed25519 seed. The public key is stored in
clear so the key can be identified without the passphrase, and is checked
against the decrypted seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.errors import DecodeError, LocalProtocolError, MeshError, StorageError
from protocol.keys import PublicKey, SigningKey
from protocol.schema import Fields
from common.files import read_file, write_atomic

KEY_FORMAT = "dicom-mesh/authority-key/v1"
OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


class PassphraseError(MeshError):
    """The passphrase does not open the key file."""

    code = 901
    name = "wrong-passphrase"


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return bytes(
        nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
            opslimit=opslimit, memlimit=memlimit,
        )
    )


def write_key(path: Path, key: SigningKey, passphrase: str) -> None:
    if len(passphrase) < 8:
        raise LocalProtocolError("the passphrase must be at least 8 characters")
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, OPSLIMIT, MEMLIMIT))
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    sealed = box.encrypt(key.seed, nonce).ciphertext
    doc: dict[CborKey, CborValue] = {
        "format": KEY_FORMAT,
        "kdf": "argon2id",
        "opslimit": OPSLIMIT,
        "memlimit": MEMLIMIT,
        "salt": salt,
        "nonce": nonce,
        "box": bytes(sealed),
        "public_key": key.public_key.raw,
    }
    if path.exists():
        raise StorageError(f"{path} already exists; refusing to overwrite an authority key")
    write_atomic(path, cbor.encode(doc), mode=0o600)


def read_public_key(path: Path) -> PublicKey:
    return _parse(read_file(path, "authority key file")).public_key


@dataclass(frozen=True)
class _Sealed:
    public_key: PublicKey
    opslimit: int
    memlimit: int
    salt: bytes
    nonce: bytes
    box: bytes


def _parse(data: bytes) -> _Sealed:
    try:
        f = Fields(cbor.decode(data), "authority key file")
        if f.text("format", 64) != KEY_FORMAT:
            raise DecodeError("not a dicom-mesh authority key file")
        if f.text("kdf", 16) != "argon2id":
            raise DecodeError("unsupported key derivation")
        sealed = _Sealed(
            opslimit=f.integer("opslimit", 1, 64),
            memlimit=f.integer("memlimit", 8192, 1 << 31),
            salt=f.blob("salt", size=nacl.pwhash.argon2id.SALTBYTES),
            nonce=f.blob("nonce", size=nacl.secret.SecretBox.NONCE_SIZE),
            box=f.blob("box", max_len=256),
            public_key=PublicKey(f.blob("public_key", size=32)),
        )
        f.finish()
    except MeshError as exc:
        raise DecodeError(f"authority key file is malformed: {exc}") from None
    return sealed


def read_key(path: Path, passphrase: str) -> SigningKey:
    sealed = _parse(read_file(path, "authority key file"))
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise StorageError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    box = nacl.secret.SecretBox(_derive(passphrase, sealed.salt, sealed.opslimit, sealed.memlimit))
    try:
        seed = box.decrypt(sealed.box, sealed.nonce)
    except nacl.exceptions.CryptoError:
        raise PassphraseError("wrong passphrase for the authority key") from None
    key = SigningKey(bytes(seed))
    if key.public_key != sealed.public_key:
        raise DecodeError("authority key file is inconsistent: public key does not match")
    return key
