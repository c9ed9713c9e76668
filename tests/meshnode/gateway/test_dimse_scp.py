"""The DIMSE SCP against real dcmtk tools and a raw pynetdicom SCU: admission, C-STORE outcomes and
bad input (each a clear DICOM status, nothing half-stored, an audit entry), C-FIND, retrieve refusals."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from meshnode.dicom.part10 import part10_file
from meshnode.gateway.announcer import ANNOUNCE_QUEUE, KEYS
from meshnode.gateway.config import Caller, DicomPeer
from meshnode.gateway.routes import Route
from protocol.outbox import DeliveryState
from tests.e2e.dimse_tools import (
    ToolResult,
    dataset_bytes,
    datasets,
    find_answers,
    run_tool,
)
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import AE_TITLE, CALLER, Gateway, config

pytestmark = pytest.mark.e2e  # real dcmtk processes
CT = "1.2.840.10008.5.1.4.1.1.2"
ROUTE = Route("rj1", ("RJ1",), called_ae="MESH_RJ1", quiet_period_s=3600)


async def tool(*args: str) -> ToolResult:
    return await trio.to_thread.run_sync(lambda: run_tool(*args))


async def storescu(gw: Gateway, files: list[Path], *, calling: str = CALLER, called: str = AE_TITLE,
                   options: tuple[str, ...] = ()) -> ToolResult:
    return await tool("storescu", *options, "-aet", calling, "-aec", called, "127.0.0.1", str(gw.port),
                      *map(str, files))


async def audit(gw: Gateway, action: str) -> list[tuple[int, str, str]]:
    return [a for a in await gw.audit_actions() if a[1] == action]


def raw_store(port: int, dataset: bytes, sop_instance: str, *, sop_class: str = CT, calling: str = CALLER,
              called: str = AE_TITLE) -> int:
    """C-STORE `dataset` (bytes as they are) with pynetdicom; the response status."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    path = Path(f"/tmp/dicom-mesh-raw-{sop_instance}.dcm")  # pynetdicom sends a file's data set as it is
    path.write_bytes(part10_file(dataset, sop_class, sop_instance, ExplicitVRLittleEndian))
    try:
        status = assoc.send_c_store(path)
    finally:
        path.unlink()
        assoc.release()
    return int(status.Status)


async def held(gw: Gateway) -> int:
    return sum(s.instance_count for s in await gw.db.run(lambda s: s.studies()))


def block_files(gw: Gateway) -> list[Path]:
    root = gw.storage.blocks.root
    return sorted(p for p in (root / "blocks").rglob("b*") if p.is_file()) + sorted((root / "tmp").iterdir())


async def test_echo_store_on_a_route_and_find(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]))
    echo = await tool("echoscu", "-aet", CALLER, "-aec", AE_TITLE, "127.0.0.1", str(gw.port))
    assert echo.code == 0, echo.output
    sent = await storescu(gw, ct_study, called="MESH_RJ1")
    assert sent.code == 0, sent.output
    assert await held(gw) == len(ct_study)
    pending = [KEYS.decode(r.key) for r in await gw.db.run(
        lambda s: s.queue_rows(ANNOUNCE_QUEUE, states=(DeliveryState.PENDING,)))]
    assert [route for _, route in pending] == ["rj1"]
    study = pending[0][0]
    found = await tool("findscu", "-P", "-aet", CALLER, "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=PATIENT",
                       "-k", "PatientID", "-k", "NumberOfPatientRelatedInstances", "127.0.0.1", str(gw.port))
    assert [a["NumberOfPatientRelatedInstances"] for a in find_answers(found.output)] == [str(len(ct_study))]
    images = await tool("findscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=IMAGE",
                        "-k", f"StudyInstanceUID={study}", "-k", "SOPInstanceUID", "-k", "InstanceNumber",
                        "127.0.0.1", str(gw.port))
    assert sorted(int(a["InstanceNumber"]) for a in find_answers(images.output)) == list(range(1, len(ct_study) + 1))
    nobody = await tool("findscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=STUDY",
                        "-k", "PatientName=NOBODY*", "-k", "StudyDate=19000101-19010101", "127.0.0.1", str(gw.port))
    assert nobody.code == 0 and find_answers(nobody.output) == []
    dated = await tool("findscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=STUDY",
                       "-k", "PatientName=synth*", "-k", "StudyDate=19000101-", "-k", "StudyInstanceUID",
                       "127.0.0.1", str(gw.port))
    assert [a["StudyInstanceUID"] for a in find_answers(dated.output)] == [study]
    assert await audit(gw, "dimse-find")


@pytest.mark.parametrize("callers, calling, called, why", [
    ((Caller(CALLER),), "STRANGER", AE_TITLE, "is not an allowed caller"),
    ((Caller(CALLER, hosts=("10.9.9.9",)),), CALLER, AE_TITLE, "may not connect from 127.0.0.1"),
    ((Caller(CALLER),), CALLER, "NOT_OURS", "is neither this node's nor a route's"),
])
async def test_unknown_callers_are_rejected_and_audited(gateways: GatewayFactory, ct_study: list[Path],
                                                        callers: tuple[Caller, ...], calling: str, called: str,
                                                        why: str) -> None:
    gw = await gateways(config(callers=callers))
    sent = await storescu(gw, ct_study[:1], calling=calling, called=called)
    assert sent.code != 0 and "Association Rejected" in sent.output, sent.output
    assert await held(gw) == 0 and block_files(gw) == []
    (alert,) = await audit(gw, "dimse-association-rejected")
    assert alert[0] == 110113 and why in alert[2]


