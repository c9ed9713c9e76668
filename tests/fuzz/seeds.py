"""Seed inputs for the fuzz targets, built from valid encodings (`scripts/fuzz.py --write-seeds`).

Seeds are small and valid: the published test vectors (docs/protocol/vectors.json), the
documents of tests/protocol/factories.py, one of each exchange message, and tiny synthetic
DICOM files. The fuzzer mutates from there.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

from protocol import cbor, directory_messages, exchange_messages
from protocol.exchange_messages import (
    Ack,
    Announce,
    BlockAbsent,
    BlockData,
    BlockRequest,
    HaveReply,
    HaveRequest,
    Hello,
    RecallDelivery,
    ReceiptDelivery,
    Refused,
)
from protocol.framing import encode_frame

from tests.protocol import factories as f

ROOT = Path(__file__).resolve().parent.parent.parent
VECTORS = ROOT / "docs" / "protocol" / "vectors.json"


def _documents() -> dict[str, list[bytes]]:
    """Per document target: signed bytes and bare bodies (the target signs a bare body itself)."""
    by_type: dict[str, list[bytes]] = {}
    names = {"certificate": "certificate", "roster": "roster", "address-record": "address_record",
             "manifest": "manifest", "receipt": "receipt", "recall": "recall"}
    for doc, key in f.examples():
        signed = doc.sign(key)
        name = names[doc.LABEL.split("/")[1]]
        by_type.setdefault(name, []).extend([signed.encode(), cbor.encode(doc.to_body())])
    vectors = json.loads(VECTORS.read_text())
    for vector in vectors["documents"]:
        name = names[vector["type"].split("/")[1]]
        by_type[name].append(bytes.fromhex(vector["hex"]))
    return by_type


def _exchange() -> dict[str, list[bytes]]:
    cert = f.sign_certificate().encode()
    manifest = f.make_manifest().sign(f.NODE_A)
    receipt = f.make_receipt().sign(f.NODE_B).encode()
    recall = f.make_recall().sign(f.NODE_A).encode()
    refused = exchange_messages.encode_response(Refused(600, "not authorised"))
    cid, cid2 = f.block_cid(1), f.block_cid(2)
    req = exchange_messages.encode_request
    resp = exchange_messages.encode_response
    return {
        "decode_hello": [req(Hello(cert))],
        "decode_announce": [req(Announce(manifest.encode(), cert))],
        "decode_have_request": [req(HaveRequest(manifest.cid))],
        "decode_block_request": [req(BlockRequest(manifest.cid, (cid,))),
                                 req(BlockRequest(manifest.cid, (cid, cid2)))],
        "decode_receipt_delivery": [req(ReceiptDelivery(receipt, cert))],
        "decode_recall_delivery": [req(RecallDelivery(recall, cert))],
        "decode_hello_reply": [resp(Hello(cert)), refused],
        "decode_ack_reply": [resp(Ack()), refused],
        "decode_have_reply": [resp(HaveReply(b"\xa0")), refused],
        "decode_block_frame": [resp(BlockData(cid, b"block 1")), resp(BlockAbsent(cid)), refused],
    }


def _block_sequences() -> list[bytes]:
    """Whole blocks responses to tests.fuzz.targets' request for block_cid(1..3), as framed streams."""
    resp = exchange_messages.encode_response
    cids = [f.block_cid(i) for i in (1, 2, 3)]
    data = [resp(BlockData(cids[0], b"one")), resp(BlockAbsent(cids[1])), resp(BlockData(cids[2], b"three"))]
    return [b"".join(encode_frame(d, 4096) for d in data),
            encode_frame(resp(Refused(600, "not authorised")), 4096)]


def _directory() -> tuple[list[bytes], list[bytes]]:
    vectors = json.loads(VECTORS.read_text())["directory"]
    requests = [bytes.fromhex(v["hex"]) for v in vectors["requests"]]
    responses = [bytes.fromhex(v["hex"]) for v in vectors["responses"]]
    responses.append(directory_messages.encode_response(directory_messages.Refused(610, "not found")))
    return requests, responses


