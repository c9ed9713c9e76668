"""Fuzz targets: one per decoder of untrusted bytes.

Each target takes bytes and either returns (the decoder produced a value, and
that value passed the target's consistency checks) or raises one of the
target's documented error classes. Anything else, a different exception, a
`Finding` from a failed consistency check, a hang or a crash, is a finding.

The targets are plain functions: tests/fuzz/test_crashers.py replays the
committed seeds and crashers through them under pytest, scripts/fuzz.py runs
them under atheris (coverage-guided, libFuzzer).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from meshnode.control.token import token_matches
from meshnode.dicom.errors import DicomError
from meshnode.dicom.layout import plan_instance
from meshnode.dicom.structure import find_native_pixel_value
from meshnode.web.auth import bearer_or_basic
from meshnode.web.multipart import (
    Event,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    check_boundary,
    content_type_params,
)
from protocol import cbor, directory_messages, exchange_messages
from protocol.address_record import AddressRecord
from protocol.certificate import Certificate
from protocol.cid import CID
from protocol.document import Document, open_document
from protocol.errors import (
    DocumentError,
    FrameError,
    LimitError,
    RemoteProtocolError,
    SchemaError,
    SignatureError,
    UnknownIssuerError,
)
from protocol.framing import FrameDecoder
from protocol.keys import SigningKey
from protocol.manifest import Manifest
from protocol.recall import Recall
from protocol.receipt import Receipt
from protocol.roster import Roster
from protocol.signing import SignedEnvelope

from tests.protocol import factories


class Finding(Exception):
    """A decoder accepted input but its result is inconsistent (a bug even without a crash)."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    #: the documented errors: raising one of these is a correct refusal
    errors: tuple[type[BaseException], ...]
    #: the longest input the fuzzer generates for this target
    max_len: int = 4096


def check(target: Target, data: bytes) -> object:
    """Run the target: its value, or the documented error it raised (returned, not raised)."""
    try:
        return target.run(data)
    except target.errors as exc:
        return exc


# -- CBOR and framing ----------------------------------------------------------------


def _cbor(data: bytes) -> object:
    value = cbor.decode(data)
    if cbor.encode(value) != data:
        raise Finding("decoded CBOR does not re-encode to its bytes")
    return value


def _framing(data: bytes) -> object:
    # The first byte picks where the stream is cut into reads: the frames must not depend on it.
    if not data:
        return []
    step = data[0] % 7 + 1
    stream = data[1:]
    whole = FrameDecoder(64)
    frames_whole: list[bytes] = []
    error_whole: BaseException | None = None
    try:
        frames_whole = whole.feed(stream)
        whole.end_of_stream()
    except (FrameError, LimitError) as exc:
        error_whole = exc
    pieces = FrameDecoder(64)
    frames_pieces: list[bytes] = []
    try:
        for start in range(0, len(stream), step):
            frames_pieces += pieces.feed(stream[start:start + step])
        pieces.end_of_stream()
    except (FrameError, LimitError) as exc:
        # (frames completed before the error are not compared: feed() raises instead of returning
        # them, and a stream that broke its framing is discarded whole)
        if error_whole is None or type(exc) is not type(error_whole):
            raise Finding(f"chunked read raised {exc!r}, the whole read {error_whole!r}") from exc
        raise
    if error_whole is not None:
        raise Finding(f"whole read raised {error_whole!r}, the chunked read did not")
    if frames_pieces != frames_whole:
        raise Finding("chunked and whole reads produced different frames")
    if sum(4 + len(f) for f in frames_whole) != len(stream):
        raise Finding("frames do not account for every byte of the stream")
    return frames_whole


# -- exchange and directory messages -------------------------------------------------


def _exchange_request(data: bytes, decode: Callable[[bytes], object]) -> object:
    value = decode(data)
    if exchange_messages.encode_request(value) != data:  # type: ignore[arg-type]
        raise Finding(f"{type(value).__name__} does not re-encode to the bytes it was decoded from")
    return value


def _exchange_response(data: bytes, decode: Callable[[bytes], object]) -> object:
    value = decode(data)
    if exchange_messages.encode_response(value) != data:  # type: ignore[arg-type]
        raise Finding(f"{type(value).__name__} does not re-encode to the bytes it was decoded from")
    return value


_REQUEST_DECODERS: dict[str, Callable[[bytes], object]] = {
    "decode_hello": exchange_messages.decode_hello,
    "decode_announce": exchange_messages.decode_announce,
    "decode_have_request": exchange_messages.decode_have_request,
    "decode_block_request": exchange_messages.decode_block_request,
    "decode_receipt_delivery": exchange_messages.decode_receipt_delivery,
    "decode_recall_delivery": exchange_messages.decode_recall_delivery,
}
_RESPONSE_DECODERS: dict[str, Callable[[bytes], object]] = {
    "decode_hello_reply": exchange_messages.decode_hello_reply,
    "decode_ack_reply": exchange_messages.decode_ack_reply,
    "decode_have_reply": exchange_messages.decode_have_reply,
    "decode_block_frame": exchange_messages.decode_block_frame,
}


