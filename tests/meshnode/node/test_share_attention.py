"""A share's `attention` (named recipient person) and `note`, from the control API (what `meshnode share
--attention --note` and the portal call) into the signed manifest, across to a recipient, through a later
revision and a recall. Hostile input is refused before anything is signed."""

from __future__ import annotations

from typing import cast

import pytest
import trio
from trio.testing import MockClock

from meshnode.node.control_routes import routes
from meshnode.node.runtime import Node
from protocol.cid import CID
from protocol.errors import LimitError, MeshError, SchemaError
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, wait_done


def received(node: HarnessNode, manifest_id: CID) -> Manifest:
    row = node.store.manifest(manifest_id)
    assert row is not None and row.direction == "received"
    return node.ctx.manifests.open(row.manifest_id, row.raw).document


async def test_attention_and_note_reach_the_recipient_and_survive_revision_and_recall(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RJ1", 51)
    share = routes(cast(Node, a))[("POST", "/share")]
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        out = await share({"study": study, "to": ["RJ1"], "priority": "urgent",
                           "attention": "  dr.jones@rj1.nhs.uk ", "note": "Compare with prior.\r\nBleep 4412.\n"})
        assert isinstance(out, dict)
        first = CID.parse(out["manifest_id"])
        row = a.store.manifest(first)
        assert row is not None
        signed = a.ctx.manifests.open(first, row.raw)
        # trimmed, CRLF made LF, then signed
        assert signed.document.attention == "dr.jones@rj1.nhs.uk"
        assert signed.document.note == "Compare with prior.\nBleep 4412."
        await mesh.announce(a, b, signed)
        await wait_done(b, first, 600)
        assert received(b, first).attention == "dr.jones@rj1.nhs.uk"
        assert received(b, first).note == "Compare with prior.\nBleep 4412."

        # a later revision carries what its share says (the sender's method: keyword arguments)
        second = await a.sender.share(study, ["RJ1"], Priority.STAT, Purpose.CARE, attention="dr.smith",
                                      note="Second opinion please.")
        assert second.document.revision == 2
        b.done = trio.Event()
        await mesh.announce(a, b, second)
        await wait_done(b, second.cid, 600)
        assert (received(b, second.cid).attention, received(b, second.cid).note) == ("dr.smith",
                                                                                     "Second opinion please.")
        # a recall leaves the recipient's row (and the signed manifest in it) as it was: still shown
        await a.sender.recall(second.cid, "wrong patient")
        nursery.cancel_scope.cancel()
    row_a = a.store.manifest(second.cid)
    assert row_a is not None and row_a.state is ManifestState.RECALLED
    assert a.ctx.manifests.open(second.cid, row_a.raw).document.attention == "dr.smith"


@pytest.mark.parametrize(("field", "value", "error"), [
    ("attention", "alice\r\nBcc: everyone@example.com", SchemaError),
    ("attention", "alice\u202e", SchemaError),
    ("attention", "x" * 129, LimitError),
    ("attention", 5, SchemaError),
    ("attention", ["alice"], SchemaError),
    ("note", "x" * 1001, LimitError),
    ("note", "a\x00b", SchemaError),
    ("note", {"text": "hi"}, SchemaError),
])
async def test_hostile_attention_or_note_is_refused_before_anything_is_signed(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, field: str, value: object,
        error: type[MeshError]) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RJ1", 51)
    share = routes(cast(Node, a))[("POST", "/share")]
    with pytest.raises(error):
        await share({"study": study, "to": ["RJ1"], field: value})
    if isinstance(value, str):
        with pytest.raises(error):  # the sender's own method refuses it too
            await a.sender.share(study, ["RJ1"], Priority.ROUTINE, Purpose.CARE,
                                 attention=value if field == "attention" else "",
                                 note=value if field == "note" else "")
    assert a.store.manifests("sent") == []


async def test_a_research_share_carries_no_note(autojump_clock: MockClock, mesh: MemoryMesh, study: str) -> None:
    # a de-identified copy must not carry the sender's free text back to the patient
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    share = routes(cast(Node, a))[("POST", "/share")]
    with pytest.raises(SchemaError, match="research"):
        await share({"study": study, "to": ["RES"], "purpose": "research", "deid": {"project": "lung"},
                     "note": "Patient is John Smith"})
    assert a.store.manifests("sent") == []
