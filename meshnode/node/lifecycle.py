"""The node's driver of protocol.lifecycle: every change of a stored manifest's state goes through `move`.

Each function runs on the database thread (inside `ctx.db.run`), so reading the state, deciding the move and
writing the new state happen with no other write in between.
"""

from __future__ import annotations

from meshnode.storage.metadata import MetadataStore
from protocol import lifecycle
from protocol.cid import CID
from protocol.errors import NotFoundError
from protocol.lifecycle import ManifestEvent, ManifestState, Side


def next_state(store: MetadataStore, manifest_id: CID, event: ManifestEvent) -> ManifestState:
    """The state `event` moves the stored manifest to (nothing written). Raises LocalProtocolError for a move
    protocol.lifecycle does not allow, NotFoundError for a manifest not stored."""
    row = store.manifest(manifest_id)
    if row is None:
        raise NotFoundError(f"no manifest {manifest_id}")
    return lifecycle.advance(Side(row.direction), row.state, event)


def move(store: MetadataStore, manifest_id: CID, event: ManifestEvent) -> ManifestState:
    """Apply `event` to the stored manifest and store its new state (nothing written when refused)."""
    state = next_state(store, manifest_id, event)
    store.set_manifest_state(manifest_id, state)
    return state
