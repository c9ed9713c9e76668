"""Is the node fit to serve? For /health (load balancers) and the systemd watchdog."""

from __future__ import annotations

import shutil
from typing import Any

import trio

from common.describe import iso
from meshnode.node.context import NodeContext
from protocol.errors import MeshError

DISK_LOW_BYTES = 1 << 30
TIMEOUT_S = 5.0


async def node_health(ctx: NodeContext) -> tuple[bool, dict[str, Any]]:
    """Database answering, roster and certificate valid, at least 1 GiB free: (ok, checks)."""
    now = ctx.clock()
    checks: dict[str, Any] = {}
    ok = True
    with trio.move_on_after(TIMEOUT_S) as scope:
        try:
            await ctx.db.run(lambda s: s.audit_head())
            checks["database"] = "ok"
        except MeshError as exc:
            checks["database"] = f"failing: {exc}"
            ok = False
    if scope.cancelled_caught:
        checks["database"] = f"no answer within {TIMEOUT_S:g} s"
        ok = False
    roster = ctx.peers.guard.current
    if roster is None or roster.document.expires_at <= now:
        checks["roster"] = "expired or missing: peers cannot be verified"
        ok = False
    else:
        checks["roster"] = f"version {roster.document.version}, expires {iso(roster.document.expires_at)}"
    not_after = ctx.certificate.document.not_after
    if not_after <= now:
        checks["certificate"] = f"expired {iso(not_after)}"
        ok = False
    else:
        checks["certificate"] = f"valid until {iso(not_after)}"
    free = shutil.disk_usage(ctx.home.path).free
    checks["disk_free_bytes"] = free
    if free < DISK_LOW_BYTES:
        checks["disk"] = "less than 1 GiB free"
        ok = False
    return ok, checks
