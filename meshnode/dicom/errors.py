"""Why a file was refused as a DICOM instance.

Every refusal is a `DicomError` whose message is one line saying what is wrong
and where (byte offsets, tag numbers), never what the file contains: no
patient names, no IDs, no values. Codes 720-729 belong to this package.
"""

from __future__ import annotations

from protocol.errors import MeshError


class DicomError(MeshError):
    """A file that cannot be ingested as a DICOM instance."""

    code = 720
    name = "bad-dicom"

    @property
    def reason(self) -> str:
        """The one-line explanation (the message the error was raised with)."""
        return str(self)


class NotDicomError(DicomError):
    """No DICOM prefix and nothing that parses as a DICOM data set."""

    code = 721
    name = "not-dicom"


class TruncatedDicomError(DicomError):
    """The file ends inside an element, or an element's length runs past its end."""

    code = 722
    name = "truncated-dicom"


class MalformedDicomError(DicomError):
    """Elements, items or delimiters that do not nest or fit together."""

    code = 723
    name = "malformed-dicom"


class DicomDepthError(DicomError):
    """Sequences nested deeper than the node accepts."""

    code = 724
    name = "dicom-too-deep"


class PixelDataMismatchError(DicomError):
    """Native pixel data whose length does not match the image geometry."""

    code = 725
    name = "pixel-data-mismatch"


class MissingUidError(DicomError):
    """A Study, Series, SOP Instance or SOP Class UID that is absent or not a valid UID."""

    code = 726
    name = "missing-uid"


class DicomLimitError(DicomError):
    """A size above what the node accepts (for example an inflated data set)."""

    code = 727
    name = "dicom-too-large"


class InstanceChangedError(DicomError):
    """The file changed between planning and reading its blocks."""

    code = 728
    name = "instance-changed"


class SopMismatchError(DicomError):
    """A data set whose SOP Class or SOP Instance UID is not the one its C-STORE request names."""

    code = 729
    name = "sop-mismatch"
