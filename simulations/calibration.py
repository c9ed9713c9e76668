"""What a scenario's workload puts on a hub, next to the national hub's published figures (issue 18).

The public figures (docs/researchers.md, "Calibrating the hub") are volumes:
about 12 million studies in 2023, peaks of about 500 images/s, 35-47 million
images a week, about 450,000 users and 400-500 connected organisations. This
module draws a scenario's workload (the same studies a run draws, replication
0) and derives what can be checked against them: studies and images a week,
the mean and peak images/s (peaks in 1-minute and 5-minute bins of arrivals),
the peak-to-mean ratio, and what a hub needs to carry the public peak at the
scenario's image sizes (ingress, egress, and by Little's law the number of
transfers in progress). Nothing here is simulated: it is arithmetic on the
drawn arrivals, so it takes about a second for a national month.

The hub's `processing_delay` (from a study stored to forwarding it: indexing,
notification) is not public and cannot be derived from volumes: a report
sweeps it (simulations/sensitivity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulations.scenario.model import Scenario
from simulations.topology import build_topology
from simulations.workload import DAY, WorkloadModel

#: The national hub's published figures (docs/researchers.md, "Calibrating the hub").
PUBLIC_STUDIES_PER_YEAR = 12_000_000
PUBLIC_PEAK_IMAGES_PER_S = 500.0
PUBLIC_IMAGES_PER_WEEK = (35e6, 47e6)
PUBLIC_USERS = 450_000
PUBLIC_ORGANISATIONS = (400, 500)
WEEK = 7 * DAY


@dataclass(frozen=True)
class Figures:
    """The workload's load on a hub, from `days` days of drawn arrivals."""

    days: int
    studies_per_year: float  # the scenario's setting
    studies_per_week: float
    images_per_week: float
    images_per_study: float
    bytes_per_image: float  # mean over images (bytes / images), not over studies
    copies_per_study: float  # recipients per study: forwards per upload
    mean_images_per_s: float
    peak_images_per_s_1min: float
    peak_images_per_s_5min: float
    profile_peak_to_mean: float  # the busiest hour of the busiest day / the mean hour, from the profiles alone
    organisations: int

    @property
    def peak_to_mean_5min(self) -> float:
        return self.peak_images_per_s_5min / self.mean_images_per_s

    def hub_ingress_for(self, images_per_s: float) -> float:
        """Bytes/s into the hub to take `images_per_s` at the scenario's image sizes."""
        return images_per_s * self.bytes_per_image

    def hub_egress_for(self, images_per_s: float) -> float:
        """Bytes/s out of the hub: each study is forwarded to each of its recipients."""
        return images_per_s * self.bytes_per_image * self.copies_per_study

    def hub_concurrency_for(self, images_per_s: float, transfer_rate: float) -> float:
        """Little's law: transfers in progress = (uploads + forwards) per second x seconds each, when each
        transfer runs at `transfer_rate` bytes/s (its sender's or recipient's access link)."""
        studies_per_s = images_per_s / self.images_per_study
        seconds_each = self.images_per_study * self.bytes_per_image / transfer_rate
        return studies_per_s * (1.0 + self.copies_per_study) * seconds_each


def public_mean_images_per_s() -> tuple[float, float]:
    """The mean images/s the public weekly volume implies (low, high)."""
    return PUBLIC_IMAGES_PER_WEEK[0] / WEEK, PUBLIC_IMAGES_PER_WEEK[1] / WEEK


def typical_access_rate(scenario: Scenario) -> float:
    """The sending groups' uplink, weighted by how many studies each sends (bytes/s): one transfer's rate."""
    senders = [(g.weight * g.count, g.up) for g in scenario.groups if g.weight > 0]
    total = sum(w for w, _ in senders)
    return sum(w * up for w, up in senders) / total if total else 0.0


def workload_figures(scenario: Scenario, days: int = 28, replication: int = 0) -> Figures:
    """Draw the scenario's first `days` days (as a run's replication `replication` does) and measure them."""
    if days < 1:
        raise ValueError("days must be at least 1")
    model = WorkloadModel(scenario, build_topology(scenario))
    times, images, nbytes, copies = [], [], [], []
    for d in range(days):
        batch = model.day(d, replication)
        times.append(batch.time)
        images.append(batch.images.astype(np.int64))
        nbytes.append(batch.nbytes)
        copies.append((batch.recipients >= 0).sum(axis=1))
    t, im, nb, cp = (np.concatenate(x) for x in (times, images, nbytes, copies))
    span = days * DAY
    weeks = span / WEEK
    total_images = float(im.sum())
    peaks = {}
    for width in (60.0, 300.0):
        per_bin = np.bincount((t // width).astype(np.int64), weights=im.astype(float))
        peaks[width] = float(per_bin.max()) / width if len(per_bin) else 0.0
    daily = np.array(scenario.workload.daily_profile, dtype=float)
    weekly = np.array(scenario.workload.weekly_profile, dtype=float)
    return Figures(
        days=days,
        studies_per_year=float(scenario.workload.studies_per_year),
        studies_per_week=len(t) / weeks,
        images_per_week=total_images / weeks,
        images_per_study=total_images / len(t) if len(t) else 0.0,
        bytes_per_image=float(nb.sum()) / total_images if total_images else 0.0,
        copies_per_study=float(cp.mean()) if len(cp) else 0.0,
        mean_images_per_s=total_images / span,
        peak_images_per_s_1min=peaks[60.0],
        peak_images_per_s_5min=peaks[300.0],
        profile_peak_to_mean=float(daily.max() / daily.mean() * weekly.max() / weekly.mean()),
        organisations=len(scenario.org_codes),
    )