def _request_target(decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
    return lambda data: _exchange_request(data, decode)


def _response_target(decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
    return lambda data: _exchange_response(data, decode)


def _have_reply(data: bytes) -> object:
    """A have reply, then its bitmap read against manifests of every block count it could fit."""
    reply = _exchange_response(data, exchange_messages.decode_have_reply)
    if isinstance(reply, exchange_messages.HaveReply):
        size = len(reply.bitmap)
        for count in {max(0, size * 8 - 7), max(0, size * 8 - 1), size * 8, size * 8 + 1}:
            try:
                flags = exchange_messages.unpack_bitmap(reply.bitmap, count)
            except SchemaError:
                continue
            if len(flags) != count or exchange_messages.pack_bitmap(flags) != reply.bitmap:
                raise Finding(f"bitmap of {size} bytes read as {len(flags)} flags does not round-trip")
    return reply


#: The request a block response sequence answers: three CIDs.
_BLOCK_REQUEST = exchange_messages.BlockRequest(factories.block_cid(0), tuple(factories.block_cid(i) for i in (1, 2, 3)))


def _block_response_sequence(data: bytes) -> object:
    """A blocks stream as a peer sends it: frames (4-byte length prefixes), each a block response,
    checked in order against a request for three CIDs."""
    frames = FrameDecoder(4096)
    reader = exchange_messages.BlockResponseReader(_BLOCK_REQUEST)
    accepted: list[object] = []
    for frame in frames.feed(data):
        accepted.append(reader.feed(frame))
    frames.end_of_stream()
    reader.end_of_stream()
    if reader.state is exchange_messages.ReaderState.DONE and len(accepted) != len(_BLOCK_REQUEST.cids):
        raise Finding("a response ended with a frame count other than the CIDs requested")
    return accepted


def _directory_request(data: bytes) -> object:
    value = directory_messages.decode_request(data)
    if directory_messages.encode_request(value) != data:
        raise Finding(f"{type(value).__name__} does not re-encode to the bytes it was decoded from")
    return value


def _directory_response(data: bytes) -> object:
    value = directory_messages.decode_response(data)
    if directory_messages.encode_response(value) != data:
        raise Finding(f"{type(value).__name__} does not re-encode to the bytes it was decoded from")
    return value


# -- signed documents ----------------------------------------------------------------

#: Keys the seeds are signed with, by peer ID: a body naming one of them is signed by it, so the
#: fuzzer reaches the body decoder with an envelope that verifies (any attacker can sign any body
#: with its own key; whether that key is trusted is decided after decoding).
_KEYS: dict[str, SigningKey] = {
    k.peer_id: k
    for k in (factories.AUTHORITY, factories.AUTHORITY_NEW, factories.ROGUE, factories.NODE_A,
              factories.NODE_A2, factories.NODE_B, factories.NODE_C)
}
_SIGNER_FIELD: dict[type[Document], str] = {
    Manifest: "sender_peer",
    Receipt: "recipient_peer",
    AddressRecord: "peer",
    Certificate: "issuer",
}


def _document_target(cls: type[Document]) -> Callable[[bytes], object]:
    """Signed bytes (a map with "sig") are opened as they are; any other map is taken as a body,
    signed by the key it names, and opened."""

    def run(data: bytes) -> object:
        try:
            decoded = cbor.decode(data, max_items=cls.MAX_ITEMS)
        except RemoteProtocolError:
            decoded = None
        if isinstance(decoded, dict) and "sig" not in decoded:
            named = decoded.get(_SIGNER_FIELD.get(cls, ""))
            key = _KEYS.get(named, factories.AUTHORITY) if isinstance(named, str) else factories.AUTHORITY
            data = SignedEnvelope.sign(cls.LABEL, decoded, key).encode()
        signed = open_document(data, cls)
        if signed.encode() != data:
            raise Finding("an opened document does not re-encode to its bytes")
        if cbor.encode(signed.document.to_body()) != cbor.encode(signed.envelope.body):
            raise Finding(f"{cls.__name__} body does not re-encode to the body it was decoded from")
        return signed

    return run


_DOCUMENT_ERRORS = (RemoteProtocolError, SignatureError, DocumentError, UnknownIssuerError)
_DOCUMENTS: dict[str, type[Document]] = {
    "certificate": Certificate,
    "roster": Roster,
    "address_record": AddressRecord,
    "manifest": Manifest,
    "receipt": Receipt,
    "recall": Recall,
}


# -- CIDs ------------------------------------------------------------------------------


def _cid(data: bytes) -> object:
    # as text (every code point below 256), and the same bytes as a binary CID
    text = data.decode("latin-1")
    results: list[CID] = []
    for parse in (partial(CID.parse, text), partial(CID.from_bytes, data)):
        try:
            cid = parse()
        except SchemaError:
            continue
        if CID.parse(str(cid)) != cid or CID.from_bytes(cid.to_bytes()) != cid:
            raise Finding("a parsed CID does not round-trip")
        results.append(cid)
    if results and len(data) not in (59, 36):
        raise Finding(f"a CID parsed from {len(data)} bytes")
    return results


# -- STOW-RS multipart bodies --------------------------------------------------------

_BOUNDARY = b"BOUNDARY"


def _parse_multipart(chunks: list[bytes]) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(_BOUNDARY, max_part_bytes=1024, max_parts=8, max_header_bytes=256)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    parts: list[tuple[dict[str, str], bytes]] = []
    current: tuple[dict[str, str], bytearray] | None = None
    for event in events:
        if isinstance(event, PartStarted):
            if current is not None:
                raise Finding("a part started inside another")
            current = (event.headers, bytearray())
        elif isinstance(event, PartData):
            if current is None or not event.data:
                raise Finding("part data outside a part, or empty")
            current[1].extend(event.data)
        elif isinstance(event, PartEnded):
            if current is None or event.size != len(current[1]):
                raise Finding("a part ended with a size other than the data it carried")
            parts.append((current[0], bytes(current[1])))
            current = None
    if current is not None:
        raise Finding("the body completed inside a part")
    if len(parts) > 8 or any(len(body) > 1024 for _, body in parts):
        raise Finding("a limit was not enforced")
    return parts


def _multipart(data: bytes) -> object:
    # The first byte picks how the body is cut into reads: the parts must not depend on it.
    if not data:
        return _parse_multipart([])
    step = data[0] % 13 + 1
    body = data[1:]
    try:
        whole = _parse_multipart([body])
    except (MultipartError, LimitError) as exc:
        whole_error: BaseException | None = exc
    else:
        whole_error = None
    try:
        pieces = _parse_multipart([body[i:i + step] for i in range(0, len(body), step)])
    except (MultipartError, LimitError) as exc:
        if whole_error is None:
            raise Finding(f"chunked parse raised {exc!r}, the whole parse succeeded") from exc
        raise
    if whole_error is not None:
        raise Finding(f"whole parse raised {whole_error!r}, the chunked parse succeeded")
    if pieces != whole:
        raise Finding("chunked and whole parses produced different parts")
    return whole


# -- DICOM header scan at ingest -----------------------------------------------------


def _dicom(data: bytes) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about what it tolerates
        found = find_native_pixel_value(data)
        if found is not None:
            offset, length = found
            if not 0 <= offset <= len(data) or length < 0:
                raise Finding("native pixel value found outside the data")
        plan = plan_instance(data)
    if not 0 <= plan.header_end <= plan.pixel_end <= plan.file_size == len(data):
        raise Finding("instance regions out of order")
    return plan


# -- HTTP authorisation and content-type headers -------------------------------------


def _http_headers(data: bytes) -> object:
    # Header values reach the app as latin-1 text (ASGI); the first line is Authorization,
    # the rest Content-Type.
    text = data.decode("latin-1")
    authorization, _, content_type = text.partition("\n")
    token = bearer_or_basic(authorization)
    if token is not None and not token:
        raise Finding("an empty token was extracted")
    token_matches("expected-token", authorization[7:].strip())
    kind, params = content_type_params(content_type)
    boundary = params.get("boundary", "")
    try:
        check_boundary(boundary)
    except MultipartError:
        pass
    return token, kind, params


TARGETS: dict[str, Target] = {
    "cbor_decode": Target("cbor_decode", _cbor, (RemoteProtocolError,)),
    "frame_decoder": Target("frame_decoder", _framing, (FrameError, LimitError)),
    **{
        f"exchange_{name}": Target(f"exchange_{name}", _request_target(decode), (RemoteProtocolError,))
        for name, decode in _REQUEST_DECODERS.items()
    },
    **{
        f"exchange_{name}": Target(f"exchange_{name}", _response_target(decode), (RemoteProtocolError,))
        for name, decode in _RESPONSE_DECODERS.items()
    },
    **{
        f"document_{name}": Target(f"document_{name}", _document_target(cls), _DOCUMENT_ERRORS, max_len=8192)
        for name, cls in _DOCUMENTS.items()
    },
    "exchange_have_bitmap": Target("exchange_have_bitmap", _have_reply, (RemoteProtocolError,)),
    "exchange_block_response_sequence": Target("exchange_block_response_sequence", _block_response_sequence,
                                               (RemoteProtocolError,)),
    "directory_request": Target("directory_request", _directory_request, (RemoteProtocolError,)),
    "directory_response": Target("directory_response", _directory_response, (RemoteProtocolError,)),
    "cid": Target("cid", _cid, ()),
    "stow_multipart": Target("stow_multipart", _multipart, (MultipartError, LimitError)),
    "dicom_ingest_scan": Target("dicom_ingest_scan", _dicom, (DicomError,), max_len=16384),
    "http_auth_headers": Target("http_auth_headers", _http_headers, ()),
}
