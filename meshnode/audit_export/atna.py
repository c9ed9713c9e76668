"""DICOM PS3.15 A.5 audit messages (the XML ATNA repositories store) for the spooled audit items.

A Security Alert entry becomes EventID 110113 with an EventTypeCode from the
A.5.3.11 list; a checkpoint becomes EventID 110100 Application Activity with
the signed (seq, hash) as ParticipantObjectDetail values, so a repository can
check it later with the node's public key (PS3.15 gives no code for a
checkpoint; the EventTypeCode is ours, codeSystemName "dicom-mesh"). Studies
appear as the hashed UID the audit log holds, never the UID in clear.
Built with the standard library's ElementTree: one element per line of the
schema, attributes escaped by it, no external entities ever parsed.
"""

from __future__ import annotations

import base64
import datetime
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from meshnode.storage.audit import EventCode
from meshnode.storage.audit_checkpoint import LABEL, SpoolItem

DCM = "DCM"
OURS = "dicom-mesh"

EVENT_NAMES = {
    EventCode.APPLICATION_ACTIVITY: "Application Activity",
    EventCode.AUDIT_LOG_USED: "Audit Log Used",
    EventCode.INSTANCES_ACCESSED: "DICOM Instances Accessed",
    EventCode.INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    EventCode.EXPORT: "Export",
    EventCode.IMPORT: "Import",
    EventCode.PATIENT_RECORD: "Patient Record",
    EventCode.QUERY: "Query",
    EventCode.SECURITY_ALERT: "Security Alert",
    EventCode.USER_AUTHENTICATION: "User Authentication",
}

# PS3.15 A.5.3.11 Security Alert event type codes (CID 4 Security Alert Type Codes), chosen by the
# entry's action. Whatever the mapping, the node's own action name follows as a second EventTypeCode.
NODE_AUTHENTICATION = ("110126", "Node Authentication")
SECURITY_CONFIGURATION = ("110129", "Security Configuration")
RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")
OBJECT_SECURITY = ("110135", "Object Security Attributes Changed")
USER_SECURITY = ("110137", "User Security Attributes Changed")

_ALERT_TYPES = (
    (("peer-", "hello", "certificate", "roster", "dimse-association"), NODE_AUTHENTICATION),
    (("audit-",), SECURITY_CONFIGURATION),
    (("user-", "token-"), USER_SECURITY),
    (("corrupt-block", "scrub", "verification-failed", "suspicious-instance", "sop-instance-uid-conflict",
      "manifest-"), OBJECT_SECURITY),
)


def alert_type(action: str) -> tuple[str, str]:
    for prefixes, code in _ALERT_TYPES:
        if action.startswith(prefixes):
            return code
    return RESTRICTED_FUNCTION  # unauthorised requests, refused announcements, DIMSE operations not permitted


@dataclass(frozen=True)
class AuditSource:
    """Who is speaking: the node."""

    peer_id: str
    org: str
    hostname: str
    public_key_hex: str


def iso_time(at_ms: int) -> str:
    when = datetime.datetime.fromtimestamp(at_ms / 1000, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def _detail(parent: ET.Element, kind: str, value: bytes) -> None:
    ET.SubElement(parent, "ParticipantObjectDetail", {"type": kind, "value": base64.b64encode(value).decode()})


_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: object) -> str:
    """Only characters XML 1.0 allows (Char production); anything else, a lone surrogate included, becomes
    U+FFFD. Details can quote what a peer sent: an alert must never fail to render because of it."""
    return _NOT_XML_CHAR.sub("\ufffd", str(text))


def audit_message(item: SpoolItem, source: AuditSource) -> bytes:
    """One spooled item as an AuditMessage, UTF-8, without an XML declaration or newlines."""
    p = item.payload
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": "E", "EventDateTime": iso_time(int(str(p["at_ms"]))),
        "EventOutcomeIndicator": str(int(str(p.get("outcome", 0)))),
    })
    if item.kind == "checkpoint":
        _code(ident, "EventID", str(int(EventCode.APPLICATION_ACTIVITY)), DCM, "Application Activity")
        _code(ident, "EventTypeCode", "audit-checkpoint", OURS, "Audit Checkpoint")
        ET.SubElement(ident, "EventOutcomeDescription").text = (
            f"audit chain entry {p['seq']} signed by the node key ({LABEL})")
    else:
        code = EventCode(int(str(p["code"])))
        _code(ident, "EventID", str(int(code)), DCM, EVENT_NAMES[code])
        if code is EventCode.SECURITY_ALERT:
            type_code, type_name = alert_type(str(p["action"]))
            _code(ident, "EventTypeCode", type_code, DCM, type_name)
        _code(ident, "EventTypeCode", _clean(p["action"])[:64] or "-", OURS, _clean(p["action"])[:64] or "-")
        if p.get("detail"):
            ET.SubElement(ident, "EventOutcomeDescription").text = _clean(p["detail"])

    node = ET.SubElement(root, "ActiveParticipant", {
        "UserID": source.peer_id, "AlternativeUserID": source.org, "UserIsRequestor": "false",
        "NetworkAccessPointID": source.hostname, "NetworkAccessPointTypeCode": "1",
    })
    _code(node, "RoleIDCode", "110150", DCM, "Application")
    actor = _clean(p.get("actor", ""))
    if actor and actor != source.peer_id:
        attrs = {"UserID": actor, "UserIsRequestor": "true"}
        if p.get("actor_org"):
            attrs["AlternativeUserID"] = _clean(p["actor_org"])
        ET.SubElement(root, "ActiveParticipant", attrs)

    src = ET.SubElement(root, "AuditSourceIdentification", {
        "AuditEnterpriseSiteID": source.org, "AuditSourceID": f"meshnode:{source.peer_id}"})
    _code(src, "AuditSourceTypeCode", "4", DCM, "Application Server")

    log_obj = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": f"{source.peer_id}/audit", "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "13"})  # system object, security resource
    _code(log_obj, "ParticipantObjectIDTypeCode", "audit-log", OURS, "dicom-mesh audit chain")
    _detail(log_obj, "seq", str(p["seq"]).encode())
    _detail(log_obj, "hash", bytes.fromhex(str(p["hash"])))
    if item.kind == "checkpoint":
        _detail(log_obj, "at_ms", str(p["at_ms"]).encode())
        _detail(log_obj, "rebase_from", str(p["rebase_from"]).encode())
        _detail(log_obj, "rebase_to", str(p["rebase_to"]).encode())
        _detail(log_obj, "signature", bytes.fromhex(str(p["signature"])))
        _detail(log_obj, "signer", bytes.fromhex(source.public_key_hex))
    if p.get("study"):
        study = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _clean(p["study"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})  # system object, report: PS3.15 A.5.2.5 for a study
        _code(study, "ParticipantObjectIDTypeCode", "110180", DCM, "Study Instance UID")
        _detail(study, "UIDHash", b"sha256, first 80 bits (meshnode hash_uid)")
    if p.get("manifest_id"):
        manifest = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _clean(p["manifest_id"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "20"})  # job
        _code(manifest, "ParticipantObjectIDTypeCode", "manifest", OURS, "Signed study manifest (CID)")
    out: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return out
