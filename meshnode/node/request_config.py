"""node.toml's [[request_policy]] rules and [prior_query] section (protocol.request_policy says what they mean).

    [[request_policy]]
    from = ["RGT", "RJ1"]          # org codes, or "*"
    priority = ["urgent", "stat"]  # optional: any of these
    purpose = ["care"]             # optional: any of these
    action = "auto-approve"        # auto-approve | queue | refuse

    [prior_query]
    allow = ["RGT"]                # orgs whose prior-study queries are answered (default: none)
    per_minute = 60                # queries answered per asking org per minute (default 60)

    [requests]
    max_pending_per_org = 50       # undecided incoming requests one org may have here (default 50)
    retention_days = 90            # decided/expired requests are purged after this (the audit keeps them)

The priority and purpose a rule matches are the requester's claims (signed by the requesting node, not
checked by anyone): auto-approval is a trust in the named orgs, so a rule naming "*" may not auto-approve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.config_reader import Table
from protocol.errors import ConfigError
from protocol.manifest import Priority, Purpose
from protocol.request_policy import ANY_ORG, PolicyAction, RequestRule
from protocol.schema import check_org_code

#: rules one node may list (the first match decides)
MAX_RULES = 256


@dataclass(frozen=True)
class RequestConfig:
    rules: tuple[RequestRule, ...] = ()
    prior_query_allow: frozenset[str] = field(default_factory=frozenset)
    #: prior-study queries answered per asking org per minute
    prior_query_per_minute: int = 60
    #: undecided incoming requests one requesting org may have at this node (the excess is refused)
    max_pending_per_org: int = 50
    #: days a decided or expired request is kept before it is purged (the audit keeps its history)
    retention_days: int = 90


def _org(value: str, key: str) -> str:
    return value if value == ANY_ORG else check_org_code(value, key)


def parse_requests(root: Table) -> RequestConfig:
    rules: list[RequestRule] = []
    tables = root.tables("request_policy")
    if len(tables) > MAX_RULES:
        raise ConfigError(f"request_policy: at most {MAX_RULES} rules")
    for t in tables:
        orgs = t.texts("from", check=_org, single=True, nonempty=True)
        priorities = t.texts("priority", (), choices=tuple(p.value for p in Priority), single=True)
        purposes = t.texts("purpose", (), choices=tuple(p.value for p in Purpose), single=True)
        action = t.text("action", choices=tuple(a.value for a in PolicyAction))
        t.finish()
        if ANY_ORG in orgs and action == PolicyAction.AUTO_APPROVE.value:
            raise ConfigError(f'request_policy[{len(rules)}]: from = ["*"] cannot auto-approve: the priority and '
                              "purpose it matches are the requester's own claims; name the organisations you trust")
        rules.append(RequestRule(frozenset(orgs), PolicyAction(action), frozenset(Priority(p) for p in priorities),
                                 frozenset(Purpose(p) for p in purposes)))
    prior = root.table("prior_query")
    allow = prior.texts("allow", (), check=_org)
    per_minute = prior.integer("per_minute", 60, lo=1, hi=100_000)
    prior.finish()
    table = root.table("requests")
    max_pending = table.integer("max_pending_per_org", 50, lo=1, hi=100_000)
    retention = table.integer("retention_days", 90, lo=1, hi=36_500)
    table.finish()
    return RequestConfig(tuple(rules), frozenset(allow), per_minute, max_pending, retention)
