"""Conflict policies in node.toml: [[route]] on_conflict, [[pacs]] on_replace, [conflicts] default."""

from __future__ import annotations

import pytest

from meshnode.config import NodeConfig, parse_config
from protocol.conflict import ConflictPolicy
from protocol.errors import ConfigError

BASE = NodeConfig(org="RGT").render()
ROUTE = '[[route]]\nname = "stroke"\nto = ["RJ1"]\n'
PACS = '[[pacs]]\nname = "main"\nae_title = "P"\nhost = "127.0.0.1"\nport = 104\n'


def test_defaults_are_the_safe_ones() -> None:
    gw = parse_config(BASE + ROUTE + PACS).gateway
    assert gw.conflict_default is ConflictPolicy.REJECT
    assert gw.routes.by_name("stroke").on_conflict is ConflictPolicy.REJECT
    assert gw.pacs[0].on_replace == "hold"


def test_policies_parse_and_render_back() -> None:
    text = (BASE + '[conflicts]\ndefault = "keep-both"\n' + ROUTE + 'on_conflict = "replace"\n'
            + PACS + 'on_replace = "overwrite"\n')
    config = parse_config(text)
    gw = config.gateway
    assert gw.conflict_default is ConflictPolicy.KEEP_BOTH
    assert gw.routes.by_name("stroke").on_conflict is ConflictPolicy.REPLACE
    assert gw.pacs[0].on_replace == "overwrite"
    assert parse_config(config.render()) == config


def test_a_route_without_a_policy_takes_the_node_default() -> None:
    gw = parse_config(BASE + '[conflicts]\ndefault = "replace"\n' + ROUTE).gateway
    assert gw.routes.by_name("stroke").on_conflict is ConflictPolicy.REPLACE


@pytest.mark.parametrize(("extra", "message"), [
    (ROUTE + 'on_conflict = "overwrite"\n', r"route\[0\].on_conflict: 'overwrite' is not one of reject"),
    (PACS + 'on_replace = "delete"\n', r"pacs\[0\].on_replace: 'delete' is not one of hold, overwrite"),
    ('[conflicts]\ndefault = "ignore"\n', r"conflicts.default: 'ignore' is not one of"),
    ('[conflicts]\npolicy = "reject"\n', r"conflicts.policy"),
])
def test_bad_policies_are_refused_naming_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE + extra)