def _multipart() -> list[bytes]:
    part = (b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM" * 8)
    one = part + b"\r\n--BOUNDARY--\r\n"
    two = b"preamble\r\n" + part + b"\r\n" + part[2:].replace(b"BOUNDARY", b"--BOUNDARY", 1) + b"\r\n--BOUNDARY--"
    return [b"\x00" + one, b"\x04" + two, b"\x0c" + b"--BOUNDARY \t\r\n\r\nx\r\n--BOUNDARY--epilogue"]


def _dicom() -> list[bytes]:
    from pydicom import dcmwrite
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

    from meshnode.dicom.synthetic import generate_compressed, generate_ct_study, generate_multiframe
    from tests.meshnode.dicom.helpers import minimal_dataset, nested_sequences, write_minimal

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = [
            generate_ct_study(root / "ct", slices=1, rows=4, columns=4, seed=1)[0],
            generate_compressed(root / "rle", images=1, rows=4, columns=4, seed=2)[0],
            generate_multiframe(root / "mf", frames=2, rows=2, columns=2, seed=3)[0],
            write_minimal(root / "nested.dcm", tail=nested_sequences(3, defined_length=False)),
            write_minimal(root / "nested-defined.dcm", tail=nested_sequences(3, defined_length=True)),
        ]
        seeds = [p.read_bytes() for p in paths]
    for syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds = minimal_dataset()
        ds.file_meta.TransferSyntaxUID = syntax
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        seeds.append(out.getvalue())
    # character sets the attribute reader decodes (UTF-8, ISO 2022 with escape sequences)
    for charset, name in (("ISO_IR 192", "Jöhn^Ÿvès"), (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎")):
        ds = minimal_dataset(SpecificCharacterSet=charset, PatientName=name, StudyDescription="Ünïcode")
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        seeds.append(out.getvalue())
    # a bare data set: no preamble, no meta header
    bare = minimal_dataset()
    del bare.file_meta
    out = io.BytesIO()
    dcmwrite(out, bare, implicit_vr=False, little_endian=True)
    seeds.append(out.getvalue())
    return seeds


def seeds() -> dict[str, list[bytes]]:
    """Every target's seeds."""
    documents = _documents()
    exchange = _exchange()
    dir_requests, dir_responses = _directory()
    vectors = json.loads(VECTORS.read_text())
    all_cbor = [s for group in (*documents.values(), *exchange.values(), dir_requests, dir_responses) for s in group]
    out: dict[str, list[bytes]] = {
        "cbor_decode": [s for s in all_cbor if len(s) <= 1024] + [cbor.encode([1, -1, b"", "", None, True, {}])],
        "frame_decoder": [b"\x00" + encode_frame(b"hello", 64) + encode_frame(b"", 64),
                          b"\x03" + encode_frame(b"x" * 64, 64)],
        **{f"exchange_{name}": values for name, values in exchange.items()},
        **{f"document_{name}": values for name, values in documents.items()},
        "exchange_have_bitmap": [exchange_messages.encode_response(HaveReply(b"\xa0")),
                                 exchange_messages.encode_response(HaveReply(b"\xff\x80"))],
        "exchange_block_response_sequence": _block_sequences(),
        "directory_request": dir_requests,
        "directory_response": dir_responses,
        "cid": [c["cid"].encode() for c in vectors["cids"]] + [bytes.fromhex(c["binary_hex"]) for c in vectors["cids"]],
        "stow_multipart": _multipart(),
        "dicom_ingest_scan": _dicom(),
        "http_auth_headers": [
            b'Bearer abc\nmultipart/related; type="application/dicom"; boundary=BOUNDARY',
            b"Basic dXNlcjp0b2tlbg==\nmultipart/related; boundary=\"a b\"",
        ],
    }
    return out


def write_seeds(corpus: Path) -> dict[str, int]:
    """Replace corpus/<target>/ with the current seeds, named by their SHA-1 (as libFuzzer names inputs)."""
    counts: dict[str, int] = {}
    for name, values in seeds().items():
        folder = corpus / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for value in values:
            (folder / hashlib.sha1(value).hexdigest()).write_bytes(value)
        counts[name] = len(set(values))
    return counts
