"""De-identification profiles (DICOM PS3.15 Annex E): options, their validation, and pixel risk.

Pure decisions, no DICOM library: which Annex E options a share asks for (read from a [[route]]'s
``deid`` table or a share request's ``deid`` object with the config reader, so an unknown option is
refused with its key named), the private attributes a safe-list lets through, and which instances may
carry burned-in identifiers (held for a human, or refused, never sent silently).

    [[route]]
    name = "cancer-research"
    to = ["RES01"]
    purpose = "research"
    [route.deid]
    project = "lung-ai"                      # pseudonyms are consistent within a project
    retain_longitudinal_temporal = true      # dates shifted per patient (keyed), not removed
    retain_patient_characteristics = false
    retain_device_identity = false
    clean_descriptors = false
    clean_structured_content = false
    retain_safe_private = false
    safe_private = ["0019,xx0c,GEMS_ACQU_01"]  # gggg,xxee,private creator (needs retain_safe_private)
    pixel_risk = "hold"                      # hold (a human decides) or refuse
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from protocol.config_reader import MISSING, Table
from protocol.errors import ConfigError

_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SAFE_PRIVATE_RE = re.compile(r"^([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2}),(.{1,64})$")
MAX_SAFE_PRIVATE = 1000


class DeidOption(str, Enum):
    """The Annex E options (Table E.1-1 columns) a share may ask for; the code is the CID 7050 code."""

    RETAIN_LONGITUDINAL_TEMPORAL = "retain_longitudinal_temporal"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    RETAIN_SAFE_PRIVATE = "retain_safe_private"

    @property
    def code(self) -> tuple[str, str]:
        """(CID 7050 code value, meaning), for the output's De-identification Method Code Sequence."""
        return _CODES[self]


BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_CODES = {
    DeidOption.RETAIN_LONGITUDINAL_TEMPORAL: ("113107",
                                              "Retain Longitudinal Temporal Information Modified Dates Option"),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    DeidOption.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    DeidOption.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    DeidOption.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    DeidOption.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
}


class PixelRiskPolicy(str, Enum):
    HOLD = "hold"  # wait for a human: release with or without the risky instances, or refuse
    REFUSE = "refuse"  # the share is refused


@dataclass(frozen=True)
class SafePrivate:
    """A private attribute known to carry no identity: (group, element low byte) under its creator."""

    group: int
    element: int  # the low byte (xxee): the block the creator reserved is not known in advance
    creator: str

    def __str__(self) -> str:
        return f"{self.group:04x},xx{self.element:02x},{self.creator}"


def check_project(value: str, key: str) -> str:
    if not isinstance(value, str) or not _PROJECT_RE.match(value):
        raise ConfigError(f"{key}: a project is 1-64 characters of a-z, 0-9, '-' and '_' (got {value!r:.80})")
    return value


def _safe_private(value: str, key: str) -> str:
    m = _SAFE_PRIVATE_RE.match(value)
    if m is None or int(m.group(1), 16) % 2 == 0:
        raise ConfigError(f"{key}: expected 'gggg,xxee,Private Creator' with an odd group (got {value!r:.80})")
    return value


@dataclass(frozen=True)
class DeidProfile:
    """The Basic Application Level Confidentiality Profile plus the options asked for."""

    project: str
    options: frozenset[DeidOption] = frozenset()
    safe_private: tuple[SafePrivate, ...] = ()
    pixel_risk: PixelRiskPolicy = PixelRiskPolicy.HOLD

    def has(self, option: DeidOption) -> bool:
        return option in self.options

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"project": self.project, "pixel_risk": self.pixel_risk.value,
                                  "safe_private": [str(s) for s in self.safe_private]}
        out.update({o.value: o in self.options for o in DeidOption})
        return out

    def codes(self) -> list[tuple[str, str]]:
        return [BASIC_PROFILE_CODE] + [o.code for o in DeidOption if o in self.options]

    def fingerprint(self) -> str:
        """What decides the copy's bytes (the options and the safe-list; not the project, whose key is apart,
        nor the pixel-risk policy): a copy made with another profile gets other instance/series/study UIDs
        (its bytes differ), while the patient pseudonym and the date offset stay project-keyed (one patient
        stays one subject across the project's shares, for longitudinal research)."""
        text = "|".join(["v1", *sorted(o.value for o in self.options), *sorted(str(s) for s in self.safe_private)])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def read_profile(t: Table, default_project: str | None = None) -> DeidProfile:
    """A profile from a table (a [[route]]'s ``deid`` or a share request's ``deid``): every key checked,
    an unknown one refused naming it (ConfigError), so a misspelt option never means "not asked for"."""
    project = t.text("project", MISSING if default_project is None else default_project, check=check_project)
    options = frozenset(o for o in DeidOption if t.boolean(o.value, False))
    items = t.texts("safe_private", (), check=_safe_private)
    if len(items) > MAX_SAFE_PRIVATE:
        raise t.error("safe_private", f"at most {MAX_SAFE_PRIVATE} entries")
    safe = []
    for item in items:
        group, element, creator = item.split(",", 2)
        safe.append(SafePrivate(int(group, 16), int(element.removeprefix("xx"), 16), creator.strip()))
    if safe and DeidOption.RETAIN_SAFE_PRIVATE not in options:
        raise t.error("safe_private", "is only used with retain_safe_private = true")
    if DeidOption.RETAIN_SAFE_PRIVATE in options and not safe:
        raise t.error("retain_safe_private", "needs a safe_private list (nothing private is safe by default)")
    policy = PixelRiskPolicy(t.text("pixel_risk", PixelRiskPolicy.HOLD.value, tuple(p.value for p in PixelRiskPolicy)))
    t.finish()
    return DeidProfile(project, options, tuple(safe), policy)


