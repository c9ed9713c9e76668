"""Calling into the node's trio loop from pynetdicom's threads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from meshnode.gateway.config import Caller
from meshnode.gateway.routes import Route
from meshnode.storage.audit import AuditEvent
from protocol.errors import UnavailableError

T = TypeVar("T")
AuditFn = Callable[[AuditEvent], Awaitable[None]]


class TrioBridge:
    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token

    def call(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run `await fn(*args)` on the trio loop and wait for it (from a non-trio thread)."""
        try:
            return trio.from_thread.run(fn, *args, trio_token=self.token)
        except trio.RunFinishedError:
            raise UnavailableError("the node is shutting down") from None


@dataclass
class AssociationInfo:
    """Who is on the other end of an accepted association, and what it did."""

    calling_ae: str
    called_ae: str
    host: str
    port: int
    caller: Caller
    route: Route | None
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes: int = 0
    found: int = 0
    retrieved: int = 0
    not_retrieved: int = 0  # failed C-GET / C-MOVE sub-operations
    problems: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The actor in audit entries: dimse:<calling AE>@<address>."""
        return f"dimse:{self.calling_ae}@{self.host}"