async def test_malformed_and_mismatched_data_sets_get_clear_statuses(gateways: GatewayFactory,
                                                                     ct_study: list[Path]) -> None:
    gw = await gateways()
    good = dataset_bytes(ct_study[0])
    uid = "1.2.826.0.1.3680043.8.498.77"
    cases = [
        (b"\xde\xad\xbe\xef" * 64, uid, 0xC000),  # not a data set
        (good[: len(good) // 2], uid, 0xC000),  # truncated
        (good, uid, 0xA900),  # a real data set, but not the instance the request names
    ]
    for data, sop_instance, expected in cases:
        status = await trio.to_thread.run_sync(lambda: raw_store(gw.port, data, sop_instance))
        assert status == expected, hex(status)
    assert await held(gw) == 0 and block_files(gw) == []
    refused = await audit(gw, "dimse-store-refused")
    assert [r[2][:6] for r in refused] == ["0xC000", "0xC000", "0xA900"] and all(r[0] == 110107 for r in refused)
    # the association and the gateway keep working: the good instance is stored afterwards
    sent = await storescu(gw, ct_study[:1])
    assert sent.code == 0 and await held(gw) == 1


async def test_an_oversized_instance_is_refused_without_being_buffered(gateways: GatewayFactory,
                                                                       ct_study: list[Path]) -> None:
    gw = await gateways(config(max_instance_mb=1))
    big = dataset_bytes(ct_study[0]) + b"\x00" * (1 << 20)  # over 1 MiB with its meta information
    status = await trio.to_thread.run_sync(lambda: raw_store(gw.port, big, "1.2.826.0.1.3680043.8.498.78"))
    assert status == 0xA700
    assert await held(gw) == 0 and block_files(gw) == []
    (refusal,) = await audit(gw, "dimse-store-refused")
    assert refusal[0] == 110113 and "exceeds the limit" in refusal[2]


async def test_a_pdu_beyond_the_advertised_maximum_ends_the_association(gateways: GatewayFactory) -> None:
    gw = await gateways(config(max_pdu_bytes=65536))

    def attack() -> bytes:
        ae = AE(ae_title=CALLER)
        ae.add_requested_context(CT, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=AE_TITLE)
        assert assoc.is_established
        sock: socket.socket = assoc.dul.socket.socket
        sock.sendall(struct.pack(">BBL", 0x04, 0, 512 << 20))  # a 512 MiB P-DATA-TF, then nothing
        sock.settimeout(10)
        try:
            return sock.recv(16)  # the node aborts (or closes): no 512 MiB buffer
        except OSError:
            return b""
        finally:
            assoc.abort()

    reply = await trio.to_thread.run_sync(attack)
    assert reply == b"" or reply[:1] == b"\x07"  # connection closed, or an A-ABORT PDU
    deadline = trio.current_time() + 10
    while not await audit(gw, "dimse-association-aborted"):
        assert trio.current_time() < deadline, "no audit entry for the oversized PDU"
        await trio.sleep(0.05)
    (entry,) = await audit(gw, "dimse-association-aborted")
    assert entry[0] == 110113 and "exceeds the limit" in entry[2]


async def test_operations_a_caller_may_not_use(gateways: GatewayFactory, ct_study: list[Path], tmp_path: Path) -> None:
    gw = await gateways(config(callers=[Caller(CALLER, allow=frozenset({"find"}))],
                               move_destinations=[DicomPeer(CALLER, "127.0.0.1", 9)]))
    sent = await storescu(gw, ct_study[:1])
    assert sent.code != 0 and await held(gw) == 0
    got = await tool("getscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-od", str(tmp_path),
                     "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3", "127.0.0.1", str(gw.port))
    assert "0x124" in got.output, got.output  # Refused: Not Authorized (dcmtk has no name for it)
    alerts = [a for a in await gw.audit_actions() if a[0] == 110113]
    assert {a[1] for a in alerts} >= {"dimse-store-refused", "dimse-get"}


async def test_move_to_an_unknown_destination_is_refused(gateways: GatewayFactory, ct_study: list[Path],
                                                         tmp_path: Path) -> None:
    gw = await gateways()
    assert (await storescu(gw, ct_study[:2])).code == 0
    moved = await tool("movescu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-aem", "ELSEWHERE",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", str(gw.port))
    assert "MoveDestinationUnknown" in moved.output or "a801" in moved.output.lower(), moved.output
    assert await held(gw) == 2  # nothing was sent anywhere
    (alert,) = [a for a in await gw.audit_actions() if a[1] == "dimse-move"]
    assert alert[0] == 110113 and "ELSEWHERE" in alert[2]


async def test_get_returns_the_stored_bytes(gateways: GatewayFactory, ct_study: list[Path], tmp_path: Path) -> None:
    gw = await gateways()
    assert (await storescu(gw, ct_study)).code == 0
    study = (await gw.db.run(lambda s: s.studies()))[0].attributes.study_uid
    (tmp_path / "get").mkdir()
    (tmp_path / "none").mkdir()
    got = await tool("getscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-od", str(tmp_path / "get"),
                     "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
                     "-k", f"SeriesInstanceUID={_series(ct_study[0])}", "127.0.0.1", str(gw.port))
    assert got.code == 0, got.output
    assert datasets(tmp_path / "get") == sorted(dataset_bytes(f) for f in ct_study)
    bad = await tool("getscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-od", str(tmp_path / "none"),
                     "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(gw.port))
    assert "UnableToProcess" in bad.output and not list((tmp_path / "none").iterdir()), bad.output


def _series(path: Path) -> str:
    import pydicom

    ds: Any = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SeriesInstanceUID)


async def test_streamed_and_ordinary_instances_both_come_back_exact(gateways: GatewayFactory, ct_study: list[Path],
                                                                    tmp_path: Path) -> None:
    from meshnode.dicom.synthetic import generate_compressed, generate_multiframe

    gw = await gateways()
    rle = generate_compressed(tmp_path / "rle", images=2, rows=32, columns=32, seed=5)
    multi = generate_multiframe(tmp_path / "mf", frames=4, rows=32, columns=32, seed=6)
    for files, options in ((ct_study, ()), (rle, ("--propose-rle",)), (multi, ())):
        sent = await storescu(gw, files, options=options)
        assert sent.code == 0, sent.output
    # native pixel data is split into blocks as it arrives; encapsulated (RLE) data the ordinary way
    assert gw.intake.counters.streamed == len(ct_study) + len(multi)
    assert gw.intake.counters.stored == len(ct_study) + len(rle) + len(multi)
    assert not list((gw.storage.blocks.root / "tmp").iterdir())
    for study in await gw.db.run(lambda s: s.studies()):
        out = tmp_path / "get" / study.attributes.study_uid
        out.mkdir(parents=True)
        got = await tool("getscu", "-S", "+B", "-aet", CALLER, "-aec", AE_TITLE,  # +B: files as received
                         "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                         "-k", f"StudyInstanceUID={study.attributes.study_uid}", "127.0.0.1", str(gw.port))
        assert got.code == 0, got.output
    retrieved = datasets(tmp_path / "get")
    # native pixel data comes back as the node stored it: byte for byte (for the CT, that is the files as
    # written; dcmtk re-encodes the enhanced multi-frame's sequences when it sends it)
    stored: list[bytes] = []
    for study in await gw.db.run(lambda s: s.studies()):
        for rec in await gw.db.run(lambda s, uid=study.attributes.study_uid: s.instances(uid)):  # type: ignore[misc]
            if rec.transfer_syntax == ExplicitVRLittleEndian:
                stored.append(dataset_bytes(b"".join(gw.storage.blocks.get(c) for c in rec.blocks)))
    assert len(stored) == len(ct_study) + len(multi)
    assert [d for d in retrieved if d in set(stored)] == sorted(stored)
    assert {dataset_bytes(f) for f in ct_study} <= set(stored)
    # getscu accepts no RLE: those came back decompressed, with the same pixels
    import numpy as np
    import pydicom

    back = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in (tmp_path / "get").rglob("*")
                                                  if p.is_file())}
    for f in rle:
        original = pydicom.dcmread(f)
        copy = back[str(original.SOPInstanceUID)]
        assert not copy.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(copy.pixel_array, original.pixel_array)


async def test_an_association_aborted_mid_data_set_leaves_nothing(gateways: GatewayFactory,
                                                                  ct_study: list[Path]) -> None:
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    gw = await gateways()
    data = dataset_bytes(ct_study[0])

    def half_a_store() -> None:
        ae = AE(ae_title=CALLER)
        ae.add_requested_context(CT, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=AE_TITLE, max_pdu=16384)
        assert assoc.is_established
        req = C_STORE()
        req.MessageID, req.Priority = 1, 2
        req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = CT, "1.2.826.0.1.3680043.8.498.79"
        req.DataSet = BytesIO(data)
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        pdus = []
        for primitive in msg.encode_msg(assoc.accepted_contexts[0].context_id, 16384):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            pdus.append(pdu.encode())
        sock: socket.socket = assoc.dul.socket.socket
        for raw in pdus[: len(pdus) // 2]:  # the command and half of the data set, then gone
            sock.sendall(raw)
        assoc.abort()

    await trio.to_thread.run_sync(half_a_store)
    deadline = trio.current_time() + 10
    while list((gw.storage.blocks.root / "tmp").iterdir()) or not await audit(gw, "dimse-association-aborted"):
        assert trio.current_time() < deadline, "temp files of the aborted data set were left behind"
        await trio.sleep(0.05)
    assert await held(gw) == 0 and block_files(gw) == []
