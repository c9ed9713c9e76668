"""The refusal every dicom-mesh protocol answers with: a stable error code and a short message."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import MeshError, error_from_code

MAX_MESSAGE_CHARS = 512


def wire_message(text: str) -> str:
    """A refusal message the peer can decode: UTF-8, no control characters but tab, <= 512 chars."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c >= " " or c == "\t" else " " for c in text)[:MAX_MESSAGE_CHARS]


@dataclass(frozen=True)
class Refused:
    code: int
    message: str

    @classmethod
    def from_error(cls, exc: MeshError) -> Refused:
        return cls(exc.code, wire_message(str(exc)))

    def to_error(self) -> MeshError:
        """The error the peer reported, as our own exception class for that code."""
        return error_from_code(self.code, f"peer refused: {self.message}")
