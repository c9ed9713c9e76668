"""The one error hierarchy of dicom-mesh.

Every error says whose fault it is and carries a stable wire code, so a
peer that refuses a request can tell the other side why in one integer.
Codes are grouped: 1xx decoding/framing, 2xx limits, 3xx signatures,
4xx certificates and roster, 5xx documents, 6xx authorisation, 7xx storage,
8xx service availability.
"""

from __future__ import annotations

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


def _all_subclasses(cls: type[MeshError]) -> list[type[MeshError]]:
    out: list[type[MeshError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def errors_by_code() -> dict[int, type[MeshError]]:
    """Every MeshError class by wire code, including subclasses defined in other packages."""
    return {c.code: c for c in _all_subclasses(MeshError)}


#: The protocol's own errors (those defined above), as documented in docs/protocol/.
ERRORS_BY_CODE: dict[int, type[MeshError]] = errors_by_code()


def error_from_code(code: int, message: str) -> MeshError:
    """Rebuild the error a peer reported (unknown codes become RemoteProtocolError)."""
    cls = errors_by_code().get(code, RemoteProtocolError)
    return cls(message)
