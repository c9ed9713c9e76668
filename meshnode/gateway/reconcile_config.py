"""[reconciliation] in node.toml: patient reconciliation of received studies before the PACS sees them.

    [reconciliation]
    enabled = true                          # default false: studies are forwarded as they arrive
    nhs_issuers = ["2.16.840.1.113883.2.1.4.1", "NHS"]   # Issuer of Patient ID values meaning "NHS number"
    demographics_must_agree = true          # birth date, family and given names, sex must agree
    local_issuer_oid = "1.2.826.0.1.3680043.10.1"   # the local assigning authority's OID: the forwarded copy's
                                            # Issuer of Patient ID Qualifiers (default "": none; the sender's
                                            # are moved to Other Patient IDs either way)

Off by default: turning it on before the lookup table is loaded would hold
every received study in the queue. Off is today's behaviour (forwarded
unchanged, shown at once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.config_reader import Table, defaults
from protocol.errors import ConfigError
from protocol.reconciliation import NHS_ISSUERS


@dataclass(frozen=True)
class ReconciliationSettings:
    enabled: bool = False
    nhs_issuers: tuple[str, ...] = tuple(sorted(NHS_ISSUERS))
    demographics_must_agree: bool = True
    local_issuer_oid: str = ""


_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def _oid(value: str, key: str) -> str:
    value = value.strip()
    if value and (len(value) > 64 or not _OID.fullmatch(value)):
        raise ConfigError(f"{key}: an ISO OID (digits and dots, like 1.2.826.0.1.3680043.10.1; at most 64)")
    return value


def _issuer(value: str, key: str) -> str:
    if not value.strip() or len(value) > 64 or "\\" in value or not value.isprintable():
        raise ConfigError(f"{key}: an Issuer of Patient ID (1-64 printable characters, no backslash)")
    return value.strip()


def parse_reconciliation(root: Table) -> ReconciliationSettings:
    t = root.table("reconciliation")
    d = defaults(ReconciliationSettings)
    settings = ReconciliationSettings(
        enabled=t.boolean("enabled", d["enabled"]),
        nhs_issuers=t.texts("nhs_issuers", d["nhs_issuers"], check=_issuer, nonempty=True),
        demographics_must_agree=t.boolean("demographics_must_agree", d["demographics_must_agree"]),
        local_issuer_oid=_oid(t.text("local_issuer_oid", d["local_issuer_oid"]), "reconciliation.local_issuer_oid"),
    )
    t.finish()
    return settings


def render_reconciliation(s: ReconciliationSettings) -> str:
    issuers = ", ".join(f'"{i}"' for i in s.nhs_issuers)
    return (
        "\n[reconciliation]\n"
        "# Received studies are matched to the local patient record by NHS number before the PACS sees\n"
        "# them (meshnode patients import FILE.csv loads the lookup table; meshnode reconcile list shows\n"
        "# what waits for a decision). Off: forwarded as they arrive.\n"
        f"enabled = {'true' if s.enabled else 'false'}\n"
        f"nhs_issuers = [{issuers}]\n"
        f"demographics_must_agree = {'true' if s.demographics_must_agree else 'false'}\n"
        "# The local assigning authority's OID, written as the forwarded copy's Issuer of Patient ID\n"
        "# Qualifiers (empty: none; the sender's qualifiers move to Other Patient IDs either way).\n"
        f'local_issuer_oid = "{s.local_issuer_oid}"\n')
