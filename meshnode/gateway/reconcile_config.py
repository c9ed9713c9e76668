"""[reconciliation] in node.toml: patient reconciliation of received studies before the PACS sees them.

    [reconciliation]
    enabled = true                          # default false: studies are forwarded as they arrive
    nhs_issuers = ["2.16.840.1.113883.2.1.4.1", "NHS"]   # Issuer of Patient ID values meaning "NHS number"
    demographics_must_agree = true          # birth date, family name, sex must agree for an automatic match

Off by default: turning it on before the lookup table is loaded would hold
every received study in the queue. Off is today's behaviour (forwarded
unchanged, shown at once).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.config_reader import Table, defaults
from protocol.errors import ConfigError
from protocol.reconciliation import NHS_ISSUERS


@dataclass(frozen=True)
class ReconciliationSettings:
    enabled: bool = False
    nhs_issuers: tuple[str, ...] = tuple(sorted(NHS_ISSUERS))
    demographics_must_agree: bool = True


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
        f"demographics_must_agree = {'true' if s.demographics_must_agree else 'false'}\n")
