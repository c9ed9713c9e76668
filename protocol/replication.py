"""Several nodes of one organisation: which of its studies a node copies from a sibling, and who a sibling is.

Every node of an organisation has its own key and certificate under the same org code. A node that signs
a manifest offers it to its siblings (the other nodes of its org in the directory); each sibling stores the
manifest as its org's own sent manifest (it may then serve the study, accept its receipts and recall it)
and copies the blocks from the node that offered it when its [replication] mode covers the study's
priority. One decision, shared by the node (meshnode.node.replication) and the simulator.

A sibling copy is no new grant: protocol.access lets a node read a manifest's blocks from another node
only when requester, serving node and the manifest's signer are all of one org (`is_sibling`), so a node
of another org, a revoked sibling (no valid certificate) or a node presenting another org's manifest
gains nothing from it.
"""

from __future__ import annotations

import enum

from protocol.manifest import Priority


class ReplicationScope(str, enum.Enum):
    """What a node copies from its siblings (node.toml [replication] mode)."""

    ALL = "all"
    URGENT = "urgent"  # stat and urgent studies only
    NOTHING = "nothing"


#: node.toml [replication]'s defaults and the range of takeover_seconds (whole seconds), shared by the node's
#: config reader (meshnode/node/replication_config.py) and meshsim's [ha] (simulations/scenario/parse.py)
DEFAULT_SCOPE = ReplicationScope.ALL
DEFAULT_TAKEOVER_SECONDS = 30
TAKEOVER_SECONDS_RANGE = (1, 86400)


#: Priorities the urgent scope copies.
URGENT_PRIORITIES = frozenset({Priority.STAT, Priority.URGENT})


def copies(scope: ReplicationScope | str, priority: Priority) -> bool:
    """Whether a node with this scope copies the blocks of a sibling's study of this priority."""
    scope = ReplicationScope(scope)
    if scope is ReplicationScope.ALL:
        return True
    if scope is ReplicationScope.URGENT:
        return priority in URGENT_PRIORITIES
    return False


def is_sibling(own_org: str, requester_org: str, signer_org: str) -> bool:
    """A requester may use the sibling path only when it, this node and the manifest's signer are one org."""
    return bool(own_org) and own_org == requester_org == signer_org
