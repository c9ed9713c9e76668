"""node.toml's [[request_policy]] and [prior_query] (meshnode.node.request_config)."""

from __future__ import annotations

import pytest

from meshnode.config import parse_config
from protocol.errors import ConfigError
from protocol.manifest import Priority, Purpose
from protocol.request_policy import PolicyAction

BASE = '[node]\norg = "RJ1"\n'


def test_rules_and_the_prior_query_allow_list_are_read_in_order() -> None:
    config = parse_config(BASE + """
[[request_policy]]
from = ["RGT", "RAJ"]
priority = ["urgent", "stat"]
purpose = "care"
action = "auto-approve"

[[request_policy]]
from = "*"
purpose = ["research"]
action = "refuse"

[prior_query]
allow = ["RGT"]
""")
    first, second = config.requests.rules
    assert first.orgs == {"RGT", "RAJ"} and first.action is PolicyAction.AUTO_APPROVE
    assert first.priorities == {Priority.URGENT, Priority.STAT} and first.purposes == {Purpose.CARE}
    assert second.orgs == {"*"} and second.action is PolicyAction.REFUSE and not second.priorities
    assert config.requests.prior_query_allow == {"RGT"}


def test_the_default_is_queue_everything_and_answer_no_prior_query() -> None:
    config = parse_config(BASE)
    assert config.requests.rules == () and config.requests.prior_query_allow == frozenset()


@pytest.mark.parametrize("bad", [
    '[[request_policy]]\nfrom = ["rgt"]\naction = "queue"\n',
    '[[request_policy]]\nfrom = ["RGT"]\naction = "approve-everything"\n',
    '[[request_policy]]\nfrom = []\naction = "queue"\n',
    '[[request_policy]]\nfrom = ["RGT"]\naction = "queue"\ngroup = "stroke"\n',
    '[prior_query]\nallow = ["not an org"]\n',
])
def test_a_bad_policy_names_its_key(bad: str) -> None:
    with pytest.raises(ConfigError, match="request_policy|prior_query"):
        parse_config(BASE + bad)


def test_a_rule_for_any_org_may_not_auto_approve() -> None:
    """Priority and purpose are the requester's claims: "*" with auto-approve would send studies to any
    certified org that says "stat" (review 3 finding 3)."""
    with pytest.raises(ConfigError, match="cannot auto-approve"):
        parse_config(BASE + '[[request_policy]]\nfrom = "*"\npriority = ["stat"]\naction = "auto-approve"\n')


def test_request_limits_have_defaults_and_are_read() -> None:
    config = parse_config(BASE)
    assert (config.requests.max_pending_per_org, config.requests.retention_days,
            config.requests.prior_query_per_minute) == (50, 90, 60)
    config = parse_config(BASE + "[requests]\nmax_pending_per_org = 3\nretention_days = 7\n"
                          "[prior_query]\nper_minute = 5\n")
    assert (config.requests.max_pending_per_org, config.requests.retention_days,
            config.requests.prior_query_per_minute) == (3, 7, 5)
    with pytest.raises(ConfigError):
        parse_config(BASE + "[requests]\nmax_pending_per_org = 0\n")
