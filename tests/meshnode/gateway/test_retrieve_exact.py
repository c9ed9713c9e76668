"""Retrieval is byte-exact: real dcmtk getscu / movescu against the gateway, with pydicom's compressed and
implicit-VR test files (issue 15, part 4).

"Byte-exact" means: the data set getscu / movescu write (after their own File Meta group, which each writer
rewrites) is byte for byte the data set the node stored (what storescu sent it: the instance's blocks). A
requester that proposed the stored transfer syntax in any context gets exactly that; one that did not gets
a faithfully decompressed copy (pydicom's decoders, the Photometric Interpretation of the decoded pixels,
still marked lossy) logged as a conversion, or, when that cannot be done, a failed sub-operation.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import trio
from pydicom.data import get_testdata_file
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from meshnode.gateway.config import DicomPeer
from meshnode.storage.records import hash_uid
from tests.e2e.dimse_tools import ToolResult, dataset_bytes, run_tool
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import AE_TITLE, CALLER, Gateway, config
from tests.meshnode.gateway.test_dimse_scp import tool


async def tool_in(cwd: Path, *args: str) -> ToolResult:
    return await trio.to_thread.run_sync(lambda: run_tool(*args, cwd=cwd))

pytestmark = pytest.mark.e2e  # real dcmtk processes

US_JPEG = "examples_ybr_color.dcm"  # US multi-frame, JPEG Baseline, YBR_FULL_422 (224,902 B)
NM_J2K = "JPEG2000.dcm"  # NM (secondary capture), JPEG 2000, MONOCHROME2 16-bit
RT_PLAN = "rtplan.dcm"  # RT Plan, Implicit VR Little Endian
JPEG_LS = "JPEGLSNearLossless_08.dcm"  # JPEG-LS near-lossless (decoded by pyjpegls / python-gdcm)
JPEG_LS_LOSSLESS = "MR_small_jpeg_ls_lossless.dcm"
JPEG_LOSSLESS_SV1 = "SC_rgb_jpeg_gdcm.dcm"  # JPEG Lossless, first-order prediction (.70)
JPEG_12BIT = "JPGExtended.dcm"  # JPEG Extended, 12 bits: only GPL libjpeg decodes it


def _file(name: str | Path) -> Path:
    return name if isinstance(name, Path) else Path(str(get_testdata_file(name)))


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


async def _store(gw: Gateway, names: list[str | Path]) -> dict[str, bytes]:
    """Store each file in its own transfer syntax: dcmsend -dn (never decompressed) for the compressed ones,
    storescu -xi (implicit VR only) for the RT plan (dcmsend would propose explicit VR first for it).
    {SOP UID: the stored data set}."""
    files = [_file(n) for n in names]
    for f in files:
        ts = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
        sender = ("storescu", "-xi") if ts == ImplicitVRLittleEndian else ("dcmsend", "-dn")
        sent = await tool(*sender, "-aet", CALLER, "-aec", AE_TITLE, "127.0.0.1", str(gw.port), str(f))
        assert sent.code == 0, sent.output
    stored: dict[str, bytes] = {}
    for study in await gw.db.run(lambda s: s.studies()):
        uid = study.attributes.study_uid
        for rec in await gw.db.run(lambda s, u=uid: s.instances(u)):  # type: ignore[misc]
            stored[rec.sop_instance_uid] = dataset_bytes(b"".join(gw.storage.blocks.get(c) for c in rec.blocks))
            original = next(f for f in files if _sop(f) == rec.sop_instance_uid)
            assert rec.transfer_syntax == pydicom.dcmread(original, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert set(stored) == {_sop(f) for f in files}
    return stored


async def _getscu(gw: Gateway, out: Path, sop: str, *options: str) -> tuple[str, dict[str, Path]]:
    """getscu (+B: files as received) at IMAGE level for one instance; (output, {SOP UID: file})."""
    out.mkdir(parents=True, exist_ok=True)
    got = await tool("getscu", "-S", "+B", *options, "-aet", CALLER, "-aec", AE_TITLE, "-od", str(out),
                     "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={_study(sop)}",
                     "-k", f"SeriesInstanceUID={_series(sop)}", "-k", f"SOPInstanceUID={sop}",
                     "127.0.0.1", str(gw.port))
    return got.output, {_sop(p): p for p in out.iterdir() if p.is_file()}


_HIERARCHY: dict[str, tuple[str, str]] = {}


def _remember(names: list[str | Path]) -> None:
    for n in names:
        ds: Any = pydicom.dcmread(_file(n), stop_before_pixels=True)
        _HIERARCHY[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))


def _study(sop: str) -> str:
    return _HIERARCHY[sop][0]


def _series(sop: str) -> str:
    return _HIERARCHY[sop][1]


def _decoded(path: Path) -> Any:
    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds


async def test_get_returns_the_stored_bytes_when_any_context_accepts_the_stored_syntax(
        gateways: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """getscu proposing JPEG Baseline and the uncompressed syntaxes (+xy): the JPEG US and the implicit RT
    plan come back as stored; the JPEG 2000 NM (not proposed) comes back decompressed, and says so in the log.
    Before the fix the US came back decompressed and the RT plan re-encoded as explicit VR."""
    names: list[str | Path] = [US_JPEG, NM_J2K, RT_PLAN]
    _remember(names)
    gw = await gateways()
    stored = await _store(gw, names)
    us, nm, rt = (_sop(_file(n)) for n in names)
    caplog.set_level(logging.INFO)
    for sop in (us, rt):
        output, got = await _getscu(gw, tmp_path / f"get-{sop}", sop, "+xy")
        assert sop in got, output
        assert dataset_bytes(got[sop]) == stored[sop], f"{sop} was not returned as stored"
        assert got[sop].stat().st_size < len(stored[sop]) + 1024  # nothing decompressed
        ts = pydicom.dcmread(got[sop], stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert ts == pydicom.dcmread(_file(names[(us, nm, rt).index(sop)]),
                                     stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert "sent converted" not in caplog.text
    output, got = await _getscu(gw, tmp_path / "get-nm", nm, "+xy")
    assert nm in got, output
    copy = pydicom.dcmread(got[nm])
    original = pydicom.dcmread(_file(NM_J2K))
    assert not copy.file_meta.TransferSyntaxUID.is_compressed
    assert copy.PhotometricInterpretation == "MONOCHROME2"
    assert np.array_equal(copy.pixel_array, original.pixel_array)
    assert copy.LossyImageCompression == "01"  # as the stored instance said
    (line,) = [r for r in caplog.records if "sent converted" in r.getMessage()]
    assert line.levelno == logging.WARNING and hash_uid(nm) in line.getMessage() and nm not in caplog.text


async def test_get_offering_only_uncompressed_gets_a_faithful_decompressed_copy(
        gateways: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """getscu's default proposal (uncompressed only): the JPEG US comes back decompressed by pydicom, its
    Photometric Interpretation RGB (the decoded pixels' colour space: pydicom converts YBR_FULL_422),
    still marked lossy; the implicit RT plan (implicit VR is proposed) comes back as stored."""
    names: list[str | Path] = [US_JPEG, RT_PLAN]
    _remember(names)
    gw = await gateways()
    stored = await _store(gw, names)
    us, rt = (_sop(_file(n)) for n in names)
    caplog.set_level(logging.INFO)
    output, got = await _getscu(gw, tmp_path / "get-us", us)
    assert us in got, output
    copy = pydicom.dcmread(got[us])
    original = pydicom.dcmread(_file(US_JPEG))
    assert not copy.file_meta.TransferSyntaxUID.is_compressed
    assert copy.PhotometricInterpretation == "RGB"
    assert np.array_equal(copy.pixel_array, original.pixel_array)  # pydicom's RGB decoding of the stored JPEG
    assert copy.LossyImageCompression == "01" and copy.SOPInstanceUID == original.SOPInstanceUID
    logging.getLogger(__name__).info("US: stored %d B, decompressed copy %d B", len(stored[us]),
                                     got[us].stat().st_size)
    assert any("sent converted" in r.getMessage() and hash_uid(us) in r.getMessage() for r in caplog.records)
    output, got = await _getscu(gw, tmp_path / "get-rt", rt)
    assert dataset_bytes(got[rt]) == stored[rt], output


async def test_an_instance_that_cannot_be_decompressed_is_a_failed_sub_operation(
        gateways: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """12-bit JPEG Extended (no decoder with a licence the project takes: only GPL libjpeg decodes it) to a
    getscu that accepts only uncompressed: refused, never sent altered; offered JPEG Extended (+xx), the same
    instance comes back as stored."""
    with pytest.raises(RuntimeError, match="[Uu]nable to decode"):  # no 12-bit JPEG decoder is installed
        _ = pydicom.dcmread(_file(JPEG_12BIT)).pixel_array
    ds = pydicom.dcmread(_file(JPEG_12BIT))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "jpeg12.dcm"
    ds.save_as(path)
    _remember([path])
    gw = await gateways()
    stored = await _store(gw, [path])
    (sop,) = stored
    output, got = await _getscu(gw, tmp_path / "refused", sop)
    assert not got, output
    assert "Failed" in output or "0xa702" in output.lower() or "b000" in output.lower(), output
    assert any("cannot be decompressed" in r.getMessage() and hash_uid(sop) in r.getMessage()
               for r in caplog.records)
    output, got = await _getscu(gw, tmp_path / "exact", sop, "+xx")
    assert dataset_bytes(got[sop]) == stored[sop], output


@pytest.mark.parametrize("name", [JPEG_LOSSLESS_SV1, JPEG_LS, JPEG_LS_LOSSLESS, US_JPEG])
async def test_jpeg_lossless_and_jpeg_ls_are_decompressed_for_an_uncompressed_only_getscu(
        gateways: GatewayFactory, tmp_path: Path, name: str) -> None:
    """JPEG Lossless SV1 (.70), JPEG-LS near-lossless and lossless, JPEG baseline: getscu without a
    compressed option (-x= / +x=) gets pydicom's decoding of the stored pixels (decoders: python-gdcm,
    pyjpegls). Before the review fix .70 and JPEG-LS failed: no decoder was installed."""
    ds = pydicom.dcmread(_file(name))
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "stored.dcm"
    ds.save_as(path)
    _remember([path])
    gw = await gateways()
    stored = await _store(gw, [path])
    (sop,) = stored
    output, got = await _getscu(gw, tmp_path / "got", sop, "+x=")
    assert sop in got, output
    copy = pydicom.dcmread(got[sop])
    assert not copy.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(copy.pixel_array, pydicom.dcmread(path).pixel_array)
    lossless = name in (JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS)
    assert (copy.get("LossyImageCompression") == "01") != lossless, copy.get("LossyImageCompression")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_move_returns_the_stored_bytes_and_converts_only_what_the_destination_refuses(
        gateways: GatewayFactory, tmp_path: Path) -> None:
    """movescu (its own storage SCP as the destination): offered JPEG Baseline (+xy), every instance as
    stored; offered uncompressed only, the JPEG US decompressed (the node proposes an uncompressed fallback
    context), the implicit RT plan still as stored."""
    names: list[str | Path] = [US_JPEG, RT_PLAN]
    _remember(names)
    port = _free_port()
    gw = await gateways(config(move_destinations=[DicomPeer(CALLER, "127.0.0.1", port)]))
    stored = await _store(gw, names)
    us, rt = (_sop(_file(n)) for n in names)
    for options, folder in ((("+xy",), "jpeg"), ((), "plain")):
        out = tmp_path / folder
        out.mkdir()
        moved = await tool_in(out, "movescu", "-S", "+B", *options, "-aet", CALLER, "-aec", AE_TITLE, "-aem", CALLER,
                           "--port", str(port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                           "-k", f"StudyInstanceUID={_study(us)}", "127.0.0.1", str(gw.port))
        moved2 = await tool_in(out, "movescu", "-S", "+B", *options, "-aet", CALLER, "-aec", AE_TITLE, "-aem", CALLER,
                            "--port", str(port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={_study(rt)}", "127.0.0.1", str(gw.port))
        got = {_sop(p): p for p in out.iterdir() if p.is_file()}
        assert set(got) == {us, rt}, moved.output + moved2.output
        assert dataset_bytes(got[rt]) == stored[rt]
        if options:
            assert dataset_bytes(got[us]) == stored[us]
        else:
            copy = pydicom.dcmread(got[us])
            assert not copy.file_meta.TransferSyntaxUID.is_compressed and copy.PhotometricInterpretation == "RGB"


async def test_move_to_a_configured_destination_that_is_down_fails_every_sub_operation(
        gateways: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the destination's port: 0xA702 (Refused: out of resources, unable to perform
    sub-operations) with every sub-operation failed, one log line with the reason; not 0xA801 (unknown
    destination), which stays for AE titles that are not configured. Before the fix: 0xA801."""
    names: list[str | Path] = [RT_PLAN]
    _remember(names)
    gw = await gateways(config(move_destinations=[DicomPeer("PACS", "127.0.0.1", _free_port())]))
    await _store(gw, names)
    moved = await tool("movescu", "-d", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-aem", "PACS",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={_study(_sop(_file(RT_PLAN)))}",
                       "127.0.0.1", str(gw.port))
    text = moved.output.lower()
    assert "a702" in text or "unabletoperformsuboperations" in text.replace(" ", ""), moved.output
    assert "a801" not in text and "destinationunknown" not in text, moved.output
    assert "Failed Suboperations          : 1" in moved.output and "Completed Suboperations       : 0" in moved.output
    assert "FailedSOPInstanceUIDList" in moved.output, moved.output
    lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and "PACS@127.0.0.1" in lines[0].getMessage()
    assert "Connection refused" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    unknown = await tool("movescu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-aem", "NOBODY",
                         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={_study(_sop(_file(RT_PLAN)))}",
                         "127.0.0.1", str(gw.port))
    assert "a801" in unknown.output.lower() or "MoveDestinationUnknown" in unknown.output, unknown.output


