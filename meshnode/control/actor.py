"""Who a control-API decision is recorded as: "control:<account>" (one rule for every route).

The control token is the local admin's; the CLI sends the local account it runs as ("actor"), which is
informational only. It is accepted only as a plain account name (letters, digits, '.', '_', '-'; at most 32
characters, not starting with '-' or '.'), so it can never pose as another kind of identity
("control:user:alice"); anything else is recorded as "control:admin".
"""

from __future__ import annotations

import re
from typing import Any

_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}")


def control_actor(body: dict[str, Any]) -> str:
    """"control:<account>" from a control request's body's "actor", else "control:admin"."""
    actor = body.get("actor")
    return "control:" + (actor if isinstance(actor, str) and _ACCOUNT.fullmatch(actor) else "admin")
