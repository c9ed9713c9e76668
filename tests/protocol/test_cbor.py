"""Deterministic CBOR: round-trips, agreement with cbor2, and a bad-input corpus."""

from __future__ import annotations

import tracemalloc

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.cbor import CborValue
from protocol.errors import DecodeError, LimitError, LocalProtocolError, MeshError, NonCanonicalError

from tests.protocol.assertions import head, raises_exactly, shortest_width

UINT64_MAX = 2**64 - 1
ints64 = st.integers(min_value=-(2**64), max_value=UINT64_MAX)
scalars = st.none() | st.booleans() | ints64 | st.binary(max_size=64) | st.text(max_size=32)
keys = st.text(max_size=12) | ints64


def values(key_strategy: st.SearchStrategy[str | int] = keys) -> st.SearchStrategy[CborValue]:
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=6) | st.dictionaries(key_strategy, children, max_size=6),
        max_leaves=30,
    )


# Maps whose keys are all of one CBOR major type (text, unsigned, or negative).
# See test_matches_cbor2_canonical for why the comparison with cbor2 needs this.
homogeneous_keys = st.sampled_from(
    [
        st.text(max_size=30),
        st.integers(0, UINT64_MAX),
        st.integers(-(2**64), -1),
    ]
)


@st.composite
def homogeneous_values(draw: st.DrawFn) -> CborValue:
    strategy = draw(homogeneous_keys)
    return draw(values(strategy))


FAST = settings(max_examples=200, deadline=None)


@FAST
@given(values())
def test_round_trip(value: CborValue) -> None:
    data = cbor.encode(value)
    assert cbor.decode(data, max_depth=64) == value
    assert cbor.encode(cbor.decode(data, max_depth=64)) == data


@FAST
@given(values())
def test_cbor2_reads_what_we_write(value: CborValue) -> None:
    # An independent decoder agrees on the meaning of our bytes.
    assert cbor2.loads(cbor.encode(value)) == value


@FAST
@given(homogeneous_values())
def test_matches_cbor2_canonical(value: CborValue) -> None:
    # cbor2's canonical=True sorts map keys length-first (the RFC 7049 section 3.9
    # "canonical CBOR" rule), while RFC 8949 section 4.2.1, which we follow,
    # sorts by the bytewise order of the encoded keys. The two orders agree
    # whenever all keys of a map share one major type, because within one major
    # type a shorter encoding always has a smaller first byte or a smaller
    # argument; they differ for mixed keys (see test_rfc8949_order_differs_from_cbor2).
    assert cbor.encode(value) == cbor2.dumps(value, canonical=True)


def test_rfc8949_order_differs_from_cbor2_for_mixed_keys() -> None:
    # 1000 encodes as 19 03 e8 (3 bytes), "a" as 61 61 (2 bytes).
    # Bytewise: 0x19 < 0x61, so 1000 first. Length-first (cbor2): "a" first.
    value: CborValue = {"a": 1, 1000: 2}
    assert cbor.encode(value) == bytes.fromhex("a2" "1903e8" "02" "6161" "01")
    assert cbor2.dumps(value, canonical=True) == bytes.fromhex("a2" "6161" "01" "1903e8" "02")
    # -1 (20) against 24 (18 18): bytewise puts 24 first.
    assert cbor.encode({-1: 0, 24: 0}) == bytes.fromhex("a2" "1818" "00" "20" "00")


@FAST
@given(values())
def test_decode_accepts_only_its_own_encoding(value: CborValue) -> None:
    # cbor2 with canonical=False writes some maps in insertion order; whenever
    # those bytes differ from ours the strict decoder must refuse them.
    loose = cbor2.dumps(value)
    if loose == cbor.encode(value):
        assert cbor.decode(loose, max_depth=64) == value
    else:
        with pytest.raises(NonCanonicalError):
            cbor.decode(loose, max_depth=64)


@settings(max_examples=60, deadline=None)
@given(values())
def test_every_truncation_is_a_decode_error(value: CborValue) -> None:
    data = cbor.encode(value)
    for cut in range(len(data)):
        with raises_exactly(DecodeError):
            cbor.decode(data[:cut], max_depth=64)


