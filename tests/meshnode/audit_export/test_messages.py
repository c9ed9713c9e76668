"""What leaves the node: PS3.15 A.5 audit messages in RFC 5424 syslog messages in RFC 5425 frames."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshnode.audit_export.atna import AuditSource, audit_message
from meshnode.audit_export.config import parse_audit_repository
from meshnode.audit_export.syslog import frame, syslog_message
from meshnode.config import parse_config
from protocol.config_reader import Table
from protocol.errors import ConfigError
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.audit_checkpoint import CHECKPOINT_EVERY, AuditCheckpoint
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.records import hash_uid
from protocol.keys import SigningKey
from tests.meshnode.audit_export.helpers import parse_rfc5424, split_frames, validate

KEY = SigningKey(bytes(range(32)))
SOURCE = AuditSource(KEY.peer_id, "RGT", "node1.example", KEY.public_key.raw.hex())
NOW_MS = 1_767_225_600_123


def spooled() -> MemoryMetadataStore:
    store = MemoryMetadataStore()
    store.set_audit_key(KEY)
    store.append_audit([AuditEvent(EventCode.SECURITY_ALERT, "request-refused", Outcome.SERIOUS_FAILURE,
                                   actor="12D3KooWattacker", actor_org="EVIL", study=hash_uid("1.2.3"),
                                   manifest_id="bafkreiabc", detail="not a recipient <&> \"quoted\"")], NOW_MS)
    store.append_audit([AuditEvent(EventCode.INSTANCES_ACCESSED, "view", detail=str(i))
                        for i in range(CHECKPOINT_EVERY)], NOW_MS + 1)
    return store


def test_alerts_and_checkpoints_are_spooled_and_valid_a5_messages() -> None:
    items = spooled().audit_spool(100)
    assert [(i.kind, i.seq) for i in items] == [("entry", 1), ("checkpoint", 1), ("checkpoint", CHECKPOINT_EVERY)]
    for item in items:
        doc = validate(audit_message(item, SOURCE))
        assert doc.find("AuditSourceIdentification").get("AuditSourceID") == f"meshnode:{KEY.peer_id}"
    alert = validate(audit_message(items[0], SOURCE))
    ident = alert.find("EventIdentification")
    assert ident.find("EventID").get("csd-code") == "110113" and ident.find("EventID").get("codeSystemName") == "DCM"
    assert ident.get("EventOutcomeIndicator") == "8" and ident.get("EventDateTime") == "2026-01-01T00:00:00.123Z"
    assert ident.find("EventOutcomeDescription").text == 'not a recipient <&> "quoted"'
    users = [p.get("UserID") for p in alert.findall("ActiveParticipant")]
    assert users == [KEY.peer_id, "12D3KooWattacker"]
    objects = {o.get("ParticipantObjectID") for o in alert.findall("ParticipantObjectIdentification")}
    assert hash_uid("1.2.3") in objects and "bafkreiabc" in objects
    assert b"1.2.3" not in audit_message(items[0], SOURCE)  # the study UID never in clear


def test_checkpoint_message_lets_the_repository_check_the_signature() -> None:
    item = spooled().audit_spool(100)[2]
    doc = validate(audit_message(item, SOURCE))
    details = {d.get("type"): base64.b64decode(d.get("value")) for d in doc.iter("ParticipantObjectDetail")}
    checkpoint = AuditCheckpoint(int(details["seq"]), details["hash"], int(details["at_ms"]), details["signature"],
                                 int(details["rebase_from"]), int(details["rebase_to"]))
    assert checkpoint.seq == CHECKPOINT_EVERY and details["signer"] == KEY.public_key.raw
    assert checkpoint.valid_for(KEY.public_key)
    forged = AuditCheckpoint(checkpoint.seq, bytes(32), checkpoint.at_ms, checkpoint.signature)
    assert not forged.valid_for(KEY.public_key)


def test_rfc5424_envelope_and_rfc5425_framing() -> None:
    items = spooled().audit_spool(100)
    xml = audit_message(items[0], SOURCE)
    data = b"".join(frame(syslog_message(audit_message(i, SOURCE), at_ms=NOW_MS, outcome=8,
                                         hostname="node 1\n", procid="42")) for i in items)
    frames = split_frames(data)
    assert len(frames) == 3
    first = parse_rfc5424(frames[0])
    assert first.pri == 10 * 8 + 3 and first.app == "meshnode" and first.msgid == "IHE+RFC-3881"
    assert first.hostname == "node1" and first.timestamp == "2026-01-01T00:00:00.123Z"
    assert first.xml == xml


def test_config_section(tmp_path: Path) -> None:
    def section(values: dict[str, object]) -> Table:
        return Table({"audit_repository": values}, "")

    cfg = parse_audit_repository(section({"address": "arr.example:6514", "ca": "ca.pem"}), tmp_path)
    assert cfg is not None and (cfg.host, cfg.port, cfg.ca, cfg.tls_name) == ("arr.example", 6514,
                                                                              tmp_path / "ca.pem", "arr.example")
    cases: list[tuple[dict[str, object], str]] = [
                         ({"address": "arr.example"}, "host:port"),
                         ({"address": "arr.example:0", "ca": "x"}, "port in 1..65535"),
                         ({"address": "arr.example:6514"}, "audit_repository.ca: required"),
                         ({"address": 6514, "ca": "x"}, "audit_repository.address: expected a string"),
                         ({"address": "a:1", "ca": ""}, "audit_repository.ca: must be a file path"),
                         ({"address": "a:1", "ca": "x", "checkpoint_seconds": 0}, "0 is outside 1..86400"),
                         ({"address": "a:1", "ca": "x", "client_cert": "c"}, "go together"),
                         ({"address": "a:1", "ca": "x", "plaintext": True}, "audit_repository.plaintext: unknown key")]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_audit_repository(section(bad), tmp_path)
    text = '[node]\norg = "RGT"\n[audit_repository]\naddress = "127.0.0.1:6514"\nca = "/etc/arr.pem"\n'
    node = parse_config(text)
    assert node.audit_repository is not None and node.audit_repository.port == 6514
    with pytest.raises(ConfigError, match="^node.toml: audit_repository.ca: required"):
        parse_config('[node]\norg = "RGT"\n[audit_repository]\naddress = "127.0.0.1:6514"\n')


@settings(max_examples=60, deadline=None)
@example(detail="\ud800 lone surrogate", actor="\ufffe", study="")
@given(detail=st.text(st.characters(blacklist_categories=()), max_size=80),  # lone surrogates, U+FFFE, controls
       actor=st.text(st.characters(blacklist_categories=()), max_size=20), study=st.text(max_size=20))
def test_any_text_in_an_entry_still_renders_a_valid_message(detail: str, actor: str, study: str) -> None:
    from meshnode.storage.audit_checkpoint import SpoolItem

    payload: dict[str, object] = {"seq": 7, "at_ms": NOW_MS, "code": 110113, "action": "unauthorised-request",
                                  "outcome": 8, "actor": actor, "actor_org": "EVIL", "study": study,
                                  "manifest_id": "", "detail": detail, "hash": "00" * 32}
    xml = audit_message(SpoolItem(1, "entry", 7, payload), SOURCE)
    validate(xml)
    parse_rfc5424(syslog_message(xml, at_ms=NOW_MS, outcome=8, hostname="h", procid="1"))
