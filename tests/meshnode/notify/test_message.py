"""The arrival email's text, and the inbox lines `meshnode inbox` prints for attention and note."""

from __future__ import annotations

from meshnode.cli.node_cmds import _inbox_lines
from meshnode.notify.message import Arrival, arrival_message, inbox_link
from meshnode.notify.recipient import Recipient, RecipientKind

ARRIVAL = Arrival("bafymanifest", "RGT", "", "stat", "care", 2, 40, "dr.jones", False, 1_767_225_600)


def test_the_link_to_the_inbox_row() -> None:
    assert inbox_link("https://gw.rxx.nhs.uk/", "bafy1") == "https://gw.rxx.nhs.uk/ui/#inbox?manifest=bafy1"
    assert inbox_link("", "bafy1") == ""


def test_without_a_public_url_or_a_note() -> None:
    msg = arrival_message(ARRIVAL, Recipient("pacs-team@rxx.nhs.uk", RecipientKind.ORGANISATION),
                          from_address="mesh@rxx.nhs.uk", own_org="RXX", public_url="")
    body = msg.get_content()
    assert "Open it in the node's inbox (web UI)." in body and "http" not in body
    assert "note" not in body.lower()
    # named, but not somebody this node can email: the organisation is told whom it is for
    assert "For the attention of: a named person (see the inbox)" in body and "dr.jones" not in body
    assert msg["Date"] == "Thu, 01 Jan 2026 00:00:00 +0000"  # GMT, as the SMTP policy writes it
    assert msg["Message-ID"] == "<bafymanifest.rxx@rxx.nhs.uk>"
    assert msg["Subject"] == "[dicom-mesh] STAT study from RGT has arrived"


def test_meshnode_inbox_prints_attention_and_note() -> None:
    row = {"manifest_id": "bafy" + "x" * 40, "sender_org": "RGT", "priority": "urgent", "state": "receipted",
           "blocks_done": 4, "blocks_total": 4, "instances": 4, "served_by": {}, "attention": "dr.jones",
           "note": "line one\nline two"}
    lines = _inbox_lines([row])
    assert lines[1:] == ["    for the attention of dr.jones", "    note: line one", "    note: line two"]


def test_the_senders_attention_text_never_reaches_the_email() -> None:
    """Review 2 finding 5: the sender wrote the attention text; the email carries only what this node resolved."""
    hostile = "SMITH, John NHS 943 476 5919 DOB 1960-01-01 - sign in at https://rgt-portal.evil.example"
    arrival = Arrival("bafymanifest", "RGT", "", "stat", "care", 2, 40, hostile, False, 1_767_225_600)
    for recipient, shown in ((Recipient("pacs-team@rxx.nhs.uk", RecipientKind.ORGANISATION),
                              "a named person (see the inbox)"),
                             (Recipient("a.jones@rxx.nhs.uk", RecipientKind.USER), "a.jones@rxx.nhs.uk")):
        msg = arrival_message(arrival, recipient, from_address="mesh@rxx.nhs.uk", own_org="RXX",
                              public_url="https://gw.rxx.nhs.uk")
        text = msg.as_string()
        assert f"For the attention of: {shown}" in msg.get_content()
        for part in ("SMITH", "943 476 5919", "1960", "evil.example"):
            assert part not in text, part