def _uncompressed_copy(tmp_path: Path, name: str) -> Path:
    """The same image as `name`, decompressed, as an instance of another study (same SOP class)."""
    other = pydicom.dcmread(_file(name))
    other.decompress(generate_instance_uid=False)
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
    path = tmp_path / "other.dcm"
    other.save_as(path, enforce_file_format=True)
    return path


def _pynetdicom_get(port: int, study: str, sop_class: str, contexts: list[list[str]]) -> dict[str, tuple[str, bytes]]:
    """A C-GET SCU (pynetdicom) proposing `contexts` for `sop_class`: {SOP UID: (syntax, data set bytes)}."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event: Any) -> int:
        data = event.request.DataSet.getvalue()
        received[str(event.request.AffectedSOPInstanceUID)] = (str(event.context.transfer_syntax), data)
        return 0x0000

    ae = AE(ae_title=CALLER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE, ext_neg=[build_role(sop_class, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    try:
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                    if status]
    finally:
        assoc.release()
    assert statuses and statuses[-1] == 0x0000, [hex(s) for s in statuses]
    return received


async def test_an_scu_proposing_a_context_per_syntax_gets_every_instance_as_stored(
        gateways: GatewayFactory, tmp_path: Path) -> None:
    """The node holds US in JPEG Baseline (one study) and explicit VR (another): an SCU proposing a context
    for each (pynetdicom here; dcmtk 3.6.7's getscu cannot) gets both studies' instances byte for byte.
    Also when its contexts each list several syntaxes (JPEG + uncompressed, uncompressed): before the review
    fix both were narrowed to uncompressed and the JPEG one came back decompressed."""
    other = _uncompressed_copy(tmp_path, US_JPEG)
    names: list[str | Path] = [US_JPEG, other]
    _remember(names)
    gw = await gateways()
    stored = await _store(gw, names)
    us_class = str(pydicom.dcmread(_file(US_JPEG), stop_before_pixels=True).SOPClassUID)
    for contexts in ([[str(JPEGBaseline8Bit)], [str(ExplicitVRLittleEndian)]],
                     [[str(JPEGBaseline8Bit), str(ExplicitVRLittleEndian)], [str(ExplicitVRLittleEndian)]]):
        for sop in stored:
            got = await trio.to_thread.run_sync(_pynetdicom_get, gw.port, _study(sop), us_class, contexts)
            assert set(got) == {sop}
            syntax, data = got[sop]
            assert data == stored[sop], f"{sop} not as stored ({syntax}, {len(data)} B)"


async def test_another_study_of_the_same_class_does_not_break_exact_get(
        gateways: GatewayFactory, tmp_path: Path) -> None:
    """The reviewer's case, with dcmtk getscu +xy (one context per SOP class: JPEG, explicit, implicit):
    the node also holds an uncompressed US in another study. Promise: nothing fails; the uncompressed one
    comes back exact, the JPEG one decompressed (accepting JPEG would make the other study's instance
    fail: the node never compresses). Once that other study is gone, the JPEG one comes back exact again."""
    other = _uncompressed_copy(tmp_path, US_JPEG)
    names: list[str | Path] = [US_JPEG, other]
    _remember(names)
    gw = await gateways()
    stored = await _store(gw, names)
    us, plain = _sop(_file(US_JPEG)), _sop(other)
    output, got = await _getscu(gw, tmp_path / "plain", plain, "+xy")
    assert dataset_bytes(got[plain]) == stored[plain], output
    output, got = await _getscu(gw, tmp_path / "us", us, "+xy")
    copy = pydicom.dcmread(got[us])
    assert not copy.file_meta.TransferSyntaxUID.is_compressed and copy.LossyImageCompression == "01", output
    forgotten = await gw.db.run(lambda s: s.forget_study(_study(plain), [], 0))
    assert forgotten == 1
    output, got = await _getscu(gw, tmp_path / "us-alone", us, "+xy")
    assert dataset_bytes(got[us]) == stored[us], output
