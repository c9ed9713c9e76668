"""The checks every uploaded file passes before it may wait in quarantine (issue 14, uploads).

An upload is one file as the person sent it: a DICOM file, or a ZIP archive of them (a CD's files, a
folder zipped). Each file, and each member of an archive, gets a Verdict: accepted (with its SHA-256,
size and header attributes), refused with a one-line reason meant for the uploader, or skipped (a
DICOMDIR: the index of a CD, not an image; the instances it lists come as files of their own).

A DICOM file is accepted only as a PS3.10 file: the 128-byte preamble, "DICM", a File Meta Information
group, a data set the node's own limited parser (meshnode.dicom) reads and checks, with SOP Class and
Instance UIDs and Study and Series UIDs.

The preamble must be all zeros or start with a TIFF header ("II*\\0" / "MM\\0*", the one application
profile PS3.10 7.5 names). Anything else is refused, not only the executables we can name (PE "MZ",
ELF, Mach-O, "#!" scripts, a ZIP or PDF header): the preamble is free space an attacker can fill with any
format a reader on the PACS team's desktop might run (the PE-DICOM polyglot, CVE-2019-11687), no
modality needs it for the image, and rewriting it would make the stored file differ from what was sent.
A refusal tells the uploader what to do: export the images again (or send them through the hospital).

A ZIP is read with the standard library's zipfile (random access over the completed upload on disk).
Refused, member by member, each with its reason: names with "..", absolute paths, drive letters,
backslashes, NUL or control characters, names longer than 1024 bytes, symbolic links (Unix mode in the
external attributes), duplicate names, compared case-insensitively in NFC (both copies: which one was meant
is unknown), encrypted members,
archives inside the archive (refused, not unpacked: one level keeps every limit simple to state), members
whose declared size is over max_file_mb or whose compression ratio is over MAX_RATIO, and members past
the total (max_upload_mb) or count (max_files) of the link. A member is extracted in bounded chunks into
a scratch file under a random name, with a hard cap on the bytes written (its declared size and
max_file_mb): a member whose data inflates past either is refused and its scratch file removed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
import struct
import unicodedata
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from meshnode.dicom.attributes import InstanceAttributes
from meshnode.dicom.errors import DicomError
from meshnode.dicom.layout import plan_instance
from meshnode.dicom.scan import ByteSource, DatasetScanner
from meshnode.patient.active_content import active_content
from meshnode.patient.upload_errors import (
    ArchiveRefusedError,
    ExecutablePreambleError,
    FileRefusedError,
    UploadLimitError,
)
from protocol.errors import MeshError

log = logging.getLogger(__name__)

#: Media Storage SOP Class of a DICOMDIR (PS3.4 Annex F: Media Storage Directory Storage)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
MEDIA_STORAGE_SOP_CLASS_TAG = 0x00020002
TRANSFER_SYNTAX_TAG = 0x00020010
#: Deflated Explicit VR Little Endian: refused in uploads. A deflated data set inflates a thousandfold
#: (1 MB sent, 1 GB in memory, once per parse); no CD or export tool a patient gets writes it, and the
#: uploader can export the images again without it.
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
#: a member's uncompressed size over its compressed size above this is a decompression bomb (DICOM with
#: large uniform areas compresses well, but not a thousandfold)
MAX_RATIO = 200
MAX_NAME_BYTES = 1024
#: central directory bytes allowed per file a link may still take (46-byte header, a name, some extra fields)
CD_BYTES_PER_FILE = 46 + MAX_NAME_BYTES + 256
CHUNK = 1 << 20
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_S_IFMT = 0o170000
_S_IFLNK = 0o120000
_DRIVE = re.compile(r"^[A-Za-z]:")
#: (magic bytes at the start of the preamble, what it is): named in the refusal
_EXECUTABLES: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable (PE)"),
    (b"\x7fELF", "a Linux executable (ELF)"),
    (b"\xfe\xed\xfa\xce", "a macOS executable (Mach-O)"),
    (b"\xfe\xed\xfa\xcf", "a macOS executable (Mach-O)"),
    (b"\xce\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xca\xfe\xba\xbe", "a macOS universal executable or Java class"),
    (b"#!", "a script (#!)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
)
#: zipfile's own reading of the end record (private, but it is exactly what ZipFile will read; see
#: _end_records) and the indexes of its fields
_ZIPFILE_END_RECORD: Callable[[BinaryIO], list[Any] | None] = getattr(zipfile, "_EndRecData")
_ECD_ENTRIES_TOTAL: int = getattr(zipfile, "_ECD_ENTRIES_TOTAL")
_ECD_SIZE: int = getattr(zipfile, "_ECD_SIZE")
_TIFF = (b"II*\x00", b"MM\x00*")
_MARKUP = re.compile(rb"<[A-Za-z!?/]")


class Outcome(str, Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    #: bytes all files of the link may still add (decompressed ZIP members count)
    total_bytes_left: int
    #: files the link may still add (ZIP members count)
    files_left: int
    max_ratio: int = MAX_RATIO


@dataclass(frozen=True)
class CheckedInstance:
    #: a file holding exactly the instance's bytes (the upload itself, or a scratch file for a ZIP member)
    path: Path
    size: int
    sha256: str
    attributes: InstanceAttributes


@dataclass(frozen=True)
class Verdict:
    #: the file's name as the uploader gave it (text only: never used as a path)
    name: str
    outcome: Outcome
    #: why refused or skipped ("" when accepted)
    reason: str = ""
    instance: CheckedInstance | None = None
    #: the error's code name when refused (for the audit and tests)
    error: str = ""
    #: bytes a refused ZIP member inflated to before it was refused (they count towards the link's total)
    inflated: int = 0


def preamble_refusal(preamble: bytes, size: int | None = None) -> str | None:
    """Why a PS3.10 file's 128-byte preamble is refused, or None (all zeros, or a plausible TIFF header: its
    first IFD offset inside the file of `size` bytes, and no markup such as "<html" or "<script" in the rest,
    which a browser sniffing the file might run)."""
    if not preamble.strip(b"\x00"):
        return None
    if preamble[:4] in _TIFF:
        (ifd,) = struct.unpack("<I" if preamble[:2] == b"II" else ">I", preamble[4:8])
        if _MARKUP.search(preamble):
            return ("the file's preamble holds web markup (HTML or a script) after a TIFF header: refused "
                    "(export the images again from the CD or system)")
        if size is not None and ifd >= size:
            return ("the file's preamble is a TIFF header pointing outside the file: refused "
                    "(export the images again from the CD or system)")
        return None
    for magic, what in _EXECUTABLES:
        if preamble.startswith(magic):
            return f"the file's preamble holds {what}: refused (export the images again from the CD or system)"
    return ("the file's preamble (its first 128 bytes) is not empty: refused, as it could hide a program "
            "(export the images again from the CD or system)")


def zip_name_refusal(raw_name: str) -> str | None:
    """Why a ZIP member's name (as stored, before any clean-up) is refused, or None."""
    if not raw_name:
        return "a member without a name"
    if "\x00" in raw_name:
        return "a name with a NUL character"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw_name):
        return "a name with control characters"
    if len(raw_name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"a name longer than {MAX_NAME_BYTES} bytes"
    if "\\" in raw_name:
        return "a name with a backslash (a Windows path)"
    if raw_name.startswith("/"):
        return "an absolute path"
    if _DRIVE.match(raw_name):
        return "a name with a drive letter"
    if any(part == ".." for part in raw_name.split("/")):
        return "a name with '..' (a path out of the archive)"
    return None


def media_storage_sop_class(path: Path) -> tuple[str, str]:
    """The File Meta Information's Media Storage SOP Class UID and Transfer Syntax UID ("" if none): read
    before the full parse, so a DICOMDIR is recognised as one and a deflated data set is refused before
    anything inflates it."""
    with path.open("rb") as stream:
        size = stream.seek(0, io.SEEK_END)
        src = ByteSource(stream, size)
        if size < 134 or src.read(128, 4) != b"DICM" or struct.unpack("<H", src.read(132, 2))[0] != 0x0002:
            return "", ""
        meta = DatasetScanner(src, little_endian=True).scan(
            132, size, implicit=False, stop=lambda tag: tag >> 16 != 0x0002,
            capture=(MEDIA_STORAGE_SOP_CLASS_TAG, TRANSFER_SYNTAX_TAG))
    sop_class, transfer_syntax = (meta.captured.get(tag, b"").decode("ascii", "replace").strip("\x00 ")
                                  for tag in (MEDIA_STORAGE_SOP_CLASS_TAG, TRANSFER_SYNTAX_TAG))
    return sop_class, transfer_syntax


def check_dicom(path: Path, max_file_bytes: int) -> CheckedInstance | None:
    """The file at `path` checked as a PS3.10 instance: None for a DICOMDIR (an index, skipped), else the
    checked instance. Raises FileRefusedError (or ExecutablePreambleError, UploadLimitError) with the
    reason."""
    size = path.stat().st_size
    if size > max_file_bytes:
        raise UploadLimitError(f"the file is {size} bytes, over the limit of {max_file_bytes} bytes per file")
    with path.open("rb") as stream:
        head = stream.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise FileRefusedError("not a DICOM file (no 'DICM' after the 128-byte preamble)")
    why = preamble_refusal(head[:128], size)
    if why is not None:
        raise ExecutablePreambleError(why)
    try:
        sop_class, transfer_syntax = media_storage_sop_class(path)
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            return None
        if transfer_syntax == DEFLATED_TRANSFER_SYNTAX:
            raise UploadLimitError("a deflated DICOM file (Deflated Explicit VR Little Endian) is not taken: it "
                                   "could inflate without bound (export the images again without compression "
                                   "or with an image compression)")
        plan = plan_instance(path)
    except DicomError as exc:
        raise FileRefusedError(f"not a valid DICOM instance: {exc.reason}") from None
    except (struct.error, ValueError) as exc:
        raise FileRefusedError(f"not a valid DICOM instance ({type(exc).__name__})") from None
    if "no-meta-header" in plan.layout.flags or "no-transfer-syntax" in plan.layout.flags:
        raise FileRefusedError("not a valid DICOM file: no File Meta Information with a transfer syntax")
    if not plan.attributes.sop_class_uid:
        raise FileRefusedError("not a valid DICOM instance: no SOP Class UID")
    hidden = active_content(path)
    if hidden is not None:
        raise ExecutablePreambleError(f"{hidden}: refused (export the images again from the CD or system)")
    return CheckedInstance(path, size, _sha256(path), plan.attributes)


def is_zip(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(4) in ZIP_MAGICS


def check_file(path: Path, name: str, limits: UploadLimits, scratch: Path) -> Iterator[Verdict]:
    """The verdicts on one completed upload: one for a DICOM file, one per member for a ZIP. Accepted
    members are extracted into `scratch` (a folder that exists) under random names. A check that fails in
    a way no check foresaw refuses the file ("could not be checked"), so every upload gets a verdict."""
    try:
        yield from _check_file(path, name, limits, scratch)
    except Exception as exc:  # noqa: BLE001 (a task boundary: untrusted bytes; trio.Cancelled is no Exception)
        log.warning("an upload could not be checked (%s)", type(exc).__name__)
        yield _refused(name, FileRefusedError(f"the file could not be checked ({type(exc).__name__}): refused"))


def _check_file(path: Path, name: str, limits: UploadLimits, scratch: Path) -> Iterator[Verdict]:
    if is_zip(path):
        yield from check_zip(path, name, limits, scratch)
        return
    if limits.files_left < 1:
        yield _refused(name, UploadLimitError("the link's limit on the number of files is reached"))
        return
    yield _verdict(name, lambda: check_dicom(path, limits.max_file_bytes))


def _end_records(stream: BinaryIO, size: int) -> list[tuple[int, int]]:
    """Every (entry count, directory size) an end-of-archive record of the file could be read as: the one
    zipfile itself reads (its own _EndRecData: the record at end-22 with an empty comment first, then a scan;
    ZIP64: the record just before the locator), the last signature in the tail, and the ZIP64 record the
    locator's offset names (a later zipfile may follow it). The check takes the largest of them all, so no
    decoy record can hide the directory zipfile will read."""
    found: list[tuple[int, int]] = []
    endrec = _ZIPFILE_END_RECORD(stream)
    if endrec:
        found.append((int(endrec[_ECD_ENTRIES_TOTAL]), int(endrec[_ECD_SIZE])))
    start = max(0, size - (22 + 65535))
    stream.seek(start)
    tail = stream.read()
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0:
        if len(tail) >= at + 22:
            entries, cd_size = struct.unpack("<HI", tail[at + 10:at + 16])
            found.append((entries, cd_size))
            if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
                (z64_offset,) = struct.unpack("<Q", tail[at - 12:at - 4])
                for offset in (z64_offset, start + at - 20 - 56):
                    if 0 <= offset <= size - 56:
                        stream.seek(offset)
                        record = stream.read(56)
                        if record[:4] == b"PK\x06\x06":
                            found.append(struct.unpack("<QQ", record[32:48]))
        at = tail.rfind(b"PK\x05\x06", 0, at)
        if len(found) > 64:
            break
    return found


def central_directory_refusal(path: Path, files_left: int) -> str | None:
    """Why an archive's central directory is refused before zipfile reads it (it builds an object per entry,
    and counts entries by the directory's size, not its declared count): a directory larger than
    CD_BYTES_PER_FILE per file the link may still take, or a declared count over that, in any end record
    the file could be read by (see _end_records). None if all fit or no end record is found (zipfile then
    refuses the archive)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as stream:
            found = _end_records(stream, size)
    except (OSError, ValueError, OverflowError, struct.error, zipfile.BadZipFile) as exc:
        return f"the archive's index cannot be read ({type(exc).__name__})"
    cap = max(1 << 16, files_left * CD_BYTES_PER_FILE)
    for entries, cd_size in found:
        if entries > files_left:
            return f"the archive holds {entries} files, more than the {files_left} the link may still take"
        if cd_size > cap:
            return (f"the archive's index is {cd_size} bytes, too large for the {files_left} files the link "
                    "may still take")
    return None


def check_zip(path: Path, name: str, limits: UploadLimits, scratch: Path) -> Iterator[Verdict]:
    too_big = central_directory_refusal(path, limits.files_left)
    if too_big is not None:
        yield _refused(name, UploadLimitError(too_big))
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        yield _refused(name, ArchiveRefusedError(f"the ZIP archive cannot be read ({type(exc).__name__})"))
        return
    with archive:
        members = [i for i in archive.infolist() if not i.orig_filename.endswith("/")]
        if len(members) > limits.files_left:
            yield _refused(name, UploadLimitError(
                f"the archive holds {len(members)} files, more than the {limits.files_left} the link may still take"))
            return
        counts = Counter(_name_key(i.orig_filename) for i in members)
        total_left = limits.total_bytes_left
        for info in members:
            shown = f"{name}/{info.orig_filename}"
            why = _member_refusal(info, counts, limits, total_left)
            if why is not None:
                yield _refused(shown, why)
                continue
            total_left -= info.file_size
            yield _extract_and_check(archive, info, shown, limits, scratch)


def _member_refusal(info: zipfile.ZipInfo, counts: Counter[str], limits: UploadLimits,
                    total_left: int) -> MeshError | None:
    raw = info.orig_filename
    why = zip_name_refusal(raw)
    if why is not None:
        return ArchiveRefusedError(f"refused: {why}")
    if counts[_name_key(raw)] > 1:
        return ArchiveRefusedError("refused: the archive holds this name more than once")
    if info.create_system == 3 and (info.external_attr >> 16) & _S_IFMT == _S_IFLNK:
        return ArchiveRefusedError("refused: a symbolic link")
    if info.flag_bits & 0x1:
        return ArchiveRefusedError("refused: an encrypted member (upload the files without a password)")
    if raw.lower().endswith(".zip"):
        return ArchiveRefusedError("refused: an archive inside the archive (unpack it and upload its files)")
    if info.file_size > limits.max_file_bytes:
        return UploadLimitError(f"refused: {info.file_size} bytes, over the limit of {limits.max_file_bytes} "
                                "bytes per file")
    if info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return UploadLimitError(f"refused: it would inflate more than {limits.max_ratio} times "
                                "(a decompression bomb)")
    if info.file_size > total_left:
        return UploadLimitError("refused: over the link's total size")
    return None


def _name_key(name: str) -> str:
    """A member's name as a case-insensitive, Unicode-normalising file system sees it (NTFS, APFS): two names
    with one key are duplicates ("DICOM/IM1" and "dicom/im1"; "Café" in NFC and NFD)."""
    return unicodedata.normalize("NFC", name).casefold()


def _extract_and_check(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str, limits: UploadLimits,
                       scratch: Path) -> Verdict:
    target = scratch / f"{secrets.token_hex(16)}.member"
    cap = min(info.file_size, limits.max_file_bytes)
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as out:
            head = src.read(4)
            if head in ZIP_MAGICS:
                raise ArchiveRefusedError("refused: an archive inside the archive (unpack it and upload its files)")
            chunk = head
            while chunk:
                written += len(chunk)
                if written > cap:
                    raise UploadLimitError("refused: it inflates past its declared size (a decompression bomb)")
                out.write(chunk)
                chunk = src.read(CHUNK)
    except MeshError as exc:
        target.unlink(missing_ok=True)
        return replace(_refused(shown, exc), inflated=written)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
            struct.error, zlib.error) as exc:
        target.unlink(missing_ok=True)
        return replace(_refused(shown, ArchiveRefusedError(
            f"refused: the member cannot be read ({type(exc).__name__})")), inflated=written)
    verdict = _verdict(shown, lambda: check_dicom(target, limits.max_file_bytes))
    if verdict.outcome is not Outcome.ACCEPTED:
        target.unlink(missing_ok=True)
        return replace(verdict, inflated=written)
    return verdict


def _verdict(name: str, check: Callable[[], CheckedInstance | None]) -> Verdict:
    try:
        instance = check()
    except MeshError as exc:
        return _refused(name, exc)
    if instance is None:
        return Verdict(name, Outcome.SKIPPED, "a DICOMDIR (the CD's index, not an image): skipped")
    return Verdict(name, Outcome.ACCEPTED, instance=instance)


def _refused(name: str, exc: MeshError) -> Verdict:
    return Verdict(name, Outcome.REFUSED, str(exc), error=exc.name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def display_name(text: str) -> str:
    """A name the uploader gave, made safe to show and store as text (no control characters, bounded)."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:300] or "(no name)"


__all__ = [
    "CheckedInstance",
    "Outcome",
    "UploadLimits",
    "Verdict",
    "check_dicom",
    "check_file",
    "check_zip",
    "display_name",
    "preamble_refusal",
    "zip_name_refusal",
]
