"""[patient_access]: off by default, its policies' defaults, and every bad value refused naming the key."""

from __future__ import annotations

import pytest

from meshnode.config import parse_config
from meshnode.patient.config import PatientAccessConfig
from protocol.errors import ConfigError

BASE = """
[node]
org = "RXX"
[notify]
host = "smtp.example.nhs.uk"
from_address = "mesh@rxx.nhs.uk"
org_address = "pacs@rxx.nhs.uk"
"""


def test_off_unless_enabled() -> None:
    assert parse_config(BASE).patient_access == PatientAccessConfig()
    assert not PatientAccessConfig().enabled


def test_defaults_when_on() -> None:
    c = parse_config(BASE + '[patient_access]\nenabled = true\npublic_url = "https://images.rxx.nhs.uk/"\n')
    pa = c.patient_access
    assert pa.enabled and pa.public_url == "https://images.rxx.nhs.uk" and not pa.own_listener
    assert (pa.share_days, pa.code_attempts, pa.code_minutes, pa.allow_forward) == (14, 3, 10, True)
    assert pa.max_pending_upload_requests == 200


def test_render_round_trips() -> None:
    c = parse_config(BASE + '[patient_access]\nenabled = true\npublic_url = "https://i.rxx.nhs.uk"\n'
                            'listen = "0.0.0.0:8732"\nshare_days = 7\nallow_forward = false\n'
                            'sms_gateway_url = "https://sms.example/send"\nsms_secret = "0123456789abcdef"\n'
                            'max_pending_upload_requests = 50\n')
    again = parse_config(c.render())
    assert again.patient_access == c.patient_access
    assert again.patient_access.max_pending_upload_requests == 50
    assert again.patient_access.own_listener


@pytest.mark.parametrize(("extra", "key"), [
    ('enabled = true\n', "public_url"),
    ('enabled = true\npublic_url = "ftp://x"\n', "public_url"),
    ('listen = "nohost"\n', "listen"),
    ('share_days = 30\nmax_share_days = 10\n', "share_days"),
    ('code_attempts = 0\n', "code_attempts"),
    ('sms_gateway_url = "https://sms.example/send"\nsms_secret = "short"\n', "sms_secret"),
    ('tls_certificate = "c.pem"\n', "tls_key"),
    ('trusted_proxies = ["not-an-ip"]\n', "trusted_proxies"),
    ('colour = "blue"\n', "colour"),
    ('max_pending_upload_requests = -1\n', "max_pending_upload_requests"),
])
def test_bad_values_name_the_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(BASE + "[patient_access]\n" + extra)


def test_needs_the_smtp_relay() -> None:
    with pytest.raises(ConfigError, match="notify"):
        parse_config('[node]\norg = "RXX"\n[patient_access]\nenabled = true\npublic_url = "https://i.example"\n')
