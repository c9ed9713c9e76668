"""[reconciliation] in node.toml: off by default, read and rendered back, bad values refused naming the key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshnode.config import NodeConfig, parse_config
from meshnode.gateway.config import GatewayConfig
from meshnode.gateway.reconcile_config import ReconciliationSettings
from protocol.errors import ConfigError


def _with(text: str) -> str:
    base = NodeConfig(org="RJ1").render()
    head, _, tail = base.partition("\n[reconciliation]\n")  # the rendered defaults, replaced
    rest = tail.split("\n\n", 1)[1] if "\n\n" in tail else ""
    return head + "\n" + text + "\n" + rest


def test_off_by_default_and_rendered() -> None:
    config = parse_config(NodeConfig(org="RJ1").render(), "node.toml")
    assert config.gateway.reconciliation == ReconciliationSettings()
    assert not config.gateway.reconciliation.enabled


def test_round_trip() -> None:
    settings = ReconciliationSettings(enabled=True, nhs_issuers=("NHS",), demographics_must_agree=False,
                                      local_issuer_oid="1.2.826.0.1.3680043.10.1")
    rendered = NodeConfig(org="RJ1", gateway=GatewayConfig(reconciliation=settings)).render()
    assert parse_config(rendered, "node.toml").gateway.reconciliation == settings
    assert replace(settings, enabled=False) != settings


@pytest.mark.parametrize("body, key", [
    ("[reconciliation]\nenabled = \"yes\"\n", "reconciliation.enabled"),
    ("[reconciliation]\nnhs_issuers = []\n", "reconciliation.nhs_issuers"),
    ("[reconciliation]\nnhs_issuers = [\"a\\\\b\"]\n", "reconciliation.nhs_issuers[0]"),
    ("[reconciliation]\nnhs_issuers = [\"" + "x" * 65 + "\"]\n", "reconciliation.nhs_issuers[0]"),
    ("[reconciliation]\nfhir_url = \"http://mpi\"\n", "reconciliation.fhir_url"),
    ("[reconciliation]\nlocal_issuer_oid = \"RGT\"\n", "reconciliation.local_issuer_oid"),
    ("[reconciliation]\nlocal_issuer_oid = \"1.02.3\"\n", "reconciliation.local_issuer_oid"),
    ("[reconciliation]\nlocal_issuer_oid = \"1." + "1" * 64 + "\"\n", "reconciliation.local_issuer_oid"),
])
def test_bad_values_name_the_key(body: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(_with(body), "node.toml")
