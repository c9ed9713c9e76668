"""In-process receivers for the exporter tests: an RFC 5425 TLS receiver, and a plain TCP one that
records whatever bytes arrive (to prove nothing is sent in clear)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import trio

from tests.meshnode.audit_export.helpers import Pki, split_frames

if TYPE_CHECKING:
    from trio_typing import TaskStatus


class TlsReceiver:
    def __init__(self, pki: Pki) -> None:
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.data = bytearray()
        self.handshakes_failed = 0

    def frames(self) -> list[bytes]:
        return split_frames(bytes(self.data))

    async def serve(self, port: int, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        async with listeners[0], trio.open_nursery() as nursery:
            while True:
                stream = await listeners[0].accept()
                nursery.start_soon(self._handle, stream)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.ssl, server_side=True)
        try:
            while chunk := await stream.receive_some(65536):
                self.data += chunk
        except trio.BrokenResourceError:
            self.handshakes_failed += 1
        finally:
            await trio.aclose_forcefully(stream)


class RawReceiver:
    def __init__(self) -> None:
        self.data = bytearray()
        self.connections = 0

    async def serve(self, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        async with listeners[0], trio.open_nursery() as nursery:
            while True:
                stream = await listeners[0].accept()
                self.connections += 1
                nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        with trio.move_on_after(0.5):  # a TLS client waits for our ServerHello; we never send one
            try:
                while chunk := await stream.receive_some(65536):
                    self.data += chunk
            except trio.BrokenResourceError:
                pass
        await trio.aclose_forcefully(stream)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
