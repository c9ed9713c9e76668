"""A retrieve is audited with what it really delivered: completed and failed sub-operations, the outcome
(DICOM EventOutcomeIndicator: 0 success, 4 some failed, 8 none delivered) and the study, for C-GET and
C-MOVE alike (review of issue 15 part 4, findings 4 and 5). Real getscu / movescu."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from meshnode.gateway.config import DicomPeer
from meshnode.storage.audit import AuditEntry, EventCode, Outcome
from meshnode.storage.records import hash_uid
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import AE_TITLE, CALLER, Gateway, config
from tests.meshnode.gateway.test_dimse_scp import tool
from tests.meshnode.gateway.test_retrieve_exact import _free_port, tool_in

pytestmark = pytest.mark.e2e  # real dcmtk processes


def broken_jpeg(template: Path, folder: Path, study: str | None = None) -> Path:
    """An instance stored as JPEG Baseline whose codestream is not a JPEG: it can never be decompressed."""
    ds = pydicom.dcmread(template)
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg codestream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    path = folder / f"broken-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


async def _send(gw: Gateway, *files: Path) -> None:
    sent = await tool("dcmsend", "-dn", "-aet", CALLER, "-aec", AE_TITLE, "127.0.0.1", str(gw.port),
                      *(str(f) for f in files))
    assert sent.code == 0, sent.output


async def _entries(gw: Gateway, action: str) -> list[AuditEntry]:
    return [e for e in await gw.db.run(lambda s: s.audit_entries()) if e.event.action == action]


async def test_a_failed_get_is_not_audited_as_transferred(gateways: GatewayFactory, ct_study: list[Path],
                                                          tmp_path: Path) -> None:
    """Before the fix: a C-GET that delivered nothing (0xA702) was audited 'success, 1 instance(s)'."""
    gw = await gateways()
    broken = broken_jpeg(ct_study[0], tmp_path)
    await _send(gw, broken)
    study = str(pydicom.dcmread(broken, stop_before_pixels=True).StudyInstanceUID)
    out = tmp_path / "got"
    out.mkdir()
    got = await tool("getscu", "-S", "+B", "-aet", CALLER, "-aec", AE_TITLE, "-od", str(out),
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(gw.port))
    assert not list(out.iterdir()), got.output
    (entry,) = await _entries(gw, "dimse-get")
    assert entry.event.code == EventCode.INSTANCES_TRANSFERRED
    assert entry.event.outcome == Outcome.SERIOUS_FAILURE, entry
    assert entry.event.study == hash_uid(study)
    assert "0 instance(s)" in entry.event.detail and "1 failed" in entry.event.detail, entry.event.detail


async def test_a_move_with_some_failed_sub_operations_is_audited_as_a_minor_failure(
        gateways: GatewayFactory, ct_study: list[Path], tmp_path: Path) -> None:
    """6 instances sent, 1 refused: audited '6 instance(s) ..., 1 failed', outcome 4 (before: '7 instance(s)',
    success). A destination that is down: the entry names the study (before: no study)."""
    port = _free_port()
    gw = await gateways(config(move_destinations=[DicomPeer(CALLER, "127.0.0.1", port),
                                                  DicomPeer("DOWN", "127.0.0.1", _free_port())]))
    study = str(pydicom.dcmread(ct_study[0], stop_before_pixels=True).StudyInstanceUID)
    await _send(gw, *ct_study, broken_jpeg(ct_study[0], tmp_path, study))
    out = tmp_path / "moved"
    out.mkdir()
    moved = await tool_in(out, "movescu", "-S", "+B", "-aet", CALLER, "-aec", AE_TITLE, "-aem", CALLER,
                          "--port", str(port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(gw.port))
    assert len(list(out.iterdir())) == len(ct_study), moved.output
    (entry,) = await _entries(gw, "dimse-move")
    assert entry.event.outcome == Outcome.MINOR_FAILURE, entry
    assert entry.event.study == hash_uid(study)
    assert f"{len(ct_study)} instance(s)" in entry.event.detail and "1 failed" in entry.event.detail, entry
    await tool("movescu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-aem", "DOWN", "-k", "QueryRetrieveLevel=STUDY",
               "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(gw.port))
    down = (await _entries(gw, "dimse-move"))[-1]
    assert down.event.outcome == Outcome.SERIOUS_FAILURE and down.event.study == hash_uid(study), down
    assert "0 instance(s)" in down.event.detail and f"{len(ct_study) + 1} failed" in down.event.detail, down


async def test_an_unreachable_destination_is_explained_whatever_pynetdicom_logs(
        gateways: GatewayFactory, ct_study: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """An operator who silences pynetdicom (its loggers above ERROR) still gets the reason in the node's
    line (before: 'no association', the reason was only scraped from pynetdicom's log records). The
    destination's TCP connect is bounded (review finding 6)."""
    gw = await gateways(config(move_destinations=[DicomPeer("DOWN", "127.0.0.1", _free_port())]))
    assert gw.server.ae is not None and gw.server.ae.connection_timeout == 10
    await _send(gw, ct_study[0])
    study = str(pydicom.dcmread(ct_study[0], stop_before_pixels=True).StudyInstanceUID)
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    pynetdicom_log.setLevel(logging.CRITICAL)
    try:
        await tool("movescu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-aem", "DOWN",
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(gw.port))
    finally:
        pynetdicom_log.setLevel(level)
    (line,) = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert "Connection refused" in line, line
