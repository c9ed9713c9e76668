"""protocol.deid: which instances are at pixel risk, and the profile's checks (pure)."""

from __future__ import annotations

import pytest

from protocol.deid import (
    DeidOption,
    DeidProfile,
    PixelRiskPolicy,
    parse_profile,
    pixel_risk,
)
from protocol.errors import ConfigError

CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.mark.parametrize(("sop_class", "modality", "burned_in", "extra", "risky"), [
    (CT, "CT", None, {}, False),  # absent on CT: not usual there
    (CT, "CT", "YES", {}, True),
    (CT, "CT", "yes ", {}, True),
    (US, "US", None, {}, True),  # absent on ultrasound: held
    (US, "US", "NO", {}, False),  # the device says there is none
    (SC, "OT", None, {}, True),  # secondary capture
    (SC, "CT", "NO", {}, False),
    (CT, "CT", None, {"conversion_type": "WSD"}, True),  # a captured workstation screen
    (CT, "CT", None, {"image_type": ("DERIVED", "SECONDARY", "SCREEN SHOT")}, True),
    (PDF, "DOC", "NO", {"has_pixels": False}, True),  # an encapsulated document: always
    (CT, "SR", None, {"has_pixels": False}, False),  # no pixels, no pixel risk
])
def test_pixel_risk(sop_class: str, modality: str, burned_in: str | None, extra: dict[str, object],
                    risky: bool) -> None:
    reason = pixel_risk(sop_class_uid=sop_class, modality=modality, burned_in=burned_in, **extra)  # type: ignore[arg-type]
    assert (reason is not None) is risky, reason


def test_profile_defaults_and_json() -> None:
    profile = parse_profile({"project": "p1"})
    assert profile == DeidProfile("p1") and profile.pixel_risk is PixelRiskPolicy.HOLD
    assert profile.codes() == [("113100", "Basic Application Confidentiality Profile")]
    full = parse_profile({"project": "p1", **{o.value: True for o in DeidOption if o.value != "retain_safe_private"}})
    assert parse_profile(full.to_json()) == full


@pytest.mark.parametrize(("value", "match"), [
    ({"project": "p", "retain_patient_characteristic": True}, r"deid\.retain_patient_characteristic: unknown key"),
    ({"project": "p", "clean_descriptors": "yes"}, r"deid\.clean_descriptors"),
    ({"project": "p", "safe_private": ["0019,xx0c,GEMS"]}, r"deid\.safe_private: is only used with"),
    ({"project": "p", "retain_safe_private": True, "safe_private": ["0018,xx0c,GEMS"]}, r"odd group"),
    ({"retain_device_identity": True}, r"deid\.project: required"),
    ("lung", r"deid: expected a table"),
])
def test_bad_profiles_are_refused_naming_the_key(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_profile(value)
