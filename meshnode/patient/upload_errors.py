"""Why an uploaded file or a resumable upload was refused (issue 14, uploads). Codes 985-989.

Every message is one line meant for the person uploading (shown on their page next to the file's name):
what is wrong, never what the file contains.
"""

from __future__ import annotations

from protocol.errors import LimitError, RemoteProtocolError


class FileRefusedError(RemoteProtocolError):
    """An uploaded file that is not a DICOM instance the node will hold (not DICOM, malformed, no UIDs)."""

    code = 985
    name = "upload-file-refused"


class ExecutablePreambleError(FileRefusedError):
    """A DICOM file whose 128-byte preamble holds something other than zeros or a TIFF header: an
    executable (PE "MZ", ELF, Mach-O, a script's "#!") or unknown bytes (the PE-DICOM polyglot,
    CVE-2019-11687)."""

    code = 986
    name = "executable-preamble"


class ArchiveRefusedError(FileRefusedError):
    """A ZIP archive, or one member of it, refused: path tricks in its name, a symbolic link, an encrypted
    or nested archive, a duplicate name, an archive that cannot be read."""

    code = 987
    name = "archive-refused"


class UploadLimitError(LimitError):
    """Over a limit of [patient_access]: one file's size, a link's total or file count, or a ZIP's
    decompressed size or ratio (a decompression bomb)."""

    code = 988
    name = "upload-limit"


class UploadStateError(RemoteProtocolError):
    """A resumable upload or a held upload in another state than the request needs (an offset that is not
    the upload's, an upload already complete, a link's uploads accepted or rejected already, a held file that
    changed). Raised on a client's request (the uploader's tus client, a staff user's decision), never on
    this node's own mistake: a RemoteProtocolError (review minor; it was a LocalProtocolError)."""

    code = 989
    name = "upload-state-error"