@FAST
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_mesh_errors(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except MeshError:
        return
    assert cbor.encode(value) == data


@st.composite
def long_form_heads(draw: st.DrawFn) -> bytes:
    """An item whose head uses more bytes than the shortest form needs."""
    major = draw(st.sampled_from([0, 1, 2, 3, 4, 5]))
    arg = draw(st.integers(0, 40) if major >= 2 else st.integers(0, 2**32 - 1))
    widths = [w for w in (1, 2, 4, 8) if w > shortest_width(arg)]
    width = draw(st.sampled_from(widths))
    if major in (2, 3):
        payload = b"a" * arg
    elif major == 4:
        payload = b"\x00" * arg
    elif major == 5:
        payload = b"".join(cbor.encode(i) + b"\x00" for i in range(arg))
    else:
        payload = b""
    return head(major, arg, width) + payload


@FAST
@given(long_form_heads())
def test_non_shortest_heads_refused(data: bytes) -> None:
    with raises_exactly(NonCanonicalError, match="non-shortest"):
        cbor.decode(data)


@pytest.mark.parametrize(
    "hex_data",
    [
        "1817",  # 23 in one extra byte
        "190017",  # 23 in two
        "1900ff",  # 255 in two
        "1a0000ffff",  # 65535 in four
        "1b00000000ffffffff",  # 2**32-1 in eight
        "3800",  # -1 in one extra byte
        "5801ff",  # 1-byte byte string with long length
        "780161",  # "a" with long length
        "980100",  # [0] with long count
        "b8010000",  # {0: 0} with long count
        "d801",  # tag 1 with a long tag head (canonical check comes before the tag check)
    ],
)
def test_non_shortest_corpus(hex_data: str) -> None:
    with raises_exactly(NonCanonicalError):
        cbor.decode(bytes.fromhex(hex_data))


@pytest.mark.parametrize(
    "hex_data, what",
    [
        ("9f00ff", "indefinite array"),
        ("9fff", "empty indefinite array"),
        ("bf6161 00ff", "indefinite map"),
        ("5f4101ff", "indefinite byte string"),
        ("7f6161ff", "indefinite text string"),
    ],
)
def test_indefinite_lengths_refused(hex_data: str, what: str) -> None:
    with raises_exactly(DecodeError, match="indefinite"):
        cbor.decode(bytes.fromhex(hex_data.replace(" ", "")))


@pytest.mark.parametrize(
    "hex_data, match",
    [
        ("d81c80", "shared-reference"),  # tag 28: shareable
        ("d81d00", "shared-reference"),  # tag 29: shared reference
        ("c074323031332d30332d32315432303a30343a30305a", "tag 0"),  # date/time string
        ("c249010000000000000000", "tag 2"),  # bignum
        ("d9d9f700", "tag 55799"),  # self-described CBOR
        ("d8ff00", "tag 255"),
    ],
)
def test_tags_refused(hex_data: str, match: str) -> None:
    with raises_exactly(DecodeError, match=match):
        cbor.decode(bytes.fromhex(hex_data))


@pytest.mark.parametrize(
    "hex_data, match",
    [
        ("f93c00", "floating-point"),  # 1.0 half
        ("fa3fc00000", "floating-point"),  # 1.5 single
        ("fb3ff199999999999a", "floating-point"),  # 1.1 double
        ("f7", "simple value 23"),  # undefined
        ("e0", "simple value 0"),
        ("f3", "simple value 19"),
        ("f820", "simple value 24"),  # one-byte simple value
        ("ff", "break"),
        ("fc", "simple value 28"),  # reserved
        ("1c", "reserved"),  # reserved additional information in an integer
        ("5d", "reserved"),
    ],
)
def test_floats_simple_values_and_reserved_refused(hex_data: str, match: str) -> None:
    with raises_exactly(DecodeError, match=match):
        cbor.decode(bytes.fromhex(hex_data))


def test_duplicate_map_keys_refused() -> None:
    with raises_exactly(DecodeError, match="duplicate"):
        cbor.decode(bytes.fromhex("a2" "6161" "01" "6161" "02"))
    with raises_exactly(DecodeError, match="duplicate"):
        cbor.decode(bytes.fromhex("a2" "01" "00" "01" "00"))


@pytest.mark.parametrize(
    "hex_data",
    [
        "a2" "6162" "01" "6161" "02",  # "b" before "a"
        "a2" "626161" "01" "6162" "02",  # "aa" before "b" (length-first order is wrong)
        "a2" "6161" "01" "01" "02",  # text before integer
        "a2" "20" "00" "00" "00",  # -1 before 0
        "a2" "6161" "01" "1903e8" "02",  # cbor2's canonical order for mixed keys
    ],
)
def test_unsorted_map_keys_refused(hex_data: str) -> None:
    with raises_exactly(NonCanonicalError, match="canonical order"):
        cbor.decode(bytes.fromhex(hex_data))


@pytest.mark.parametrize("key_hex", ["40", "f5", "f6", "80", "a0"])
def test_map_keys_must_be_text_or_integer(key_hex: str) -> None:
    with raises_exactly(DecodeError, match="map key"):
        cbor.decode(bytes.fromhex("a1" + key_hex + "00"))


@pytest.mark.parametrize(
    "payload_hex",
    [
        "62c328",  # "b" then a lead byte followed by a non-continuation byte
        "c080",  # overlong NUL
        "eda080",  # UTF-16 surrogate U+D800 encoded in UTF-8
        "ff",
        "f4908080",  # above U+10FFFF
        "e282",  # truncated sequence
    ],
)
def test_invalid_utf8_refused(payload_hex: str) -> None:
    payload = bytes.fromhex(payload_hex)
    with raises_exactly(DecodeError, match="UTF-8"):
        cbor.decode(bytes((0x60 | len(payload),)) + payload)
    cbor.decode(bytes((0x40 | len(payload),)) + payload)  # the same bytes are a fine byte string


def test_trailing_bytes_refused() -> None:
    with raises_exactly(DecodeError, match="trailing"):
        cbor.decode(b"\x00\x00")
    with raises_exactly(DecodeError, match="trailing"):
        cbor.decode(cbor.encode({"a": [1, 2]}) + b"\xf6")


def test_empty_input_refused() -> None:
    with raises_exactly(DecodeError, match="truncated"):
        cbor.decode(b"")


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x00", b"\xa1\x61a"])
def test_deep_nesting_is_a_limit_error_not_recursion(opener: bytes) -> None:
    data = opener * 10_000 + b"\x80"
    with raises_exactly(LimitError, match="nesting"):
        cbor.decode(data)


def test_depth_limit_is_exact() -> None:
    nested: CborValue = 0
    for _ in range(cbor.DEFAULT_MAX_DEPTH):
        nested = [nested]
    assert cbor.decode(cbor.encode(nested)) == nested
    with raises_exactly(LimitError):
        cbor.decode(cbor.encode([nested]))
    with raises_exactly(LimitError):
        cbor.decode(cbor.encode(nested), max_depth=cbor.DEFAULT_MAX_DEPTH - 1)


def test_item_count_limit() -> None:
    data = cbor.encode([None] * 10)
    assert cbor.decode(data, max_items=11) == [None] * 10
    with raises_exactly(LimitError, match="too many items"):
        cbor.decode(data, max_items=10)


BIG = (2**63).to_bytes(8, "big").hex()


@pytest.mark.parametrize(
    "hex_data",
    [
        "9b" + BIG + "00000000",  # array of 2**63 items
        "9b" + "ff" * 8 + "00000000",  # array of 2**64-1 items
        "bb" + BIG + "00000000",  # map of 2**63 pairs
        "5b" + BIG + "00000000",  # byte string of 2**63 bytes
        "7b" + BIG + "00000000",  # text string of 2**63 bytes
        "5a" + "ff" * 4 + "00000000",  # 4 GiB byte string
        "9a" + "ff" * 4 + "00000000",  # 4 billion items
        "81" + "9b" + BIG,  # the same, nested
        "8200",  # array of 2 with one item present
        "a200",  # map of 2 pairs with one byte present
        "a1" + "00",  # map of 1 pair with only the key present
        "590100" + "00" * 255,  # 256-byte string with 255 present
    ],
)
def test_declared_lengths_beyond_the_input_fail_fast(hex_data: str) -> None:
    data = bytes.fromhex(hex_data)
    tracemalloc.start()
    try:
        with raises_exactly(DecodeError):
            cbor.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"decoder allocated {peak} bytes for a {len(data)}-byte input"


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        {1, 2},
        (1, 2),
        bytearray(b"x"),
        {True: 1},
        {b"k": 1},
        {(1,): 2},
        2**64,
        -(2**64) - 1,
        "\ud800",  # lone surrogate: not encodable as UTF-8
    ],
    ids=repr,
)
def test_encode_refuses_values_outside_the_subset(value: object) -> None:
    with raises_exactly(LocalProtocolError):
        cbor.encode(value)  # type: ignore[arg-type]


