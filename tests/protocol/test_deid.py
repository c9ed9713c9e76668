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


@pytest.mark.parametrize(("sop_class", "modality", "burned_in", "extra"), [
    (US, "", None, {}),  # ultrasound without Modality: judged by its SOP class (before: not held)
    ("1.2.840.10008.5.1.4.1.1.3.1", "", None, {}),  # US multi-frame
    ("1.2.840.10008.5.1.4.1.1.6.2", "", None, {}),  # enhanced US volume
    ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "OP", None, {}),  # ophthalmic photography
    ("1.2.840.10008.5.1.4.1.1.77.1.4", "XC", None, {}),  # VL photographic
    ("1.2.840.10008.5.1.4.1.1.77.1.1.1", "", None, {}),  # video endoscopic
    ("1.2.840.10008.5.1.4.1.1.77.1.2", "", None, {}),  # VL microscopic
    ("1.2.840.10008.5.1.4.1.1.77.1.4", "DMS", None, {}),  # dermoscopy
    ("1.2.840.10008.5.1.4.1.1.1.1", "PX", None, {}),  # panoramic X-ray
    ("1.2.840.10008.5.1.4.1.1.1.3", "IO", None, {}),  # intra-oral
    ("1.2.840.10008.5.1.4.1.1.12.1", "XA", None, {}),
    ("1.2.840.10008.5.1.4.1.1.12.2", "RF", None, {}),
    ("1.2.840.10008.5.1.4.1.1.1", "CR", None, {}),
    ("1.2.840.10008.5.1.4.1.1.104.3", "M3D", "NO", {"has_pixels": False}),  # encapsulated STL: a face
    ("1.2.840.10008.5.1.4.1.1.104.4", "M3D", None, {"has_pixels": False}),  # OBJ
    ("1.2.840.10008.5.1.4.1.1.104.5", "M3D", None, {"has_pixels": False}),  # MTL
    (CT, "CT", "NO", {"recognizable_features": "YES"}),  # a face rendered from a head CT
    ("1.2.840.10008.5.1.4.1.1.2.1", "CT", None, {"recognizable_features": "YES "}),
])
def test_review_finding_7_pixel_risk_gaps_are_held(sop_class: str, modality: str, burned_in: str | None,
                                                    extra: dict[str, object]) -> None:
    reason = pixel_risk(sop_class_uid=sop_class, modality=modality, burned_in=burned_in, **extra)  # type: ignore[arg-type]
    assert reason is not None


@pytest.mark.parametrize("sop_class", [CT, "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
                                       "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.13"])
def test_cross_sectional_images_without_burned_in_annotation_are_not_held(sop_class: str) -> None:
    assert pixel_risk(sop_class_uid=sop_class, modality="", burned_in=None) is None


def test_the_profile_fingerprint_follows_the_bytes_not_the_project_or_policy() -> None:
    base = DeidProfile("p1")
    assert base.fingerprint() == DeidProfile("p2", pixel_risk=PixelRiskPolicy.REFUSE).fingerprint()
    assert base.fingerprint() != DeidProfile("p1", frozenset({DeidOption.CLEAN_DESCRIPTORS})).fingerprint()
    safe = parse_profile({"project": "p1", "retain_safe_private": True, "safe_private": ["0019,xx0c,GEMS"]})
    other = parse_profile({"project": "p1", "retain_safe_private": True, "safe_private": ["0019,xx0d,GEMS"]})
    assert safe.fingerprint() != other.fingerprint()
