"""The JSON summary of a run: the metrics a researcher compares, per replication and across them.

Definitions (docs/researchers.md has the long form):

* delivery time: from the study reaching the sender's node to the recipient
  holding every block verified; time to first image: to the first image
  being complete at the recipient. p50/p95/p99 per priority and modality,
  read from the run's log histograms (within 0.6 %).
* success rate: delivered / transfers of studies that arrived after warm-up.
* duplicate overhead: data bytes received but not needed (corrupt blocks,
  requests cut by a failure, blocks received twice) / study bytes delivered;
  control overhead: announce, have, request and receipt bytes / delivered.
* Jain fairness: over transfers, of each transfer's throughput divided by its
  bottleneck access rate; over organisations, of each one's upload
  utilisation (bytes up / (uplink x duration)).
* hub load: the hub's ingress + egress per `hub_bin`, in bytes/s and
  images/s, and its peak number of concurrent transfers.
* faults: per outage, the transfers it touched, how many were delivered, and
  recovery time (from the end of the outage to the last of them delivered).
"""

from __future__ import annotations

import math
import statistics

from simulations.engine.recorder import BINS_PER_DECADE, LOW_DECADE, NBINS
from simulations.results import ReplicationResult
from simulations.scenario.model import DesignKind, Scenario
from simulations.topology import Topology
from simulations.workload import PRIORITIES

PERCENTILES = (50, 95, 99)


def percentile(hist: list[int], q: float) -> float | None:
    """The q-th percentile of a log histogram (interpolated log-linearly within the bin)."""
    total = sum(hist)
    if total == 0:
        return None
    target = q / 100.0 * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= target:
            frac = (target - seen) / n
            return float(10.0 ** (LOW_DECADE + (i + frac) / BINS_PER_DECADE))
        seen += n
    return float(10.0 ** (LOW_DECADE + NBINS / BINS_PER_DECADE))


def _stats(hist: list[int]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": sum(hist)}
    for q in PERCENTILES:
        value = percentile(hist, q)
        out[f"p{q}"] = None if value is None else round(value, 6)
    return out


def _sum(hists: list[list[int]]) -> list[int]:
    out = [0] * NBINS
    for h in hists:
        for i, n in enumerate(h):
            if n:
                out[i] += n
    return out


def distribution(table: dict[tuple[int, int], list[int]], modalities: list[str]) -> dict[str, object]:
    by_priority = {p.value: _stats(_sum([h for (pr, _), h in table.items() if pr == p.rank])) for p in PRIORITIES}
    by_modality = {m: _stats(_sum([h for (_, mo), h in table.items() if mo == i])) for i, m in enumerate(modalities)}
    by_both = {f"{p.value}/{m}": _stats(table[(p.rank, i)]) for p in PRIORITIES for i, m in enumerate(modalities)
               if (p.rank, i) in table}
    return {"all": _stats(_sum(list(table.values()))), "by_priority": by_priority, "by_modality": by_modality,
            "by_priority_and_modality": by_both}


def _jain(xs: list[float]) -> float | None:
    xs = [x for x in xs if x > 0]
    if not xs:
        return None
    return round(sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)), 6)


