"""The directory as a running libp2p service: a thin trio driver around DirectoryService."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from common.files import write_atomic
from common.p2p.host import listen_multiaddrs, running_host
from common.p2p.streams import serve_requests
from protocol.certificate import Certificate
from protocol.directory_messages import (
    DIRECTORY_PROTOCOL,
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    PublishRoster,
    Refused,
    Response,
    WatchRoster,
    decode_request,
    encode_response,
)
from protocol.document import open_document
from protocol.errors import DocumentError, MeshError
from tools.directory.home import DirectoryHome
from tools.directory.service import DirectoryService, refusal_log_level
from tools.directory.store import DirectoryStore
from tools.directory.watch import RosterWatches

if TYPE_CHECKING:  # trio-typing's stubs (pulled in by libp2p) shadow trio's own types
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0


async def run_directory(
    home: DirectoryHome,
    listen: tuple[str, ...] | None = None,
    *,
    task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the directory until cancelled. task_status.started receives the listen multiaddrs."""
    config = home.config()
    key = home.signing_key()
    certificate = home.certificate_bytes()
    if open_document(certificate, Certificate).document.node_key != key.public_key:
        raise DocumentError("the installed certificate is not for this directory's key")
    store = DirectoryStore(home.db_path)
    service = DirectoryService(store, config.authority_keys, certificate, time.time(), skew=config.clock_skew)
    limiter = trio.CapacityLimiter(1)
    watches = RosterWatches(service.roster_version)

    async def handle(peer: ID, payload: bytes) -> bytes:
        response: Response
        try:
            request = decode_request(payload)
            if isinstance(request, WatchRoster):
                await watches.wait_newer(peer.to_base58(), request.after)  # holds no worker thread
            response = await trio.to_thread.run_sync(
                service.handle, peer.to_base58(), request, time.time(), limiter=limiter
            )
            if isinstance(request, PublishRoster):
                watches.published()
        except MeshError as exc:
            log.log(refusal_log_level(exc), "refused request from %s: %s: %s", peer, exc.name, exc)
            response = Refused.from_error(exc)
        return encode_response(response)

    try:
        async with running_host(key.seed, listen or config.listen) as host:
            serve_requests(
                host, DIRECTORY_PROTOCOL, handle,
                max_request=MAX_REQUEST_FRAME, max_response=MAX_RESPONSE_FRAME, timeout=REQUEST_TIMEOUT,
            )
            addrs = listen_multiaddrs(host)
            write_atomic(home.address_path, ("\n".join(addrs) + "\n").encode("ascii"))
            log.info("directory %s serving on %s", key.peer_id, ", ".join(addrs))
            task_status.started(addrs)
            await trio.sleep_forever()
    finally:
        store.close()
