"""Prometheus metrics at /metrics, in the text exposition format (version 0.0.4).

`MetricsSnapshot` is gathered from the running node (meshnode.web.node_view);
`render` turns it into text. Counters count since the node started; gauges
are read at scrape time. Labels carry org codes and peer IDs, never patient data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from meshnode.node.events import StudyEvent, StudyEventKind

DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Histogram:
    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1


@dataclass
class EventMetrics:
    """Fed by the node's study events."""

    durations: dict[str, Histogram] = field(default_factory=dict)  # by priority
    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, direction)

    async def on_event(self, event: StudyEvent) -> None:
        key = (event.kind.value, event.direction)
        self.events[key] = self.events.get(key, 0) + 1
        if event.kind is StudyEventKind.ARRIVED and event.duration_s is not None:
            self.durations.setdefault(event.priority, Histogram()).observe(event.duration_s)


@dataclass
class MetricsSnapshot:
    org: str
    peer_id: str
    now: float
    sent: dict[str, list[int]]  # org -> [blocks, bytes]
    received: dict[str, list[int]]
    queues: dict[str, int]  # queue name -> depth
    certificates: list[tuple[str, str, str, int]]  # (kind own|peer, org, peer_id, not_after)
    roster_version: int | None
    roster_issued_at: int | None
    roster_expires_at: int | None
    audit_entries: int
    studies: int
    manifests: dict[tuple[str, str], int]  # (direction, state) -> count
    webhooks: dict[tuple[str, str], int]  # (hook, state) -> count
    forward_failures: dict[str, int] = field(default_factory=dict)  # destination -> count
    extra_gauges: dict[str, float] = field(default_factory=dict)
    emails: dict[str, int] = field(default_factory=dict)  # arrival emails ([notify]): state -> count
    #: name -> (type, help, value): the relay service and reservations (meshnode.node.reach.Reach.metrics)
    reach: dict[str, tuple[str, str, float]] = field(default_factory=dict)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_text: str, label: str, hists: dict[str, Histogram]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for key, h in sorted(hists.items()):
            counts = h.counts or [0] * len(h.buckets)
            for bound, count in zip(h.buckets, counts):
                self.lines.append(f"{name}_bucket{_labels({label: key, 'le': repr(float(bound))})} {count}")
            self.lines.append(f"{name}_bucket{_labels({label: key, 'le': '+Inf'})} {h.n}")
            self.lines.append(f"{name}_sum{_labels({label: key})} {_num(h.total)}")
            self.lines.append(f"{name}_count{_labels({label: key})} {h.n}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(s: MetricsSnapshot, events: EventMetrics, http_requests: dict[tuple[str, int], int],
           http_bytes: dict[str, int], auth_failures: int) -> str:
    t = Text()
    t.metric("meshnode_info", "gauge", "This node (value always 1).", [({"org": s.org, "peer_id": s.peer_id}, 1)])
    t.metric("meshnode_blocks_sent_total", "counter", "Blocks served to peers, by requesting org.",
             [({"peer_org": org}, v[0]) for org, v in sorted(s.sent.items())])
    t.metric("meshnode_bytes_sent_total", "counter", "Block bytes served to peers, by requesting org.",
             [({"peer_org": org}, v[1]) for org, v in sorted(s.sent.items())])
    t.metric("meshnode_blocks_received_total", "counter", "Verified blocks received, by serving org.",
             [({"peer_org": org}, v[0]) for org, v in sorted(s.received.items())])
    t.metric("meshnode_bytes_received_total", "counter", "Verified block bytes received, by serving org.",
             [({"peer_org": org}, v[1]) for org, v in sorted(s.received.items())])
    t.histogram("meshnode_transfer_duration_seconds",
                "From the start of fetching a study to every instance verified, by priority.", "priority",
                events.durations)
    t.metric("meshnode_study_events_total", "counter", "Study events (announced, arrived, delivered, failed).",
             [({"event": k, "direction": d}, n) for (k, d), n in sorted(events.events.items())])
    t.metric("meshnode_queue_depth", "gauge", "Work waiting, by queue.",
             [({"queue": q}, n) for q, n in sorted(s.queues.items())])
    t.metric("meshnode_forward_failures_total", "counter", "Failed forwards to a PACS, by destination.",
             [({"destination": d}, n) for d, n in sorted(s.forward_failures.items())])
    t.metric("meshnode_certificate_expiry_timestamp_seconds", "gauge",
             "When a certificate stops being valid (this node's and known peers').",
             [({"kind": kind, "org": org, "peer_id": pid}, na) for kind, org, pid, na in s.certificates])
    if s.roster_version is not None and s.roster_issued_at is not None and s.roster_expires_at is not None:
        t.metric("meshnode_roster_version", "gauge", "Version of the roster in force.", [({}, s.roster_version)])
        t.metric("meshnode_roster_age_seconds", "gauge", "Seconds since the roster in force was issued.",
                 [({}, max(0.0, s.now - s.roster_issued_at))])
        t.metric("meshnode_roster_expiry_timestamp_seconds", "gauge", "When the roster in force expires.",
                 [({}, s.roster_expires_at)])
    t.metric("meshnode_audit_chain_length", "gauge", "Entries in the hash-chained audit log.",
             [({}, s.audit_entries)])
    t.metric("meshnode_studies", "gauge", "Studies stored on this node.", [({}, s.studies)])
    t.metric("meshnode_manifests", "gauge", "Manifests by direction and state.",
             [({"direction": d, "state": st}, n) for (d, st), n in sorted(s.manifests.items())])
    t.metric("meshnode_webhook_notifications", "gauge", "Webhook notifications by receiver and state.",
             [({"hook": h, "state": st}, n) for (h, st), n in sorted(s.webhooks.items())])
    if s.emails:
        t.metric("meshnode_email_notifications", "gauge", "Arrival emails ([notify]) by state.",
                 [({"state": st}, n) for st, n in sorted(s.emails.items())])
    t.metric("meshnode_http_requests_total", "counter", "HTTP requests by route and status.",
             [({"route": r, "status": str(code)}, n) for (r, code), n in sorted(http_requests.items())])
    t.metric("meshnode_http_response_bytes_total", "counter", "HTTP response body bytes by route.",
             [({"route": r}, n) for r, n in sorted(http_bytes.items())])
    t.metric("meshnode_http_auth_failures_total", "counter", "Refused HTTP credentials.", [({}, auth_failures)])
    for name, (kind, help_text, value) in sorted(s.reach.items()):
        t.metric(name, kind, help_text, [({}, value)])
    for name, value in sorted(s.extra_gauges.items()):
        t.metric(name, "gauge", name.replace("_", " "), [({}, value)])
    return t.render()
