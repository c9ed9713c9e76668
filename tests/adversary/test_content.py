"""A manifest that disagrees with the DICOM it lists, announced by a certified but hostile sender.

Issue 11, finding 4: org X (valid certificate) signs a manifest of its own
that lists the real blocks of a study node A ingested, under a patient name
and ID of X's choosing, and announces it to A. Every block matches its CID
and every instance its digest; only the headers betray the lie. A must fail
the manifest (visible in its inbox), raise a 110113 alert that names the
attribute but not the claimed value, record nothing as received, and leave
its own study exactly as it was: its search still shows what the DICOM says.
Against real node processes (make test-slow).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshnode.storage.audit import EventCode
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from common.p2p.streams import read_frame, serve_streams
from meshnode.storage.blockstore import BlockStore
from protocol.cid import CID
from protocol.exchange_messages import BLOCKS_PROTOCOL, FRAME_LIMITS, decode_block_request, encode_block_data_frame
from protocol.exchange_messages import Ack, Hello
from protocol.manifest import InstanceEntry
from tests.adversary.hostile import client_for, in_thread, wait_for
from tests.protocol.factories import make_manifest
from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLAIMED_NAME = "ATTACKER^CLAIMED"
CLAIMED_ID = "X-CLAIMED-4711"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path_factory.mktemp("content")))
    try:
        demo.setup([("a", "RGT", "Cambridge University Hospitals NHS FT")])
        demo.identity.add_node("x", "RXH", "Royal Example Hospital")  # certified, never started: the attacker
        yield demo
    finally:
        demo.close()


def _entries(shown: dict[str, Any]) -> tuple[InstanceEntry, ...]:
    return tuple(InstanceEntry(i["sop_class_uid"], i["sop_instance_uid"], i["series_uid"], i["transfer_syntax"],
                               i["size"], bytes.fromhex(i["digest"]), tuple(CID.parse(c) for c in i["blocks"]))
                 for i in shown["instances_detail"])


async def test_a_manifest_claiming_another_patient_for_real_blocks_fails_and_changes_nothing(mesh: MeshDemo) -> None:
    a, x = mesh.node("a"), mesh.node("x")
    uid, _ = await in_thread(mesh.generate_and_ingest, a, 4, 31, 64, 64)
    before = await in_thread(mesh.cli, a, "studies")
    shown = await in_thread(mesh.cli, a, "show", uid)
    real = next(s for s in before if s["study_uid"] == uid)
    assert CLAIMED_NAME not in (real["patient_name"], real["patient_id"])

    # X holds the study's bytes (say it received it legitimately once) and serves them itself: A holds the
    # same blocks from its own ingest, but fetches every one of them again from X rather than reveal that
    # (protocol.access.may_reuse), so only the headers can betray the lie
    store = BlockStore(a.home / "store")
    asked: list[CID] = []

    async def serve_blocks(peer: ID, stream: INetStream) -> None:
        limits = FRAME_LIMITS[BLOCKS_PROTOCOL]
        payload = await read_frame(stream, limits.request)
        assert payload is not None
        for cid in decode_block_request(payload).cids:
            asked.append(cid)
            await stream.write(encode_block_data_frame(cid, store.get(cid), limits.response))

    async with client_for(x) as cx:
        serve_streams(cx.host, BLOCKS_PROTOCOL, serve_blocks, timeout=10.0)
        peer = await cx.connect(a)
        assert isinstance(await cx.hello(peer), Hello)
        honest = make_manifest(cx.key, sender_org="RXH", recipients=("RGT",), instances=_entries(shown),
                               study_uid=uid, created_at=int(time.time()), expires_at=int(time.time()) + 86400)
        lying = dataclasses.replace(honest, summary=dataclasses.replace(
            honest.summary, patient_name=CLAIMED_NAME, patient_id=CLAIMED_ID, modality="CT", study_date="",
            description=""))
        signed = lying.sign(cx.key)
        assert await cx.announce(peer, signed) == Ack()

        def failed() -> dict[str, Any] | None:
            entry = mesh.inbox_entry(a, str(signed.cid))
            return entry if entry is not None and entry["state"] == "failed" else None

        entry = await wait_for(failed, 30, "A to fail the lying manifest")
    assert "PatientID does not match its manifest" in entry["failure"]  # why, in the inbox
    assert set(asked) == {c for i in _entries(shown) for c in i.blocks}  # nothing taken from A's own store

    entries = [e for e in await in_thread(mesh.audit, a) if e["manifest_id"] == str(signed.cid)]
    alerts = [e for e in entries if e["event_code"] == EventCode.SECURITY_ALERT]
    assert [e["action"] for e in alerts] == ["verification-failed"]
    assert "PatientID" in alerts[0]["detail"]  # the attribute, never the value claimed
    assert all(CLAIMED_ID not in e["detail"] and CLAIMED_NAME not in e["detail"] for e in entries)
    assert "received" not in [e["action"] for e in entries]  # nothing recorded under it
    after = await in_thread(mesh.cli, a, "studies")
    assert after == before  # A's own study: same patient, same counts, still only local
    assert (await in_thread(mesh.cli, a, "show", uid))["instances_detail"] == shown["instances_detail"]
    assert not [s for s in after if CLAIMED_NAME in s["patient_name"] or s["patient_id"] == CLAIMED_ID]
