"""bench/wado.py's byte-for-byte check: every part of a multipart/related body matched to one file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.wado import exact_parts, multipart_parts

BOUNDARY = "b0und4ry"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def body(parts: list[bytes]) -> bytes:
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def files(tmp_path: Path, contents: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_every_part_is_compared_not_only_the_first(tmp_path: Path) -> None:
    contents = [bytes([i]) * (100 + i) + b"\r\n--not-the-boundary" for i in range(8)]
    sent = files(tmp_path, contents)
    assert exact_parts(sent, CONTENT_TYPE, body(list(reversed(contents)))) == 8  # any order
    altered = contents[:7] + [contents[7][:-1] + b"X"]  # the last part, one byte changed
    assert exact_parts(sent, CONTENT_TYPE, body(altered)) == 7


def test_a_part_sent_twice_does_not_stand_in_for_a_missing_one(tmp_path: Path) -> None:
    sent = files(tmp_path, [b"one", b"two"])
    assert exact_parts(sent, CONTENT_TYPE, body([b"one", b"one"])) == 1


@pytest.mark.parametrize("bad", [
    body([b"a", b"b"])[:-10],  # no close delimiter
    body([b"a"])[: len(f"--{BOUNDARY}\r\nContent-Type")],  # truncated in a part's headers
])
def test_a_truncated_body_is_an_error(bad: bytes) -> None:
    with pytest.raises(RuntimeError):
        multipart_parts(CONTENT_TYPE, bad)


def test_a_count_mismatch_and_a_missing_boundary_are_errors(tmp_path: Path) -> None:
    sent = files(tmp_path, [b"one", b"two"])
    with pytest.raises(RuntimeError, match="1 parts"):
        exact_parts(sent, CONTENT_TYPE, body([b"one"]))
    with pytest.raises(RuntimeError, match="boundary"):
        multipart_parts('multipart/related; type="application/dicom"', body([b"one"]))
