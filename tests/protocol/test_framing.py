"""Length-prefixed framing: any chunking yields the same frames; limits bite at the prefix."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FrameError, LimitError, LocalProtocolError
from protocol.framing import ABSOLUTE_MAX_FRAME, PREFIX_SIZE, FrameDecoder, encode_frame

from tests.protocol.assertions import raises_exactly

MAX = 1024
payloads = st.lists(st.binary(max_size=MAX), max_size=8)


def stream_of(frames: list[bytes]) -> bytes:
    return b"".join(encode_frame(f, MAX) for f in frames)


def chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def feed_all(decoder: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    decoder.end_of_stream()
    return out


def test_encode_frame_prefix() -> None:
    assert encode_frame(b"", MAX) == b"\x00\x00\x00\x00"
    assert encode_frame(b"abc", MAX) == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 300, MAX)[:PREFIX_SIZE] == struct.pack(">I", 300)


@settings(max_examples=100, deadline=None)
@given(payloads)
def test_byte_by_byte(frames: list[bytes]) -> None:
    data = stream_of(frames)
    decoder = FrameDecoder(MAX)
    assert feed_all(decoder, [data[i : i + 1] for i in range(len(data))]) == frames
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(payloads, st.lists(st.integers(min_value=0), max_size=20))
def test_random_chunkings(frames: list[bytes], cuts: list[int]) -> None:
    data = stream_of(frames)
    decoder = FrameDecoder(MAX)
    assert feed_all(decoder, chunk(data, cuts)) == frames
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(payloads)
def test_all_at_once(frames: list[bytes]) -> None:
    decoder = FrameDecoder(MAX)
    assert feed_all(decoder, [stream_of(frames)]) == frames


def test_frame_of_exactly_the_maximum_is_accepted() -> None:
    decoder = FrameDecoder(MAX)
    assert decoder.feed(encode_frame(b"m" * MAX, MAX)) == [b"m" * MAX]


@pytest.mark.parametrize("declared", [MAX + 1, 2**31, 2**32 - 1])
def test_oversized_length_refused_at_the_prefix(declared: int) -> None:
    decoder = FrameDecoder(MAX)
    prefix = struct.pack(">I", declared)
    assert decoder.feed(prefix[:3]) == []
    assert decoder.buffered == 3
    with raises_exactly(LimitError, match="exceeds maximum"):
        decoder.feed(prefix[3:])
    assert decoder.buffered == 0
    # The stream is dead: later bytes are refused, not buffered.
    with raises_exactly(FrameError):
        decoder.feed(b"\x00" * 100)
    assert decoder.buffered == 0


def test_oversized_length_refused_even_with_payload_in_the_same_chunk() -> None:
    decoder = FrameDecoder(MAX)
    good = encode_frame(b"ok", MAX)
    with raises_exactly(LimitError):
        decoder.feed(good + struct.pack(">I", MAX + 1) + b"x" * 500)
    assert decoder.buffered == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=4), st.data())
def test_truncated_frame_at_end_of_stream(frames: list[bytes], data: st.DataObject) -> None:
    stream = stream_of(frames)
    cut = data.draw(st.integers(1, len(stream) - 1))
    decoder = FrameDecoder(MAX)
    before_cut = stream[:cut]
    complete = decoder.feed(before_cut)
    assert complete == frames[: len(complete)]
    if sum(PREFIX_SIZE + len(f) for f in complete) == cut:
        decoder.end_of_stream()  # cut fell on a frame boundary: nothing is missing
    else:
        with raises_exactly(FrameError, match="stream ended inside a frame"):
            decoder.end_of_stream()


def test_truncated_prefix_at_end_of_stream() -> None:
    decoder = FrameDecoder(MAX)
    decoder.feed(b"\x00\x00")
    with raises_exactly(FrameError):
        decoder.end_of_stream()


def test_empty_stream_and_empty_frames() -> None:
    decoder = FrameDecoder(MAX)
    decoder.end_of_stream()
    decoder = FrameDecoder(MAX)
    assert decoder.feed(encode_frame(b"", MAX) * 3) == [b"", b"", b""]
    decoder.end_of_stream()


def test_encode_frame_refuses_oversized_payloads() -> None:
    encode_frame(b"x" * MAX, MAX)
    with raises_exactly(LocalProtocolError, match="exceeds maximum"):
        encode_frame(b"x" * (MAX + 1), MAX)


@pytest.mark.parametrize("max_frame", [0, -1, ABSOLUTE_MAX_FRAME + 1])
def test_decoder_refuses_absurd_maximum(max_frame: int) -> None:
    with raises_exactly(LocalProtocolError):
        FrameDecoder(max_frame)


def test_a_whole_frame_fed_at_a_boundary_is_returned_without_copying() -> None:
    decoder = FrameDecoder(MAX)
    assert decoder.feed(struct.pack(">I", 300)) == []
    body = bytes(range(256)) + b"x" * 44
    (frame,) = decoder.feed(body)
    assert frame is body
    assert decoder.buffered == 0
