"""The simulator's per-study and per-transfer state (one Transfer per study and recipient)."""

from __future__ import annotations

from enum import IntEnum

from protocol.access import Share
from protocol.cid import CID
from protocol.lifecycle import ManifestState
from simulations.engine.wire_sizes import instance_blocks


class Status(IntEnum):
    IN_FLIGHT = 0
    DELIVERED = 1
    FAILED = 2


_PAD = bytes(19)
_BLOCK0 = bytes(4) + _PAD


class Study:
    __slots__ = ("id", "time", "sender", "recipients", "modality", "priority", "images", "nbytes", "image_bytes",
                 "transfers", "manifest_id", "cids", "sizes", "held", "recorded", "bogus", "hub_stored",
                 "shared_at", "access", "state", "per_image")

    def __init__(self, sid: int, time: float, sender: int, recipients: list[int], modality: int, priority: int,
                 images: int, nbytes: float, image_bytes: float, recorded: bool, bogus: bool = False) -> None:
        self.id = sid
        self.time = time
        self.sender = sender
        self.recipients = recipients
        self.modality = modality
        self.priority = priority
        self.images = images
        self.nbytes = nbytes
        self.image_bytes = image_bytes
        self.transfers: list[Transfer] = []
        self.manifest_id: CID | None = None
        self.cids: tuple[CID, ...] = ()
        self.sizes: tuple[float, ...] = ()
        self.held: dict[int, list[int]] = {}  # holder org -> block numbers it holds verified, in order
        self.recorded = recorded  # arrived inside this slice's own window: its transfers are reported
        self.bogus = bogus  # announced by a flooding attacker
        self.hub_stored = False  # the hub holds a complete copy
        self.shared_at = time
        self.access: Share | None = None  # its manifest as protocol.access sees it (mesh.study_share)
        self.state: ManifestState | None = None  # the sender's view of its manifest (protocol.lifecycle)
        #: blocks per instance when split into the node's own blocks (split(node_blocks=True)); 0: byte blocks
        self.per_image = 0

    def split(self, granularity: float, node_blocks: bool = False) -> None:
        """Scheduler blocks of at most `granularity` bytes and their CIDs (derived from the study id).

        `node_blocks`: the node's own blocks instead (meshnode.dicom.blocks): per instance, its header, then
        its pixel data in 1 MiB chunks (wire_sizes.instance_blocks). The scheduler's windows and requests
        count CIDs, so a study of small instances has about twice as many blocks as its bytes / 1 MiB."""
        tag = self.id.to_bytes(8, "big", signed=True) + (b"b" if self.bogus else b"s")
        self.manifest_id = CID(tag + b"\xff\xff\xff\xff" + _PAD)
        self.per_image = 0
        if node_blocks and self.images > 0 and self.nbytes > 0:
            one = instance_blocks(self.nbytes / self.images)
            self.per_image = len(one)
            self.sizes = one * self.images
            self.cids = tuple(CID(tag + i.to_bytes(4, "big") + _PAD) for i in range(len(self.sizes)))
            return
        if self.nbytes <= granularity:
            self.sizes = (self.nbytes,)
            self.cids = (CID(tag + _BLOCK0),)
            return
        n = int(-(-self.nbytes // granularity))
        self.sizes = (self.nbytes / n,) * n
        self.cids = tuple(CID(tag + i.to_bytes(4, "big") + _PAD) for i in range(n))


class Transfer:
    __slots__ = ("study", "recipient", "status", "reason", "announced_at", "first_image_at", "delivered_at",
                 "from_sender", "from_peers", "from_hub", "wasted", "duplicate", "attempts", "control",
                 "fetch_started", "affected", "state")

    def __init__(self, study: Study, recipient: int) -> None:
        self.study = study
        self.recipient = recipient
        self.status = Status.IN_FLIGHT
        self.reason = ""
        self.announced_at = -1.0
        self.first_image_at = -1.0
        self.delivered_at = -1.0
        self.from_sender = 0.0
        self.from_peers = 0.0
        self.from_hub = 0.0
        self.wasted = 0.0  # bytes received and thrown away: corrupt blocks, requests cut by a failure
        self.duplicate = 0.0  # bytes of blocks received twice (a late answer to a timed-out request)
        self.attempts = 0  # announce (or hub upload) attempts
        self.control = 0.0  # control-plane bytes: announce, have, request frames, receipt
        self.fetch_started = -1.0
        self.affected = False
        #: the recipient's view of the study's manifest (protocol.lifecycle; None: not accepted yet). Status is
        #: the measured outcome of the transfer, which also ends when the sender or recipient is revoked.
        self.state: ManifestState | None = None

    @property
    def resolved(self) -> bool:
        return self.status is not Status.IN_FLIGHT