def parse_profile(value: object, where: str = "deid", default_project: str | None = None) -> DeidProfile:
    """A profile from a JSON object (the control API's share request): same checks as the config file."""
    return read_profile(Table(value, where), default_project)


# -- pixel risk ------------------------------------------------------------------------------------

#: SOP classes whose pixels are screen captures or scanned documents (burned-in text is their nature)
SECONDARY_CAPTURE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame SC (single bit, byte)
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame SC (word, true colour)
})
#: encapsulated documents and surface models: always a risk (a PDF or CDA names the patient; an STL/OBJ/MTL
#: surface of a head reproduces a face), whatever Burned In Annotation says
ALWAYS_RISKY_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.104.3": "encapsulated STL (a surface model can reproduce a face)",
    "1.2.840.10008.5.1.4.1.1.104.4": "encapsulated OBJ (a surface model can reproduce a face)",
    "1.2.840.10008.5.1.4.1.1.104.5": "encapsulated MTL (a surface model's texture)",
}
#: SOP classes whose images usually carry annotation or are photographs (absent Burned In Annotation is a
#: risk even when Modality is missing or wrong): ultrasound, visible light (endoscopy, microscopy, photography,
#: ophthalmic photography, dermoscopy), video, X-ray angiography/fluoroscopy, CR, intra-oral and panoramic X-ray
RISKY_CLASS_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.6.": "ultrasound",  # US Image, Enhanced US Volume (.6.1, .6.2, .6.3)
    "1.2.840.10008.5.1.4.1.1.3.1": "ultrasound multi-frame",
    "1.2.840.10008.5.1.4.1.1.77.1.": "visible light image or video",  # endoscopic, microscopic, photographic, OP
    "1.2.840.10008.5.1.4.1.1.12.": "X-ray angiography or fluoroscopy",  # XA, Enhanced XA, XRF, 3D XA/XRF
    "1.2.840.10008.5.1.4.1.1.1": "computed radiography or digital X-ray",  # CR (.1), DX/MG/IO (.1.1, .1.2, .1.3)
}
#: modalities where burned-in annotation (or a face, a name on a label) is usual unless the device says otherwise
RISKY_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "IVUS", "OP", "OPT", "DMS", "PX",
                              "IO", "XA", "RF", "CR", "DX", "VL", "EPS", "OSS", "OAM", "BI"})
#: Conversion Type (0008,0064) values of captured screens and scanned documents
RISKY_CONVERSIONS = frozenset({"DV", "DI", "DF", "WSD", "SD", "SI", "SYN"})


def _risky_class(sop_class_uid: str) -> str | None:
    for prefix, what in RISKY_CLASS_PREFIXES.items():
        if sop_class_uid == prefix.rstrip(".") or sop_class_uid.startswith(prefix if prefix.endswith(".")
                                                                            else prefix + "."):
            return what
    return None


def pixel_risk(*, sop_class_uid: str, modality: str, burned_in: str | None, conversion_type: str = "",
               image_type: tuple[str, ...] = (), has_pixels: bool = True,
               recognizable_features: str | None = None) -> str | None:
    """Why an instance may carry identifiers in its pixels (a reason to hold it), or None.

    Encapsulated documents and surface models are always a risk; Recognizable Visual Features (0028,0302)
    = YES is a risk; Burned In Annotation (0028,0301) = YES is a risk; NO is trusted (but not over the two
    before); absent is a risk on the modalities and SOP classes where annotation or photographs are usual
    (judged by SOP class too, so an image without Modality is still caught).
    """
    always = ALWAYS_RISKY_CLASSES.get(sop_class_uid)
    if always is not None:
        return always
    if not has_pixels:
        return None
    if (recognizable_features or "").strip().upper() == "YES":
        return "Recognizable Visual Features is YES"
    answer = (burned_in or "").strip().upper()
    if answer == "YES":
        return "Burned In Annotation is YES"
    if answer == "NO":
        return None
    if sop_class_uid in SECONDARY_CAPTURE_CLASSES:
        return "secondary capture without Burned In Annotation"
    if modality.strip().upper() in RISKY_MODALITIES:
        return f"{modality.strip().upper()} image without Burned In Annotation"
    by_class = _risky_class(sop_class_uid)
    if by_class is not None:
        return f"{by_class} image without Burned In Annotation"
    if conversion_type.strip().upper() in RISKY_CONVERSIONS:
        return f"converted image ({conversion_type.strip().upper()}) without Burned In Annotation"
    if any(v.strip().upper() in {"SCREEN SHOT", "SCREENSHOT", "SECONDARY"} for v in image_type):
        return "screenshot or secondary image without Burned In Annotation"
    return None
