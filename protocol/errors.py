"""The one error hierarchy of dicom-mesh.

Every error says whose fault it is and carries a stable wire code, so a
peer that refuses a request can tell the other side why in one integer.
Codes are grouped: 1xx decoding/framing, 2xx limits, 3xx signatures,
4xx certificates and roster, 5xx documents, 6xx authorisation, 7xx storage,
8xx service availability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class MeshError(Exception):
    """Root of every error dicom-mesh raises on purpose."""

    code: ClassVar[int] = 100
    name: ClassVar[str] = "mesh-error"


class LocalProtocolError(MeshError):
    """We tried to do something the protocol forbids (our bug or our input)."""

    code = 101
    name = "local-protocol-error"


class ConfigError(MeshError):
    """A configuration file (node.toml, directory.toml, a scenario) that is missing, malformed or
    inconsistent. The message names the file, the key (dotted, ``limits.max_streams_per_peer``) and
    the problem; read by protocol.config_reader, the one reader of every TOML file."""

    code = 902
    name = "config-error"


class RemoteProtocolError(MeshError):
    """The remote side sent something the protocol forbids."""

    code = 102
    name = "remote-protocol-error"


class DecodeError(RemoteProtocolError):
    """Bytes that are not a valid deterministic CBOR item of the expected shape."""

    code = 110
    name = "decode-error"


class NonCanonicalError(DecodeError):
    """Valid CBOR, but not in the deterministic encoding (RFC 8949 section 4.2)."""

    code = 111
    name = "non-canonical"


class SchemaError(DecodeError):
    """Well-formed CBOR with missing, extra or wrongly typed fields."""

    code = 112
    name = "schema-error"


class FrameError(RemoteProtocolError):
    """A length-prefixed frame that is truncated or malformed."""

    code = 120
    name = "frame-error"


class UnexpectedFrameError(RemoteProtocolError):
    """A well-formed frame the conversation did not allow at this point
    (a block response for another CID, a frame after the last, a refusal after data)."""

    code = 121
    name = "unexpected-frame"


class LimitError(RemoteProtocolError):
    """A size, depth or count above the documented limit."""

    code = 200
    name = "limit-exceeded"


class SignatureError(MeshError):
    """A signature that does not verify under the expected key and label."""

    code = 300
    name = "bad-signature"


class CertificateError(MeshError):
    """A certificate that is not valid now under the current roster."""

    code = 400
    name = "certificate-invalid"


class CertificateExpiredError(CertificateError):
    code = 401
    name = "certificate-expired"


class CertificateNotYetValidError(CertificateError):
    code = 402
    name = "certificate-not-yet-valid"


class UnknownIssuerError(CertificateError):
    code = 403
    name = "unknown-issuer"


class CertificateRevokedError(CertificateError):
    code = 404
    name = "certificate-revoked"


class RoleError(CertificateError):
    """The certificate is valid but does not grant the role the action needs."""

    code = 405
    name = "role-missing"


class ForgedCertificateError(CertificateError):
    """Bytes presented as a certificate that do not decode as one or whose signature does not verify."""

    code = 406
    name = "certificate-forged"


class CertificateMismatchError(CertificateError):
    """A valid certificate presented by a peer whose key it does not name."""

    code = 407
    name = "certificate-not-this-peer"


class RosterError(MeshError):
    """A roster that cannot be accepted."""

    code = 410
    name = "roster-invalid"


class RosterRollbackError(RosterError):
    code = 411
    name = "roster-rollback"


class RosterExpiredError(RosterError):
    code = 412
    name = "roster-expired"


class RosterNotYetValidError(RosterError):
    code = 413
    name = "roster-not-yet-valid"


class DocumentError(MeshError):
    """A signed document whose content is inconsistent (wrong org, wrong peer, bad field)."""

    code = 500
    name = "document-invalid"


class WrongOrganisationError(DocumentError):
    code = 501
    name = "wrong-organisation"


class DocumentExpiredError(DocumentError):
    code = 502
    name = "document-expired"


class RevisionRollbackError(DocumentError):
    code = 503
    name = "revision-rollback"


class UnauthorisedError(MeshError):
    """The peer may not do this. Deliberately says nothing more."""

    code = 600
    name = "unauthorised"


class NotFoundError(MeshError):
    code = 610
    name = "not-found"


class StorageError(MeshError):
    """Local storage failed (disk full, I/O error, corrupt database)."""

    code = 700
    name = "storage-error"


class UnavailableError(MeshError):
    """A service could not be reached and no usable cached answer exists."""

    code = 800
    name = "unavailable"


@dataclass(frozen=True)
class ErrorCode:
    """One allocated wire code: its stable name, and the protocol class a peer's report of it becomes.

    For the protocol's own errors `rebuilt_as` is the class itself. A code owned by a class outside
    protocol/ (the node's, the admin tools', the simulator's) is rebuilt as the protocol class that
    class derives from: protocol/ imports none of them."""

    code: int
    name: str
    rebuilt_as: type[MeshError]


def _own(cls: type[MeshError]) -> ErrorCode:
    return ErrorCode(cls.code, cls.name, cls)


#: Every wire code in use anywhere in dicom-mesh: the one place a code is allocated. A class defined
#: elsewhere declares its `code` and `name` and is listed here; tests/test_error_codes.py imports
#: every module and fails on a class missing from this table, a code used twice or an entry no class owns.
REGISTRY: tuple[ErrorCode, ...] = (
    _own(MeshError),
    _own(LocalProtocolError),
    _own(RemoteProtocolError),
    _own(DecodeError),
    _own(NonCanonicalError),
    _own(SchemaError),
    _own(FrameError),
    _own(UnexpectedFrameError),
    ErrorCode(122, "multipart-error", RemoteProtocolError),  # meshnode/web/multipart.py
    _own(LimitError),
    _own(SignatureError),
    _own(CertificateError),
    _own(CertificateExpiredError),
    _own(CertificateNotYetValidError),
    _own(UnknownIssuerError),
    _own(CertificateRevokedError),
    _own(RoleError),
    _own(ForgedCertificateError),
    _own(CertificateMismatchError),
    _own(RosterError),
    _own(RosterRollbackError),
    _own(RosterExpiredError),
    _own(RosterNotYetValidError),
    _own(DocumentError),
    _own(WrongOrganisationError),
    _own(DocumentExpiredError),
    _own(RevisionRollbackError),
    ErrorCode(504, "instance-mismatch", DocumentError),  # meshnode/node/completion.py
    ErrorCode(505, "content-mismatch", DocumentError),
    ErrorCode(506, "request-replayed", DocumentError),  # protocol/study_request.py (RequestReplayError)
    _own(UnauthorisedError),
    ErrorCode(601, "patient-mismatch", UnauthorisedError),  # meshnode/node/study_match.py
    ErrorCode(602, "too-many-pending-requests", UnauthorisedError),  # meshnode/storage/request_store.py
    _own(NotFoundError),
    _own(StorageError),
    ErrorCode(701, "block-corrupt", StorageError),  # meshnode/storage/blockstore.py
    ErrorCode(702, "block-missing", StorageError),
    ErrorCode(703, "disk-full", StorageError),
    ErrorCode(704, "digest-mismatch", StorageError),  # the node's export
    ErrorCode(705, "codestream-error", StorageError),  # meshnode/gateway/dimse/codestream.py (retrieve conversion)
    ErrorCode(720, "bad-dicom", MeshError),  # meshnode/dicom/errors.py
    ErrorCode(721, "not-dicom", MeshError),
    ErrorCode(722, "truncated-dicom", MeshError),
    ErrorCode(723, "malformed-dicom", MeshError),
    ErrorCode(724, "dicom-too-deep", MeshError),
    ErrorCode(725, "pixel-data-mismatch", MeshError),
    ErrorCode(726, "missing-uid", MeshError),
    ErrorCode(727, "dicom-too-large", MeshError),
    ErrorCode(728, "instance-changed", MeshError),
    ErrorCode(729, "sop-mismatch", MeshError),
    _own(UnavailableError),
    ErrorCode(901, "wrong-passphrase", MeshError),  # tools/authority/keyfile.py
    _own(ConfigError),
    ErrorCode(910, "scenario-error", ConfigError),  # simulations/scenario/errors.py (a ConfigError)
    ErrorCode(930, "route-error", MeshError),  # meshnode/gateway/
    ErrorCode(932, "bad-query", MeshError),
    ErrorCode(933, "too-many-results", MeshError),
    ErrorCode(950, "deidentification-error", LocalProtocolError),  # meshnode/study/deidentify.py
    ErrorCode(951, "pixel-risk-refused", LocalProtocolError),  # meshnode/node/research_share.py
    ErrorCode(952, "held-share-error", LocalProtocolError),
    ErrorCode(953, "preview-error", LocalProtocolError),  # meshnode/study/preview.py
    ErrorCode(941, "conflict-error", MeshError),  # protocol/conflict.py (a SOP Instance UID conflict decision)
    ErrorCode(960, "email-error", UnavailableError),  # meshnode/notify/smtp.py (the relay did not take it)
    ErrorCode(970, "sign-in-refused", LocalProtocolError),  # meshnode/web/signin.py
    ErrorCode(971, "sign-on-refused", LocalProtocolError),  # meshnode/web/oidc.py (OpenID Connect)
    ErrorCode(980, "link-gone", NotFoundError),  # protocol/patient_link.py (unknown, expired or revoked: one answer)
    ErrorCode(981, "code-refused", UnauthorisedError),
    ErrorCode(982, "link-locked", UnauthorisedError),
    ErrorCode(983, "patient-access-error", LocalProtocolError),
    ErrorCode(984, "code-limit-reached", UnauthorisedError),
    ErrorCode(985, "upload-file-refused", RemoteProtocolError),  # meshnode/patient/upload_errors.py
    ErrorCode(986, "executable-preamble", RemoteProtocolError),
    ErrorCode(987, "archive-refused", RemoteProtocolError),
    ErrorCode(988, "upload-limit", LimitError),
    ErrorCode(989, "upload-state-error", RemoteProtocolError),
    ErrorCode(990, "media-set-error", LocalProtocolError),  # meshnode/study/zip_layout.py (patient download)
    ErrorCode(991, "key-image-error", LocalProtocolError),  # meshnode/study/key_image.py
    ErrorCode(992, "range-not-satisfiable", LocalProtocolError),  # meshnode/web/byte_range.py (patient downloads)
)


def _index(entries: tuple[ErrorCode, ...]) -> dict[int, ErrorCode]:
    out: dict[int, ErrorCode] = {}
    for entry in entries:
        if entry.code in out:
            raise LocalProtocolError(f"error code {entry.code} is allocated twice")
        out[entry.code] = entry
    return out


#: The registry by code.
CODES: dict[int, ErrorCode] = _index(REGISTRY)

#: The protocol's own errors (those defined above), as documented in docs/protocol/documents.md.
ERRORS_BY_CODE: dict[int, type[MeshError]] = {e.code: e.rebuilt_as for e in REGISTRY if e.rebuilt_as.code == e.code}


def error_from_code(code: int, message: str) -> MeshError:
    """Rebuild the error a peer reported: the protocol's class for its code, or for a code a class outside
    protocol/ owns, the protocol class that one derives from, its name before the message. Unknown codes
    become RemoteProtocolError. The same whatever modules this process has imported."""
    entry = CODES.get(code)
    if entry is None:
        return RemoteProtocolError(message)
    if entry.rebuilt_as.code == code:
        return entry.rebuilt_as(message)
    return entry.rebuilt_as(f"{entry.name}: {message}")
