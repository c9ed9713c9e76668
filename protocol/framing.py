"""Length-prefixed frames, sans-IO.

A frame is a 4-byte big-endian unsigned length followed by that many bytes.
Each protocol has its own maximum; a length above it is refused as soon as
the 4-byte prefix has arrived, before any payload is buffered.
"""

from __future__ import annotations

import struct

from protocol.errors import FrameError, LimitError, LocalProtocolError

PREFIX_SIZE = 4
ABSOLUTE_MAX_FRAME = 64 * 1024 * 1024


def encode_frame(payload: bytes, max_frame: int) -> bytes:
    """Prefix payload with its length; refuse payloads above max_frame."""
    if len(payload) > max_frame:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds maximum {max_frame}")
    return struct.pack(">I", len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream into frames: feed(bytes) -> list of complete frames."""

    def __init__(self, max_frame: int) -> None:
        if not 0 < max_frame <= ABSOLUTE_MAX_FRAME:
            raise LocalProtocolError(f"max_frame must be in 1..{ABSOLUTE_MAX_FRAME}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failed:
            raise FrameError("decoder already failed; discard the stream")
        if not self._buf:
            return self._feed_unbuffered(data)
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < PREFIX_SIZE:
                    return frames
                (length,) = struct.unpack_from(">I", self._buf, 0)
                if length > self.max_frame:
                    self._failed = True
                    self._buf.clear()
                    raise LimitError(f"frame length {length} exceeds maximum {self.max_frame}")
                del self._buf[:PREFIX_SIZE]
                self._need = length
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    def _feed_unbuffered(self, data: bytes) -> list[bytes]:
        """feed() with nothing buffered: frames are sliced out of `data` itself (a whole
        frame body passed on its own is returned as the same object, not copied)."""
        frames: list[bytes] = []
        pos = 0
        end = len(data)
        while True:
            if self._need is None:
                if end - pos < PREFIX_SIZE:
                    break
                (length,) = struct.unpack_from(">I", data, pos)
                if length > self.max_frame:
                    self._failed = True
                    raise LimitError(f"frame length {length} exceeds maximum {self.max_frame}")
                pos += PREFIX_SIZE
                self._need = length
            if end - pos < self._need:
                break
            frames.append(data[pos:pos + self._need])
            pos += self._need
            self._need = None
        if pos < end:
            self._buf += data[pos:] if pos else data
        return frames

    def end_of_stream(self) -> None:
        """Call at end of input: raises FrameError if a frame was cut short."""
        if self._need is not None or self._buf:
            self._failed = True
            raise FrameError(
                f"stream ended inside a frame ({len(self._buf)} bytes buffered)"
            )
