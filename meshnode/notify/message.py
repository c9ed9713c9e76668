"""The arrival email: who sent what priority, how much, and a link to the inbox row. No patient identifiers.

`arrival_message` is given only what it may print (it never sees the manifest's summary, the study's
attributes or the sender's note), so nothing identifying a patient can reach an email: not the name,
patient ID, NHS number, birth date, study description, accession or Study UID. The sender's note is free
text that may name the patient: the email says there is one, and the inbox shows it to a signed-in user.
The sender's `attention` text is free text too (it could hold a patient's name or a phishing link): the
email prints only what this node resolved it to (a user's or an allow-listed address), or "a named person
(see the inbox)" when it went to the organisation's address.

Headers are written by the standard library's `email` package with the SMTP policy, which refuses a line
break in a header value; the values come from checked places (addresses: meshnode.notify.recipient; org
codes: protocol.schema; the manifest ID: a CID), so nothing the sender wrote becomes a header.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from meshnode.notify.recipient import Recipient, RecipientKind, domain_of


@dataclass(frozen=True)
class Arrival:
    """What an arrival email says: counts and names of organisations, never patient data."""

    manifest_id: str
    sender_org: str
    sender_org_name: str  # from the sender's certificate ("" if unknown)
    priority: str
    purpose: str
    series: int
    instances: int
    attention: str  # the person the sender named ("" for none): a member of staff, not a patient
    has_note: bool
    at: float  # when it arrived (unix time)


def inbox_link(public_url: str, manifest_id: str) -> str:
    """The inbox row of a received manifest in the web UI ("" without a public URL)."""
    return f"{public_url.rstrip('/')}/ui/#inbox?manifest={manifest_id}" if public_url else ""


def arrival_message(arrival: Arrival, recipient: Recipient, *, from_address: str, own_org: str,
                    public_url: str) -> EmailMessage:
    sender = (f"{arrival.sender_org_name} ({arrival.sender_org})" if arrival.sender_org_name
              else arrival.sender_org)
    priority = arrival.priority.upper()
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_address
    msg["To"] = recipient.address
    msg["Subject"] = f"[dicom-mesh] {priority} study from {arrival.sender_org} has arrived"
    msg["Date"] = formatdate(arrival.at, usegmt=True)
    # the same on every retry: a mail system that sees it twice can tell
    msg["Message-ID"] = f"<{arrival.manifest_id}.{own_org.lower()}@{domain_of(from_address)}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies to the node
    lines = [f"A {priority} study from {sender} has arrived at {own_org} and is verified complete.", ""]
    if arrival.attention:  # never the sender's words: only what this node resolved them to
        lines.append("For the attention of: " + (recipient.address if recipient.kind is not RecipientKind.ORGANISATION
                                                 else "a named person (see the inbox)"))
    lines += [f"Priority: {priority}", f"Purpose: {arrival.purpose}",
              f"Series: {arrival.series}", f"Instances: {arrival.instances}",
              f"Arrived: {formatdate(arrival.at, usegmt=True)}", ""]
    if arrival.has_note:
        lines += ["The sender added a note: read it in the inbox.", ""]
    link = inbox_link(public_url, arrival.manifest_id)
    lines.append(f"Open it in the inbox: {link}" if link else "Open it in the node's inbox (web UI).")
    lines += ["", f"Manifest {arrival.manifest_id}",
              "This email has no patient details; sign in to see them. Do not reply: nobody reads replies."]
    msg.set_content("\n".join(lines) + "\n")
    return msg
