"""A received revision changes an instance this node already forwarded to a PACS: overwrite, or hold for a human.

A PACS keeps one version per SOP Instance UID. Orthanc, by default, answers a second C-STORE of a
UID it holds with success and keeps the old version (its OverwriteInstances option is false), so
forwarding the new bytes and reporting "forwarded" would be a lie. Per [[pacs]] destination:

- on_replace = "hold" (the default): the new version is not sent; its forward item is FAILED with
  HELD_PREFIX as its error (the inbox shows "held"), and a conflict (kind pacs:<destination>, both
  digests) waits in the conflict queue. A human decides: replace (the item is queued again and sent:
  for a PACS that overwrites, or after removing the old version from it by hand) or discard;
- on_replace = "overwrite": the new version is sent (the PACS is configured to overwrite, e.g. Orthanc
  with "OverwriteInstances": true); the audit says it replaced a forwarded version.

Which version was forwarded is known from the versions the node's catalog superseded (received
revisions are recorded with the replace policy, meshnode.node.runtime) and the PACS queue's delivered
items (by ref: UID and digest).
"""

from __future__ import annotations

import logging

from meshnode.gateway.config import PacsDestination
from meshnode.storage.conflicts import KIND_STORE, PACS_KIND_PREFIX, ConflictRow
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import hash_uid
from protocol.conflict import ConflictPolicy, ConflictState
from protocol.manifest import Manifest
from protocol.outbox import DeliveryState

log = logging.getLogger(__name__)

#: every held forward item's error starts so (the inbox counts them as held; `gateway retry` skips them)
HELD_MARK = "held: "
HELD_PREFIX = HELD_MARK + "a new version of an instance already forwarded to this PACS"
#: a received instance held in this node's conflict queue on arrival (its UID is held here from another
#: lineage, meshnode.storage.conflicts): not forwarded until a person decides (replace requeues it)
HELD_HERE = HELD_MARK + "its SOP Instance UID is held here with other bytes (decide with `meshnode conflicts`)"
OVERWRITE = "overwrite"


def forwarded_version(store: MetadataStore, queue: str, sop_instance_uid: str, digest: bytes) -> bytes | None:
    """The digest of another version of this UID that was forwarded to this queue's PACS, if any."""
    for old in store.superseded_digests(sop_instance_uid):
        if old != digest and store.queue_rows(queue, ref=f"{sop_instance_uid} {old.hex()}",
                                              states=(DeliveryState.DELIVERED,)):
            return old
    return None


def not_forwarded(discarded: bool, decided_by: str) -> str:
    """A forward item's error for a received instance a person discarded or kept under a new UID."""
    return f"not forwarded: {'discarded' if discarded else 'kept under a new UID'} by {decided_by}"


def held_on_arrival(store: MetadataStore) -> dict[tuple[str, bytes], str]:
    """(SOP Instance UID, digest) -> forward item error, for the newcomers of the conflict queue (kind store)
    this node does not hold under their UID: pending (HELD_HERE), discarded or kept under a new UID. Any
    manifest listing these bytes (the one they came with, or a later revision sending them again, which the
    store takes as a duplicate) is not forwarded for them."""
    out: dict[tuple[str, bytes], str] = {}
    for r in store.conflicts():
        key = (r.sop_instance_uid, r.newcomer_digest)
        if r.kind != KIND_STORE:
            continue
        if r.state is ConflictState.PENDING:
            out[key] = HELD_HERE
        elif r.state in (ConflictState.DISCARDED, ConflictState.KEPT_BOTH):
            out.setdefault(key, not_forwarded(r.state is ConflictState.DISCARDED, r.decided_by))
    return out


def held_reason(store: MetadataStore, dest: PacsDestination, manifest_id: str, manifest: Manifest,
                sop_instance_uid: str, digest: bytes, old: bytes, now_ms: int) -> str:
    """For an instance replacing a forwarded version: "" to send it (on_replace overwrite), or the held
    item's error, with the conflict recorded (idempotent: a second call finds it pending)."""
    if dest.on_replace == OVERWRITE:
        log.warning("PACS %s: %s replaces a version forwarded earlier; sent as an overwrite (on_replace)",
                    dest.name, hash_uid(sop_instance_uid))
        return ""
    row = ConflictRow(0, PACS_KIND_PREFIX + dest.name, sop_instance_uid, manifest.study_uid, old, digest,
                      ConflictPolicy.REJECT, ConflictState.PENDING, manifest.sender_org, "", now_ms,
                      manifest_id=manifest_id)
    conflict_id = store.add_forward_conflict(row, [], now_ms)
    if conflict_id is not None:
        log.warning("PACS %s: %s replaces a version forwarded earlier; held (conflict %d)", dest.name,
                    hash_uid(sop_instance_uid), conflict_id)
    return f"{HELD_PREFIX} (decide with `meshnode conflicts`)"
