"""`meshnode gateway` renders the announcer's queue items: pending ones with when they are due, one given up
for good (the retry policy's attempts spent) as not announced."""

from __future__ import annotations

import time

from meshnode.cli.gateway_cmd import status_lines


def status(*items: dict[str, object]) -> dict[str, object]:
    return {"dimse": None, "intake": {"stored": 0, "bytes": 0, "duplicates": 0, "refused": 0}, "routes": [],
            "pending_announcements": list(items), "forward": {}}


def item(state: str, attempts: int, error: str) -> dict[str, object]:
    return {"study_uid": "1.2.3", "route": "stroke", "state": state, "instances": 4,
            "announce_at_ms": int((time.time() + 60) * 1000), "revision": 1, "attempts": attempts,
            "last_error": error}


def test_pending_and_given_up_announcements_are_told_apart() -> None:
    pending, = [line for line in status_lines(status(item("pending", 1, "unavailable: no node")))
                if "1.2.3" in line]
    assert pending.startswith("pending: study 1.2.3 on stroke: 4 instance(s), announced in ")
    assert pending.endswith("last error: unavailable: no node")
    failed, = [line for line in status_lines(status(item("failed", 1000, "unavailable: no node")))
               if "1.2.3" in line]
    assert failed.startswith("NOT ANNOUNCED: study 1.2.3 on stroke") and "given up after 1000 attempt(s)" in failed


def test_held_conflicts_are_shown_with_both_digests() -> None:
    s = status()
    s["intake"] = {"stored": 3, "bytes": 10, "duplicates": 0, "refused": 0, "held": 1}
    s["conflicts"] = [{"id": 7, "kind": "store", "study_uid": "1.2.3", "sop_instance_uid": "1.2.3.4",
                       "existing_sha256": "ab" * 32, "newcomer_sha256": "cd" * 32, "source": "dimse:CT@10.0.0.1"}]
    lines = status_lines(s)
    assert "1 held as UID conflict(s)" in lines[1]
    [conflict] = [line for line in lines if line.startswith("CONFLICT #7")]
    assert "stored sha256 abababab" in conflict and "newcomer sha256 cdcdcdcd" in conflict
    assert "meshnode conflicts decide 7" in conflict
