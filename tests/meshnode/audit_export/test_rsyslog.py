"""End to end against a real audit repository: rsyslog from Debian, RFC 5425 over TLS on 127.0.0.1.

The node's exporter sends security alerts and signed checkpoints; each arrives, its RFC 5424 envelope
parses, its XML validates against PS3.15 A.5.1. With the repository down the items spool and arrive
in order once it starts; a repository whose certificate is not from the configured CA gets nothing.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.audit_checkpoint import CHECKPOINT_EVERY
from meshnode.storage.node_storage import NodeStorage
from tests.meshnode.audit_export.helpers import Pki, make_pki, parse_rfc5424, validate
from tests.meshnode.audit_export.receivers import free_port
from tests.meshnode.audit_export.rsyslog import Rsyslog, rsyslogd
from tests.meshnode.audit_export.test_exporter import alert, eventually, exporter, pki, storage  # noqa: F401

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(rsyslogd() is None, reason="rsyslog not installed (Makefile SYSTEM_DEPS)")]


@pytest.fixture
def repository(tmp_path: Path, pki: Pki) -> Iterator[Rsyslog]:  # noqa: F811
    r = Rsyslog(tmp_path / "rsyslog", pki, free_port())
    yield r
    r.stop()


def received(r: Rsyslog) -> list[tuple[str, str, str]]:
    """(EventID code, seq, action-or-kind) of every message rsyslog wrote, each checked on the way."""
    out = []
    for raw in r.messages():
        msg = parse_rfc5424(raw)
        assert msg.app == "meshnode" and msg.msgid == "IHE+RFC-3881" and msg.pri // 8 == 10
        doc = validate(msg.xml)
        seq = next(d for d in doc.iter("ParticipantObjectDetail") if d.get("type") == "seq")
        codes = [c.get("csd-code") for c in doc.iter("EventTypeCode")]
        out.append((doc.find("EventIdentification/EventID").get("csd-code"),
                    base64.b64decode(seq.get("value")).decode(), codes[-1]))
    return out


async def test_alerts_and_checkpoints_reach_rsyslog(storage: NodeStorage, pki: Pki,  # noqa: F811
                                                    repository: Rsyslog) -> None:
    repository.start()
    alert(storage, 1)
    storage.audit(*[AuditEvent(EventCode.INSTANCES_ACCESSED, "view") for _ in range(CHECKPOINT_EVERY)])
    async with trio.open_nursery() as nursery:
        exp = exporter(storage, repository.port, pki.ca_cert)
        await nursery.start(exp.run)
        await eventually(lambda: len(repository.messages()) == 3)
        db = sqlite3.connect(storage.home / "node.db")  # tamper: the truncation alert leaves the node too
        with db:
            db.execute("DELETE FROM audit WHERE seq > 50")
        db.close()
        storage.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "view"))
        await eventually(lambda: len(repository.messages()) == 4)
        nursery.cancel_scope.cancel()
    assert received(repository) == [("110113", "1", "request-refused"), ("110100", "1", "audit-checkpoint"),
                                    ("110100", str(CHECKPOINT_EVERY), "audit-checkpoint"),
                                    ("110113", "52", "audit-log-truncated")]


async def test_spooled_while_rsyslog_is_down_then_delivered_in_order(storage: NodeStorage, pki: Pki,  # noqa: F811
                                                                     repository: Rsyslog) -> None:
    async with trio.open_nursery() as nursery:
        exp = exporter(storage, repository.port, pki.ca_cert)
        await nursery.start(exp.run)
        for n in range(10):
            alert(storage, n)
        await eventually(lambda: exp.failures >= 1)
        assert storage.metadata.audit_spool_size() == 11
        await trio.to_thread.run_sync(repository.start)
        await eventually(lambda: len(repository.messages()) == 11, timeout=30)
        # the repository restarts: later alerts still arrive
        await trio.to_thread.run_sync(repository.stop)
        alert(storage, 10)
        await trio.to_thread.run_sync(repository.start)
        await eventually(lambda: len(repository.messages()) == 12, timeout=30)
        nursery.cancel_scope.cancel()
    assert [seq for _, seq, _ in received(repository)] == ["1", "1", *[str(i) for i in range(2, 12)]]
    assert storage.metadata.audit_spool_size() == 0


async def test_rsyslog_with_a_certificate_from_another_ca_gets_nothing(storage: NodeStorage, pki: Pki,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    impostor = Rsyslog(tmp_path / "impostor", make_pki(tmp_path / "other", "other"), free_port())
    impostor.start()
    try:
        alert(storage, 1)
        async with trio.open_nursery() as nursery:
            exp = exporter(storage, impostor.port, pki.ca_cert)
            await nursery.start(exp.run)
            await eventually(lambda: exp.failures >= 2)
            nursery.cancel_scope.cancel()
    finally:
        impostor.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in exp.last_error
    assert impostor.messages() == [] and storage.metadata.audit_spool_size() == 2
