"""What the HTTP handlers share: configuration, storage, the database thread, the audit log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from starlette.requests import Request

from meshnode.storage.audit import AuditEvent
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.node_storage import NodeStorage
from meshnode.web.config import HttpConfig
from meshnode.web.http import client, principal

AuditFn = Callable[[AuditEvent], Awaitable[None]]


@dataclass
class WebServices:
    config: HttpConfig
    org: str
    storage: NodeStorage
    db: DatabaseThread
    audit: AuditFn
    clock: Callable[[], float] = time.time
    #: where this listener is reached (set once bound; [http] public_url wins)
    url: str = ""
    #: one block read at a time per request, but several requests may read in parallel
    block_readers: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(4))

    def base_url(self, request: Request) -> str:
        """The DICOMweb root as the client sees it, for RetrieveURLs."""
        if self.config.public_url:
            return self.config.public_url + "/dicomweb"
        host = request.headers.get("host", "")
        if host and all(c.isalnum() or c in ".-:[]" for c in host):
            return f"{request.url.scheme}://{host}/dicomweb"
        return self.url + "/dicomweb"


#: a request's participant other than a user or an address (the patient pages put "share:<link id>" here)
ACTOR = "meshnode.actor"


def actor(request: Request) -> str:
    named = request.scope.get(ACTOR)
    if isinstance(named, str):
        return named
    p = principal(request)
    return f"user:{p.user}" if p else f"http:{client(request)}"
