"""Data that came to this node only for research: never shared onward as care, nor listed for sending.

A study another organisation sent here under a research manifest (purpose research: pseudonymised data
for a project) is for that project. The portal's send page does not list it, and `Sender.share_study`
(every share: the page, the control API, the CLI) refuses to announce it onward: one rule, here.
"""

from __future__ import annotations

from collections.abc import Collection

from meshnode.storage.metadata import MetadataStore
from protocol.document import open_document
from protocol.manifest import Manifest, Purpose


def received_for_research_only(store: MetadataStore, study_uid: str, origins: Collection[str] | None = None) -> bool:
    """True when every manifest this node received for the study (from `origins` only, when given: the
    organisations whose instances would be shared) is a research one, and there is at least one."""
    rows = [m for m in store.received_manifests_of(study_uid) if origins is None or m.sender_org in origins]
    return bool(rows) and all(open_document(m.raw, Manifest).document.purpose is Purpose.RESEARCH for m in rows)
