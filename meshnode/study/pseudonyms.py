"""Research projects' pseudonyms: a secret key per project, kept at the sender only, and keyed hashes.

    DIR/deid/<project>.key   32 random bytes, hex, mode 0600 (as the node key: common.keyfile's rules)

Within a project the same patient ID, the same UID and the same patient's dates always map to the same
pseudonym, UID and offset (two studies of one patient stay linked for the researcher); across projects
they do not (one project's data set cannot be joined with another's). Without the key nobody can compute
a pseudonym from an identifier, nor try candidate identifiers against one: HMAC-SHA256, not a plain hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from common.files import read_file
from protocol.deid import check_project
from protocol.errors import StorageError

KEY_SIZE = 32
DEID_DIR = "deid"
#: dates are shifted back by 62 to 730 days (dicognito's range: far enough to hide the real dates)
MIN_SHIFT_DAYS = 62
MAX_SHIFT_DAYS = 730


def project_key_path(home: Path, project: str) -> Path:
    return home / DEID_DIR / f"{check_project(project, 'project')}.key"


def project_key(home: Path, project: str, *, create: bool = True) -> bytes:
    """The project's key; created (mode 0600, in a 0700 folder) on first use when `create`.

    Created whole or not at all: the key is written to a temp file, fsynced, then hard-linked to its name
    (which fails if another first use won: its key is used) and the folder fsynced; a crash leaves no empty
    or half-written key (before: O_EXCL created the name first, then the content was written)."""
    path = project_key_path(home, project)
    if not path.exists():
        if not create:
            raise StorageError(f"no key for research project {project!r} on this node")
        _create_key(path)
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise StorageError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    raw = read_file(path, "project key", max_bytes=256)
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) != KEY_SIZE:
        raise StorageError(f"{path} is not a project key")
    return key


def _create_key(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (os.urandom(KEY_SIZE).hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never over an existing key
        except FileExistsError:
            pass  # two first uses: the other one's key wins
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed pseudonyms of one project (HMAC-SHA256 with the project's key, one label per kind)."""

    project: str
    key: bytes
    #: the profile's fingerprint (DeidProfile.fingerprint): copies made with other options get other UIDs (their
    #: bytes differ), while patient pseudonyms, dates and dummies stay project-keyed (one subject per patient)
    uid_context: str = ""

    def _mac(self, label: str, value: str) -> bytes:
        return hmac.new(self.key, f"{label}\0{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A UID of the 2.25 root (PS3.5 B.2: a UUID-sized integer), at most 44 characters."""
        label = f"uid:{self.uid_context}" if self.uid_context else "uid"
        return "2.25." + str(int.from_bytes(self._mac(label, original.strip("\0 "))[:16], "big"))

    def patient_id(self, original: str) -> str:
        """A patient pseudonym: 'R' and 16 base32 characters (80 bits)."""
        return "R" + base64.b32encode(self._mac("patient", original.strip())[:10]).decode("ascii")

    def shift_days(self, patient_id: str) -> int:
        """How far back this patient's dates move (the same for every study of the patient)."""
        n = int.from_bytes(self._mac("dates", patient_id.strip())[:8], "big")
        return -(MIN_SHIFT_DAYS + n % (MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1))

    def seed(self, patient_id: str) -> str:
        """The seed of dicognito's randomizer for this patient (its dummy names, IDs, addresses)."""
        return self._mac("seed", patient_id.strip()).hex()
