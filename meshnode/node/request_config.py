"""node.toml's [[request_policy]] rules and [prior_query] section (protocol.request_policy says what they mean).

    [[request_policy]]
    from = ["RGT", "RJ1"]          # org codes, or "*"
    priority = ["urgent", "stat"]  # optional: any of these
    purpose = ["care"]             # optional: any of these
    action = "auto-approve"        # auto-approve | queue | refuse

    [prior_query]
    allow = ["RGT"]                # orgs whose prior-study queries are answered (default: none)
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
        rules.append(RequestRule(frozenset(orgs), PolicyAction(action), frozenset(Priority(p) for p in priorities),
                                 frozenset(Purpose(p) for p in purposes)))
    prior = root.table("prior_query")
    allow = prior.texts("allow", (), check=_org)
    prior.finish()
    return RequestConfig(tuple(rules), frozenset(allow))
