"""Active content hidden inside an uploaded DICOM data set (issue 14, uploads; review M4).

The preamble check (meshnode.patient.upload_check) keeps programs out of a file's first 128 bytes; this one
looks inside the data set, for what a reader on the PACS team's desktop might run or unpack:

- a file that is also a ZIP archive (a ZIP stored in an element, with its end record at the end of the file:
  zipfile.is_zipfile opens it, so an unzip tool shows the archive's members);
- a private element (odd group) of VR OB, OW or UN whose value starts with an executable's or an archive's
  magic bytes (PE "MZ", ELF, Mach-O, "#!", ZIP, PDF): no modality's private data needs them;
- an Encapsulated Document (0042,0011) holding a PDF with actions a PDF reader runs: /JavaScript, /JS,
  /Launch, /EmbeddedFile, /OpenAction, /AA (names hex-escaped like /J#61vaScript are decoded first).
  Not seen: actions inside compressed object streams (a PDF reader's own sandbox is the defence there).

Large values are not loaded (pydicom's defer_size): only their first bytes are read from the file.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

#: (magic bytes at the start of a value, what it is)
MAGICS: tuple[tuple[bytes, str], ...] = (
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
ENCAPSULATED_DOCUMENT = 0x00420011
PDF_ACTIONS = (b"/JavaScript", b"/JS", b"/Launch", b"/EmbeddedFile", b"/OpenAction", b"/AA")
_HEX_NAME = re.compile(rb"#([0-9A-Fa-f]{2})")
DEFER = 4096
MAX_DEPTH = 8


def active_content(path: Path) -> str | None:
    """Why the instance at `path` is refused for active content inside it, or None. The file passed the
    PS3.10 checks already (not deflated)."""
    if zipfile.is_zipfile(path):
        return "the file is also a ZIP archive (a program or archive is hidden inside the image)"
    try:
        with path.open("rb") as stream:
            ds = dcmread(stream, defer_size=DEFER)
            return _walk(ds, stream, 0)
    except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, OSError,
            NotImplementedError, OverflowError) as exc:
        return f"its data set could not be read to look for hidden programs ({type(exc).__name__})"


def _walk(ds: Dataset, stream: BinaryIO, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return "sequences nested too deeply"
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        vr = raw.VR if raw is not None else None
        if vr == "SQ":
            for item in ds[tag].value or ():
                why = _walk(item, stream, depth + 1)
                if why is not None:
                    return why
            continue
        if tag == ENCAPSULATED_DOCUMENT:
            why = _pdf_refusal(bytes(ds[tag].value or b""))
            if why is not None:
                return why
            continue
        if tag.is_private and vr in ("OB", "OW", "UN"):
            head = _head(raw, stream)
            for magic, what in MAGICS:
                if head.startswith(magic):
                    return f"a private element holds {what}"
    return None


def _head(raw: object, stream: BinaryIO) -> bytes:
    """The first bytes of an element's value, without loading a deferred one."""
    if isinstance(raw, RawDataElement):
        if raw.value is not None:
            return bytes(raw.value[:8])
        stream.seek(raw.value_tell)
        return stream.read(8)
    value = getattr(raw, "value", b"")
    return bytes(value[:8]) if isinstance(value, (bytes, bytearray)) else b""


def _pdf_refusal(document: bytes) -> str | None:
    if not document.lstrip(b"\x00 \t\r\n").startswith(b"%PDF"):
        return None
    names = _HEX_NAME.sub(lambda m: bytes([int(m.group(1), 16)]), document)
    for action in PDF_ACTIONS:
        if re.search(re.escape(action) + rb"(?![A-Za-z0-9])", names):
            return f"the encapsulated PDF holds an action a PDF reader runs ({action.decode()})"
    return None


__all__ = ["active_content"]
