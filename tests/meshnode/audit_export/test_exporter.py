"""The exporter against real TLS receivers on 127.0.0.1: alerts and checkpoints arrive in order, the
spool survives the repository being down, and a repository with the wrong certificate gets nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode.audit_export.config import AuditRepositoryConfig
from meshnode.audit_export.exporter import AuditExporter, audit_source
from meshnode.cli.main import main as meshnode_main
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.audit_checkpoint import CHECKPOINT_EVERY
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from tests.meshnode.audit_export.helpers import Pki, make_pki, parse_rfc5424, validate
from tests.meshnode.audit_export.receivers import RawReceiver, TlsReceiver, free_port


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[NodeStorage]:
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RGT"]) == 0
    s = NodeStorage.open(home)
    yield s
    s.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def exporter(storage: NodeStorage, port: int, ca: Path, **kw: object) -> AuditExporter:
    assert storage.key is not None
    config = AuditRepositoryConfig("127.0.0.1", port, ca, connect_timeout_seconds=5, **kw)  # type: ignore[arg-type]
    return AuditExporter(storage, DatabaseThread(storage.metadata),
                         audit_source(storage.key.peer_id, "RGT", storage.key.public_key.raw.hex()), config,
                         poll_s=0.05)


def alert(storage: NodeStorage, n: int) -> None:
    storage.audit(AuditEvent(EventCode.SECURITY_ALERT, "request-refused", Outcome.SERIOUS_FAILURE,
                             actor="12D3KooWx", actor_org="EVIL", detail=f"alert {n}"))


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await trio.sleep(0.05)


def sent_order(receiver: TlsReceiver) -> list[tuple[str, str]]:
    """(event id, seq) of each message received, validated against PS3.15 A.5.1."""
    out = []
    for raw in receiver.frames():
        doc = validate(parse_rfc5424(raw).xml)
        seq = next(d for d in doc.iter("ParticipantObjectDetail") if d.get("type") == "seq")
        import base64

        out.append((doc.find("EventIdentification/EventID").get("csd-code"), base64.b64decode(seq.get("value")).decode()))
    return out


async def test_alerts_and_checkpoints_arrive_in_order(storage: NodeStorage, pki: Pki) -> None:
    alert(storage, 1)
    storage.audit(*[AuditEvent(EventCode.INSTANCES_ACCESSED, "view") for _ in range(CHECKPOINT_EVERY)])
    alert(storage, 2)
    expected = [("entry", i.seq) for i in storage.metadata.audit_spool(100)]
    receiver = TlsReceiver(pki)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, 0)
        exp = exporter(storage, port, pki.ca_cert)
        await nursery.start(exp.run)
        await eventually(lambda: len(receiver.frames()) == len(expected))
        assert storage.metadata.audit_spool_size() == 0
        # and a live one: a truncation detected by the next write leaves at once
        db = sqlite3.connect(storage.home / "node.db")
        with db:
            db.execute("DELETE FROM audit WHERE seq > 60")
        db.close()
        storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view"))
        await eventually(lambda: len(receiver.frames()) == len(expected) + 1)
        nursery.cancel_scope.cancel()
    order = sent_order(receiver)
    assert order == [("110113", "1"), ("110100", "1"), ("110100", str(CHECKPOINT_EVERY)),
                     ("110113", str(CHECKPOINT_EVERY + 2)), ("110113", "62")]
    last = validate(parse_rfc5424(receiver.frames()[-1]).xml)
    assert "entry 66 was recorded as the head but the log now ends at entry 61" in last.find(
        "EventIdentification/EventOutcomeDescription").text


async def test_spool_survives_the_repository_being_down(storage: NodeStorage, pki: Pki) -> None:
    port = free_port()
    receiver = TlsReceiver(pki)
    async with trio.open_nursery() as nursery:
        exp = exporter(storage, port, pki.ca_cert)
        await nursery.start(exp.run)
        for n in range(5):
            alert(storage, n)
        await eventually(lambda: exp.failures >= 1)
        alert(storage, 5)
        assert storage.metadata.audit_spool_size() == 7  # 6 alerts + the first checkpoint; nothing lost
        assert "all attempts to connect" in exp.last_error
        await nursery.start(receiver.serve, port)
        await eventually(lambda: len(receiver.frames()) == 7)
        nursery.cancel_scope.cancel()
    assert [seq for _, seq in sent_order(receiver)] == ["1", "1", "2", "3", "4", "5", "6"]
    assert storage.metadata.audit_spool_size() == 0


async def test_repository_with_wrong_certificate_gets_nothing(storage: NodeStorage, pki: Pki, tmp_path: Path) -> None:
    alert(storage, 1)
    impostor = TlsReceiver(make_pki(tmp_path / "other", "other-ca"))  # a valid certificate, from another CA
    async with trio.open_nursery() as nursery:
        port = await nursery.start(impostor.serve, 0)
        exp = exporter(storage, port, pki.ca_cert)
        await nursery.start(exp.run)
        await eventually(lambda: exp.failures >= 1)
        nursery.cancel_scope.cancel()
    assert "CERTIFICATE_VERIFY_FAILED" in exp.last_error
    assert impostor.data == b"" and storage.metadata.audit_spool_size() == 2


async def test_repository_with_the_wrong_name_gets_nothing(storage: NodeStorage, pki: Pki) -> None:
    alert(storage, 1)
    receiver = TlsReceiver(pki)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(receiver.serve, 0)
        exp = exporter(storage, port, pki.ca_cert, server_name="arr.elsewhere.example")
        await nursery.start(exp.run)
        await eventually(lambda: exp.failures >= 1)
        nursery.cancel_scope.cancel()
    assert "CERTIFICATE_VERIFY_FAILED" in exp.last_error and receiver.data == b""


async def test_nothing_is_sent_in_clear(storage: NodeStorage, pki: Pki) -> None:
    """A listener that does not speak TLS sees a TLS ClientHello and nothing else."""
    alert(storage, 1)
    raw = RawReceiver()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(raw.serve)
        exp = exporter(storage, port, pki.ca_cert)
        await nursery.start(exp.run)
        await eventually(lambda: exp.failures >= 1)
        nursery.cancel_scope.cancel()
    assert raw.connections >= 1 and raw.data[:1] == b"\x16"  # a TLS handshake record
    assert b"AuditMessage" not in raw.data and b"request-refused" not in raw.data
    assert storage.metadata.audit_spool_size() == 2


async def test_the_head_is_checkpointed_periodically_without_a_repository(storage: NodeStorage,
                                                                         autojump_clock: trio.testing.MockClock
                                                                         ) -> None:
    assert storage.key is not None
    storage.audit(*[AuditEvent(EventCode.INSTANCES_ACCESSED, "view") for _ in range(5)])
    assert [c.seq for c in storage.metadata.audit_checkpoints()] == [5]
    storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view"))
    exp = AuditExporter(storage, DatabaseThread(storage.metadata),
                        audit_source(storage.key.peer_id, "RGT", storage.key.public_key.raw.hex()), None)
    async with trio.open_nursery() as nursery:
        await nursery.start(exp.run)
        with trio.fail_after(10 * exp.checkpoint_s):  # virtual time; the database thread's work is real
            while [c.seq for c in storage.metadata.audit_checkpoints()] != [5, 6]:
                await trio.sleep(1)
        assert trio.current_time() >= exp.checkpoint_s
        await trio.sleep(3 * exp.checkpoint_s)  # nothing new: no new checkpoint
        assert [c.seq for c in storage.metadata.audit_checkpoints()] == [5, 6]
        nursery.cancel_scope.cancel()
