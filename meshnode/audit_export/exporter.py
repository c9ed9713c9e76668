"""The node's audit exporter: the spool to the audit repository over TLS, in order; periodic checkpoints.

One trio service (`run`), started by the node runtime:
- every `checkpoint_seconds` it signs the audit head when the log has moved
  (meshnode.storage.node_storage.NodeStorage.checkpoint), so the unsigned
  stretch of a quiet log is short in time as well as in entries;
- with an [audit_repository] configured, it keeps one TLS connection to it
  (certificate verified against the configured CA, host name checked, TLS
  1.2 or later; nothing is ever sent in clear) and sends the spool oldest
  first, in RFC 5425 frames; an item leaves the spool once its frame has been
  written to the TLS connection. While the repository is down or refuses the
  connection, items stay in the spool (SQLite, durable across restarts) and the
  exporter retries with a backoff of 1 s doubling to 60 s; when it comes back
  the spool drains in order.

Syslog over TLS has no acknowledgement: frames written to a connection that
the repository drops at that moment can be lost. The repository can see a gap
from the checkpoints' sequence numbers.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from meshnode.audit_export.atna import AuditSource, audit_message
from meshnode.audit_export.config import DEFAULT_CHECKPOINT_S, AuditRepositoryConfig
from meshnode.audit_export.syslog import frame, syslog_message
from meshnode.storage.audit_checkpoint import SpoolItem
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from protocol.backoff import Backoff
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

BATCH = 64
#: Between connection attempts to the audit repository: 1 s doubling to 60 s.
RETRY_BACKOFF = Backoff(base=1.0, factor=2.0, cap=60.0)


class RepositoryClosed(Exception):
    """The repository closed the connection."""


CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, RepositoryClosed)


def tls_context(config: AuditRepositoryConfig) -> ssl.SSLContext:
    """Verify the repository's certificate against the configured CA only, and its name; TLS >= 1.2."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.client_cert is not None and config.client_key is not None:
            ctx.load_cert_chain(str(config.client_cert), str(config.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"audit_repository: cannot load the TLS files: {exc}") from None
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class AuditExporter:
    def __init__(self, storage: NodeStorage, db: DatabaseThread, source: AuditSource,
                 config: AuditRepositoryConfig | None, *, poll_s: float = 1.0) -> None:
        self.storage = storage
        self.db = db
        self.source = source
        self.config = config
        self.poll_s = poll_s
        self.checkpoint_s = config.checkpoint_seconds if config else DEFAULT_CHECKPOINT_S
        self.sent = 0
        self.failures = 0
        self.connected = False
        self.last_error = ""
        self._procid = str(os.getpid())

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ssl_context = tls_context(self.config) if self.config is not None else None
        alarm = await self.db.run(lambda _: self.storage.head.alarm())
        if alarm is not None:
            log.error("unacknowledged audit alert: %s; `meshnode audit verify` fails until an operator runs "
                      "`meshnode audit acknowledge --reason ...`", alarm.problem)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpoint_loop)
            if self.config is not None and ssl_context is not None:
                nursery.start_soon(self._send_loop, self.config, ssl_context)
            task_status.started()

    async def _checkpoint_loop(self) -> None:
        while True:
            await trio.sleep(self.checkpoint_s)
            try:
                await self.db.run(lambda _: self.storage.checkpoint())
            except Exception:  # task boundary: a failed checkpoint is retried next period
                log.exception("cannot sign an audit checkpoint")

    async def _send_loop(self, config: AuditRepositoryConfig, ssl_context: ssl.SSLContext) -> None:
        while True:
            try:
                await self._session(config, ssl_context)
            except CONNECTION_ERRORS as exc:
                self.failures += 1
                reason = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
                self.last_error = f"{type(reason).__name__}: {reason}"
                log.warning("audit repository %s:%d: %s; %d item(s) kept in the spool, retrying in %.0f s",
                            config.host, config.port, self.last_error, await self._spooled(),
                            RETRY_BACKOFF.delay(self.failures))
            finally:
                self.connected = False
            await trio.sleep(RETRY_BACKOFF.delay(self.failures))

    async def _spooled(self) -> int:
        return await self.db.run(lambda s: s.audit_spool_size())

    async def _session(self, config: AuditRepositoryConfig, ssl_context: ssl.SSLContext) -> None:
        with trio.fail_after(config.connect_timeout_seconds):
            tcp = await trio.open_tcp_stream(config.host, config.port)
        stream = trio.SSLStream(tcp, ssl_context, server_hostname=config.tls_name)
        try:
            with trio.fail_after(config.connect_timeout_seconds):
                await stream.do_handshake()
            self.connected = True
            self.failures = 0
            log.info("audit repository %s:%d connected", config.host, config.port)
            failed: list[BaseException] = []
            async with trio.open_nursery() as nursery:

                async def guarded(job: Callable[[], Awaitable[None]]) -> None:
                    try:
                        await job()
                    except CONNECTION_ERRORS as exc:  # one of the two ends the session, as one error
                        failed.append(exc)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(guarded, lambda: self._watch_close(stream))
                nursery.start_soon(guarded, lambda: self._drain(stream, config))
            if failed:
                raise failed[0]
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _watch_close(self, stream: trio.SSLStream) -> None:
        """A syslog receiver never speaks: anything but silence means the connection is gone."""
        while True:
            data = await stream.receive_some(4096)
            if not data:
                raise RepositoryClosed("the repository closed the connection")

    async def _drain(self, stream: trio.SSLStream, config: AuditRepositoryConfig) -> None:
        while True:
            items = await self.db.run(lambda s: s.audit_spool(BATCH))
            if not items:
                await trio.sleep(self.poll_s)
                continue
            frames = [self._frame(item) for item in items]
            try:
                with trio.fail_after(max(30, config.connect_timeout_seconds)):
                    await stream.send_all(b"".join(f for f in frames if f))
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.db.run(lambda s: s.audit_spool_attempted([i.id for i in items]))
                raise
            await self.db.run(lambda s: s.audit_spool_sent([i.id for i in items]))
            self.sent += len(items)

    def _frame(self, item: SpoolItem) -> bytes:
        try:
            xml = audit_message(item, self.source)
            at_ms = int(str(item.payload["at_ms"]))
            outcome = int(str(item.payload.get("outcome", 0)))
        except (KeyError, ValueError, TypeError) as exc:
            log.error("audit spool item %d (%s %d) is unreadable, not sent: %s", item.id, item.kind, item.seq, exc)
            return b""
        return frame(syslog_message(xml, at_ms=at_ms, outcome=outcome, hostname=self.source.hostname,
                                    procid=self._procid))


def audit_source(peer_id: str, org: str, public_key_hex: str) -> AuditSource:
    return AuditSource(peer_id, org, socket.gethostname(), public_key_hex)