def replication_summary(r: ReplicationResult, scenario: Scenario, topology: Topology) -> dict[str, object]:
    c = r.counters
    modalities = [m.name for m in scenario.workload.modalities]
    delivered = max(c.bytes_delivered, 1.0)
    span = max(1.0, scenario.duration - scenario.warmup)
    orgs = topology.orgs
    per_org = {o.code: {"group": o.group, "up_bytes": round(r.total_up[o.index], 3),
                        "down_bytes": round(r.total_down[o.index], 3),
                        "peak_up_Bps": round(max(r.up[o.index]) / scenario.output.timeseries_bin, 3),
                        "peak_down_Bps": round(max(r.down[o.index]) / scenario.output.timeseries_bin, 3),
                        "upload_utilisation": round(r.total_up[o.index] / (o.up * scenario.duration), 9)}
               for o in orgs}
    hub_bin = scenario.output.hub_bin
    hub_total = [a + b for a, b in zip(r.hub_in, r.hub_out)]
    outages = []
    for st in r.outages:
        if st.affected == 0:
            continue
        recovery = max(0.0, st.last_delivered - st.end) if st.last_delivered >= 0 else None
        outages.append({"what": st.what, "org": "hub" if st.org < 0 else orgs[st.org].code, "cause": st.cause,
                        "start_s": round(st.start, 3), "end_s": round(st.end, 3), "affected": st.affected,
                        "delivered": st.delivered, "failed": st.failed,
                        "recovery_s": None if recovery is None else round(recovery, 3)})
    affected = sum(o["affected"] for o in outages)  # type: ignore[misc]
    affected_ok = sum(o["delivered"] for o in outages)  # type: ignore[misc]
    recoveries = [float(o["recovery_s"]) for o in outages if o["recovery_s"] is not None]  # type: ignore[arg-type]
    first_ban: dict[str, float] = {}
    for t, peer, _ in r.bans:
        first_ban.setdefault(peer, t)
    return {
        "replication": r.replication,
        "transfers": c.transfers, "delivered": c.delivered, "failed": c.failed, "in_flight": c.in_flight,
        "warmup_excluded": c.warmup_excluded,
        "success_rate": round(c.delivered / c.transfers, 9) if c.transfers else None,
        "failure_reasons": dict(sorted(c.reasons.items())),
        "delivery_time_s": distribution(r.delivery, modalities),
        "time_to_first_image_s": distribution(r.first_image, modalities),
        "bytes": {"delivered": round(c.bytes_delivered, 3), "received": round(c.bytes_received, 3),
                  "wasted": round(c.wasted, 3), "duplicate": round(c.duplicate, 3), "control": round(c.control, 3),
                  "from_sender": round(c.from_sender, 3), "from_other_recipients": round(c.from_peers, 3),
                  "from_hub": round(c.from_hub, 3)},
        "duplicate_overhead": round((c.wasted + c.duplicate) / delivered, 9),
        "control_overhead": round(c.control / delivered, 9),
        "offered_load_Bps": round(c.bytes_delivered / span, 3),
        "peak_images_per_s": round(max(r.images) / hub_bin, 3),
        "peak_images_per_s_exact": max(r.image_events.values()) if r.image_events else None,
        "fairness": {"jain_transfers": round(c.jain_sum ** 2 / (c.jain_n * c.jain_sq), 6) if c.jain_sq else None,
                     "jain_upload_utilisation": _jain([v["upload_utilisation"] for v in per_org.values()])},  # type: ignore[misc]
        "hub": None if scenario.design.kind is DesignKind.MESH else {
                "peak_Bps": round(max(hub_total) / hub_bin, 3), "peak_in_Bps": round(max(r.hub_in) / hub_bin, 3),
                "peak_out_Bps": round(max(r.hub_out) / hub_bin, 3),
                "peak_in_images_per_s": round(max(r.hub_images) / hub_bin, 3),
                "peak_concurrency": r.hub_peak, "bytes_in": round(sum(r.hub_in), 3),
                "bytes_out": round(sum(r.hub_out), 3)},
        "faults": {"outages_touching_transfers": len(outages), "affected_transfers": affected,
                   "affected_delivered": affected_ok,
                   "affected_success_rate": round(affected_ok / affected, 9) if affected else None,
                   "recovery_s_mean": round(statistics.fmean(recoveries), 3) if recoveries else None,
                   "recovery_s_max": round(max(recoveries), 3) if recoveries else None,
                   "outages": outages[:500]},
        "attack": {**{k: (round(v, 3) if isinstance(v, float) else v) for k, v in sorted(r.attack.items())},
                   "peers_banned": {p: round(t, 3) for p, t in sorted(first_ban.items())},
                   "bans": len(r.bans)},
        "organisations": per_org,
        "engine": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sorted(r.engine.items())},
    }


KEY_METRICS = (
    ("success_rate",), ("delivery_time_s", "all", "p50"), ("delivery_time_s", "all", "p95"),
    ("delivery_time_s", "all", "p99"), ("delivery_time_s", "by_priority", "stat", "p50"),
    ("delivery_time_s", "by_priority", "stat", "p95"), ("delivery_time_s", "by_priority", "urgent", "p95"),
    ("delivery_time_s", "by_priority", "routine", "p95"), ("time_to_first_image_s", "all", "p50"),
    ("time_to_first_image_s", "all", "p95"), ("duplicate_overhead",), ("control_overhead",),
    ("fairness", "jain_transfers"), ("fairness", "jain_upload_utilisation"), ("hub", "peak_Bps"),
    ("peak_images_per_s",), ("hub", "peak_in_images_per_s"), ("hub", "peak_concurrency"), ("faults", "affected_success_rate"),
    ("faults", "recovery_s_max"), ("attack", "corrupt_blocks"), ("attack", "bans"),
)

_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def lookup(summary: dict[str, object], path: tuple[str, ...]) -> float | None:
    value: object = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def across(replications: list[dict[str, object]]) -> dict[str, object]:
    """Mean, 95 % confidence half-width (Student t), min and max of the key metrics over replications."""
    out: dict[str, object] = {}
    for path in KEY_METRICS:
        values = [v for v in (lookup(r, path) for r in replications) if v is not None and math.isfinite(v)]
        if not values:
            continue
        n = len(values)
        mean = statistics.fmean(values)
        half = _T95.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n) if n > 1 else None
        out[".".join(path)] = {"mean": round(mean, 6), "ci95": None if half is None else round(half, 6),
                               "min": round(min(values), 6), "max": round(max(values), 6), "n": n}
    return out
