"""An oversized PDU is the peer's doing: one WARNING line naming the peer and the limit, no traceback at ERROR
(issue 15: it logged a full traceback). Other connection failures keep theirs."""

from __future__ import annotations

import logging
import socket
import struct

import pytest
import trio
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from meshnode.gateway.dimse.reactor import MIN_PDU_LIMIT
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import AE_TITLE, CALLER, config, eventually

CT = "1.2.840.10008.5.1.4.1.1.2"


async def test_an_oversized_pdu_logs_one_line_with_the_peer_and_the_limit(
        gateways: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    gw = await gateways(config(max_pdu_bytes=65536))
    caplog.set_level(logging.INFO)

    def attack() -> int:
        ae = AE(ae_title=CALLER)
        ae.add_requested_context(CT, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", gw.port, ae_title=AE_TITLE)
        assert assoc.is_established
        assert assoc.dul.socket is not None and isinstance(assoc.dul.socket.socket, socket.socket)
        sock = assoc.dul.socket.socket
        local_port = int(sock.getsockname()[1])
        sock.sendall(struct.pack(">BBL", 0x04, 0, 512 << 20))  # a 512 MiB P-DATA-TF header, then nothing
        sock.settimeout(10)
        try:
            sock.recv(16)
        except OSError:
            pass
        finally:
            assoc.abort()
        return local_port

    caplog.clear()
    peer_port = await trio.to_thread.run_sync(attack)
    await eventually(lambda: any("exceeds the limit" in r.getMessage() for r in caplog.records), "the log line")
    lines = [r for r in caplog.records if "exceeds the limit" in r.getMessage()
             and r.name.startswith("meshnode")]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    (line,) = lines
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert f"127.0.0.1:{peer_port}" in line.getMessage() and f"limit of {max(65536, MIN_PDU_LIMIT) + 16}" in line.getMessage()
    assert str(512 << 20) in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_an_oversized_pdu_before_association_is_audited(gateways: GatewayFactory) -> None:
    """The first PDU (where an A-ASSOCIATE-RQ belongs) is oversized: no association exists yet, so nothing
    was audited (review finding 7). Now a Security Alert (110113) names the peer's address."""
    gw = await gateways(config(max_pdu_bytes=65536))

    def attack() -> int:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            port = int(sock.getsockname()[1])
            sock.sendall(struct.pack(">BBL", 0x01, 0, 512 << 20))  # a 512 MiB A-ASSOCIATE-RQ header
            try:
                sock.recv(16)
            except OSError:
                pass
            return port

    peer_port = await trio.to_thread.run_sync(attack)

    async def alerts() -> list[tuple[int, str, str]]:
        return [a for a in await gw.audit_actions() if a[1] == "dimse-oversized-pdu"]

    found: list[tuple[int, str, str]] = []
    with trio.fail_after(20):
        while not found:
            found = await alerts()
            await trio.sleep(0.05)
    (code, _, detail), = found
    assert code == 110113 and str(512 << 20) in detail
    entries = [e for e in await gw.db.run(lambda s: s.audit_entries()) if e.event.action == "dimse-oversized-pdu"]
    assert entries[0].event.actor == f"dimse:@127.0.0.1:{peer_port}"
