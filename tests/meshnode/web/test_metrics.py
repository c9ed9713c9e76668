"""The /metrics text is valid Prometheus exposition format (parsed by prometheus_client)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.web.metrics import EventMetrics, MetricsSnapshot, render


def snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(
        org="RJ1", peer_id="12D3KooWx", now=1000.0, sent={'R"GT\n': [3, 3000]}, received={"RGT": [10, 10_000]},
        queues={"fetch": 1, "deliveries": 0, "webhooks": 2}, certificates=[("own", "RJ1", "12D3KooWx", 2000)],
        roster_version=4, roster_issued_at=900, roster_expires_at=5000, audit_entries=42, studies=7,
        manifests={("received", "fetching"): 1}, webhooks={("https://h/x", "pending"): 2},
        forward_failures={"PACS1": 3})


async def test_render_parses_and_carries_the_numbers() -> None:
    events = EventMetrics()
    for seconds in (0.5, 4.0, 90.0):
        await events.on_event(StudyEvent(StudyEventKind.ARRIVED, "m", "1.2.3", "RGT", "urgent", "received",
                                         duration_s=seconds))
    await events.on_event(StudyEvent(StudyEventKind.FAILED, "m2", "1.2.3", "RGT", "routine", "received"))
    text = render(snapshot(), events, {("qido-studies", 200): 5}, {"qido-studies": 1234}, 2)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sent = families["meshnode_bytes_sent"].samples[0]
    assert sent.labels == {"peer_org": 'R"GT\n'} and sent.value == 3000  # label escaping survives parsing
    assert families["meshnode_bytes_received"].samples[0].value == 10_000
    hist = {(s.name, s.labels.get("le")): s.value for s in families["meshnode_transfer_duration_seconds"].samples}
    assert hist[("meshnode_transfer_duration_seconds_bucket", "5.0")] == 2
    assert hist[("meshnode_transfer_duration_seconds_bucket", "+Inf")] == 3
    assert hist[("meshnode_transfer_duration_seconds_count", None)] == 3
    assert hist[("meshnode_transfer_duration_seconds_sum", None)] == 94.5
    assert families["meshnode_roster_age_seconds"].samples[0].value == 100
    assert families["meshnode_audit_chain_length"].samples[0].value == 42
    assert families["meshnode_forward_failures"].samples[0].labels == {"destination": "PACS1"}
    queues = {s.labels["queue"]: s.value for s in families["meshnode_queue_depth"].samples}
    assert queues == {"fetch": 1, "deliveries": 0, "webhooks": 2}
    failed = [s for s in families["meshnode_study_events"].samples if s.labels["event"] == "failed"]
    assert failed[0].value == 1


def test_arrival_emails_by_state() -> None:
    s = snapshot()
    s.emails = {"pending": 1, "delivered": 5}
    families = {f.name: f for f in text_string_to_metric_families(render(s, EventMetrics(), {}, {}, 0))}
    assert {x.labels["state"]: x.value for x in families["meshnode_email_notifications"].samples} == {
        "pending": 1, "delivered": 5}
    without = {f.name for f in text_string_to_metric_families(render(snapshot(), EventMetrics(), {}, {}, 0))}
    assert "meshnode_email_notifications" not in without  # no [notify]: no such metric
