"""DICOM Part 10 files from a data set received over the network, and back.

A C-STORE carries a data set (no preamble, no File Meta Information) in the
presentation context's transfer syntax. The node stores instances as Part 10
files: `part10_file` puts the 128-byte preamble, 'DICM' and a File Meta
Information group (PS3.10 7.1) in front of the data set's bytes, unchanged.
`dataset_bytes` is the inverse: the data set of a stored file, byte for byte,
to send it on (C-STORE sub-operations, forwarding to a PACS).
"""

from __future__ import annotations

import struct

from meshnode.dicom.errors import MalformedDicomError
from meshnode.dicom.structure import FileLayout

#: dicom-mesh's Implementation Class UID (a UUID-derived UID, PS3.5 B.2) and version name
IMPLEMENTATION_CLASS_UID = "2.25.133038701970486032849502892873194462020"
IMPLEMENTATION_VERSION_NAME = "DICOM_MESH_01"
PREAMBLE = bytes(128) + b"DICM"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded_uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _padded_text(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str = "") -> bytes:
    """The File Meta Information group (explicit VR little endian, with its group length)."""
    body = b"".join([
        _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, 0x0002, b"UI", _padded_uid(sop_class_uid)),
        _element(0x0002, 0x0003, b"UI", _padded_uid(sop_instance_uid)),
        _element(0x0002, 0x0010, b"UI", _padded_uid(transfer_syntax_uid)),
        _element(0x0002, 0x0012, b"UI", _padded_uid(IMPLEMENTATION_CLASS_UID)),
        _element(0x0002, 0x0013, b"SH", _padded_text(IMPLEMENTATION_VERSION_NAME)),
        *([_element(0x0002, 0x0016, b"AE", _padded_text(source_ae.strip()))] if source_ae.strip() else []),
    ])
    return _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def part10_file(dataset: bytes | memoryview, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                source_ae: str = "") -> bytes:
    """A Part 10 file holding `dataset` (its bytes unchanged)."""
    return b"".join([PREAMBLE, file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae), dataset])


def dataset_bytes(data: bytes, layout: FileLayout) -> bytes:
    """The data set of a stored Part 10 file: everything after its File Meta Information."""
    if not 0 <= layout.dataset_offset < len(data):
        raise MalformedDicomError("the stored file has no data set after its meta information")
    return data[layout.dataset_offset:]
