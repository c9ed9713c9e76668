"""What the outbox tells a sender's staff of each recipient: a study is "delivered" only once the
recipient's receipt is verified, never merely because its announcement was accepted."""

from __future__ import annotations

import pytest

from meshnode.node.control_routes import recipient_status
from protocol.cid import CID
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryRecord, DeliveryState

ITEM = CID.of(b"manifest")


def record(kind: DeliveryKind, state: DeliveryState) -> DeliveryRecord[DeliveryKey]:
    return DeliveryRecord(DeliveryKey(kind, ITEM, "RXX"), state, 1, 0.0, 0.0)


@pytest.mark.parametrize(("kind", "state", "receipt", "status"), [
    (DeliveryKind.ANNOUNCE, DeliveryState.PENDING, False, "announcing"),
    (DeliveryKind.ANNOUNCE, DeliveryState.ATTEMPTING, False, "announcing"),
    (DeliveryKind.ANNOUNCE, DeliveryState.DELIVERED, False, "announced"),
    (DeliveryKind.ANNOUNCE, DeliveryState.DELIVERED, True, "delivered"),
    (DeliveryKind.ANNOUNCE, DeliveryState.FAILED, False, "failed"),
    (DeliveryKind.RECALL, DeliveryState.PENDING, True, "recalling"),
    (DeliveryKind.RECALL, DeliveryState.ATTEMPTING, False, "recalling"),
    (DeliveryKind.RECALL, DeliveryState.DELIVERED, True, "recalled"),
    (DeliveryKind.RECALL, DeliveryState.FAILED, False, "recall-failed"),
])
def test_each_recipient_status(kind: DeliveryKind, state: DeliveryState, receipt: bool, status: str) -> None:
    assert recipient_status(record(kind, state), receipt) == status


def test_an_accepted_announcement_without_a_receipt_is_not_delivered() -> None:
    assert recipient_status(record(DeliveryKind.ANNOUNCE, DeliveryState.DELIVERED), False) != "delivered"