def test_encode_refuses_cycles_and_absurd_nesting() -> None:
    cyclic: list[CborValue] = []
    cyclic.append(cyclic)
    with raises_exactly(LocalProtocolError):
        cbor.encode(cyclic)
    deep: CborValue = 0
    for _ in range(1000):
        deep = {"k": [deep]}
    with raises_exactly(LocalProtocolError, match="nested too deeply"):
        cbor.encode(deep)


def test_integer_extremes() -> None:
    for value, hex_data in [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (2**64 - 1, "1bffffffffffffffff"),
        (-1, "20"),
        (-24, "37"),
        (-25, "3818"),
        (-(2**64), "3bffffffffffffffff"),
    ]:
        assert cbor.encode(value) == bytes.fromhex(hex_data)
        assert cbor.decode(bytes.fromhex(hex_data)) == value


def test_decode_refuses_non_bytes() -> None:
    with raises_exactly(DecodeError):
        cbor.decode("00")  # type: ignore[arg-type]


def test_decode_accepts_bytes_like() -> None:
    assert cbor.decode(bytearray(b"\x82\x01\x02")) == [1, 2]
    assert cbor.decode(memoryview(b"\x82\x01\x02")) == [1, 2]


def test_error_classes_are_mesh_errors_with_codes() -> None:
    assert issubclass(NonCanonicalError, DecodeError)
    assert {DecodeError.code, NonCanonicalError.code, LimitError.code} == {110, 111, 200}
