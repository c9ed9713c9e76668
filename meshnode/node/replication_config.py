"""node.toml's [replication] section: several nodes of one organisation (docs/operators.md, "High availability").

    [replication]
    mode = "all"                # what this node copies from its organisation's other nodes: all | urgent | nothing
    takeover_seconds = 30       # how long a node waits for the sibling chosen to fetch a study before fetching it

Every node of an organisation has its own key and certificate under the same org code. An announced study is
fetched from the sender by one of them (protocol.org_fetch ranks them per study); the others copy it from that
sibling (`mode`), or take over when it is down or makes no progress for `takeover_seconds`. A study this node
ingests is copied by its siblings the same way, so that a recipient can fetch it from any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.config_reader import Table
from protocol.replication import DEFAULT_SCOPE, DEFAULT_TAKEOVER_SECONDS, TAKEOVER_SECONDS_RANGE, ReplicationScope


@dataclass(frozen=True)
class ReplicationConfig:
    mode: ReplicationScope = DEFAULT_SCOPE
    takeover_seconds: int = DEFAULT_TAKEOVER_SECONDS


def parse_replication(root: Table) -> ReplicationConfig:
    d = ReplicationConfig()
    t = root.table("replication")
    config = ReplicationConfig(
        mode=ReplicationScope(t.text("mode", d.mode.value, choices=tuple(m.value for m in ReplicationScope))),
        takeover_seconds=t.integer("takeover_seconds", d.takeover_seconds, *TAKEOVER_SECONDS_RANGE),
    )
    t.finish()
    return config
