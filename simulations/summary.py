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
  recovery time (from the end of the outage to the last of them delivered);
  the first 500 such outages are listed, `outages_left_out` counts the rest.
* per organisation and per link class: delivery-time percentiles of every
  transfer delivered to each recipient organisation, and of every transfer
  whose bottleneck access rate min(sender up, recipient down) falls in a
  class of recorder.LINK_CLASSES (from histograms of every transfer, not
  only the sampled records).
* costs: bytes over every access link (each organisation's up and down, the
  hub's in and out), the hub's stored GB-months (bytes into the hub x
  retention / 30 days) and their prices from the scenario's [costs].
* across replications: every numeric leaf of the percentile trees, the key
  metrics and the costs get their mean, a 95 % interval from Student's t at
  n - 1 degrees of freedom (simulations.stats), min, max, n replications and,
  for a percentile, the mean number of transfers behind it.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterator

from simulations.engine.recorder import BINS_PER_DECADE, LINK_CLASSES, LOW_DECADE, NBINS
from simulations.results import ReplicationResult
from simulations.scenario.model import DesignKind, Scenario
from simulations.stats import interval
from simulations.topology import Org, Topology
from simulations.workload import PRIORITIES

PERCENTILES = (50, 95, 99)
#: the hub's key in costs.link_gb (organisation codes are upper case, so it cannot clash)
HUB_KEY = "hub"
#: the outage list in the summary stops here; faults.outages_left_out counts the rest
MAX_OUTAGES = 500
#: a 30-day month, the unit of storage prices
MONTH_S = 30 * 86400.0


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


def by_org(r: ReplicationResult, topology: Topology) -> dict[str, object]:
    """Delivery-time percentiles per recipient organisation (every organisation; n = 0 when none)."""
    empty = [0] * NBINS
    return {o.code: _stats(r.delivery_by_org.get(o.index, empty)) for o in topology.orgs}


def by_link_class(r: ReplicationResult) -> dict[str, object]:
    """Delivery-time percentiles per link class of the transfer's bottleneck access rate (every class)."""
    empty = [0] * NBINS
    return {name: _stats(r.delivery_by_link.get(k, empty)) for k, (name, _) in enumerate(LINK_CLASSES)}


def costs(r: ReplicationResult, scenario: Scenario, topology: Topology) -> dict[str, object]:
    """Bytes on every access link and what they and the hub's storage cost (docs/researchers.md, Outputs).

    transfer_gb: every byte over an organisation's access link (up and down) and the hub's (in and out), so a
    byte from a sender to a recipient counts twice and one through the hub four times; the relay's own link
    is not counted. hub_stored_gb_months: bytes into the hub (cut uploads included) x hub.retention / 30 days;
    0 for the mesh. Prices per decimal GB from [costs]."""
    gb = 1e9
    link: dict[str, dict[str, float]] = {
        o.code: {"up": round(r.total_up[o.index] / gb, 9), "down": round(r.total_down[o.index] / gb, 9)}
        for o in topology.orgs}
    total = sum(r.total_up) + sum(r.total_down)
    stored = 0.0
    if scenario.design.kind is not DesignKind.MESH:
        hub_in, hub_out = sum(r.hub_in), sum(r.hub_out)
        link[HUB_KEY] = {"up": round(hub_out / gb, 9), "down": round(hub_in / gb, 9)}
        total += hub_in + hub_out
        stored = hub_in / gb * scenario.hub.retention / MONTH_S
    price = scenario.costs
    transfer_cost = total / gb * price.transfer_per_gb
    storage_cost = stored * price.storage_per_gb_month
    return {"currency": price.currency, "transfer_gb": round(total / gb, 9),
            "hub_stored_gb_months": round(stored, 9), "transfer_cost": round(transfer_cost, 6),
            "storage_cost": round(storage_cost, 6), "total_cost": round(transfer_cost + storage_cost, 6),
            "link_gb": link}


def member_time(o: Org, duration: float) -> float:
    """How long an organisation was a member during the run (joins to leaves, within scenario.duration): its
    utilisation is over that time, so an organisation that joins half-way is not counted idle before it."""
    return max(1.0, min(o.leaves, duration) - o.joins)


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
                        "upload_utilisation": round(r.total_up[o.index] / (o.up * member_time(o, scenario.duration)), 9)}
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
        "delivery_time_s_by_org": by_org(r, topology),
        "delivery_time_s_by_link_class": by_link_class(r),
        "costs": costs(r, scenario, topology),
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
                   "outages": outages[:MAX_OUTAGES],
                   "outages_left_out": max(0, len(outages) - MAX_OUTAGES)},
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

#: the per-replication trees every numeric leaf of which gets an interval across replications
TREES = ("delivery_time_s", "time_to_first_image_s", "delivery_time_s_by_org", "delivery_time_s_by_link_class",
         "costs")
_PERCENTILE = re.compile(r"p[0-9]+")


def lookup(summary: dict[str, object], path: tuple[str, ...]) -> float | None:
    value: object = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _numeric_paths(value: object, prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _numeric_paths(sub, (*prefix, str(key)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix


def across(replications: list[dict[str, object]]) -> dict[str, object]:
    """Per metric over replications: mean, 95 % half-width (Student t at n - 1 df; None with one), min, max, n.

    Metrics: KEY_METRICS and every numeric leaf of TREES, keyed by dotted path ("delivery_time_s.all.p50").
    A replication without a value (no transfer behind a percentile, no hub) is left out of that metric; a
    percentile also gets "observations", the mean of its "n" (transfers) over the replications counted."""
    paths: set[tuple[str, ...]] = set(KEY_METRICS)
    for rep in replications:
        for tree in TREES:
            paths.update(_numeric_paths(rep.get(tree), (tree,)))
    out: dict[str, object] = {}
    for path in sorted(paths):
        pairs = [(v, r) for r, v in ((r, lookup(r, path)) for r in replications) if v is not None and math.isfinite(v)]
        if not pairs:
            continue
        values = [v for v, _ in pairs]
        iv = interval(values)
        entry: dict[str, object] = {
            "mean": round(iv.mean, 6), "ci95": None if iv.half_width is None else round(iv.half_width, 6),
            "min": round(min(values), 6), "max": round(max(values), 6), "n": iv.n}
        if _PERCENTILE.fullmatch(path[-1]):
            counts = [lookup(r, (*path[:-1], "n")) for _, r in pairs]
            known = [c for c in counts if c is not None]
            entry["observations"] = round(statistics.fmean(known), 6) if known else None
        out[".".join(path)] = entry
    return out
