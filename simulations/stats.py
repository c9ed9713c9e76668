"""Interval estimates a reviewer accepts: Student-t at the real degrees of freedom, paired differences.

Every interval meshsim reports comes from here (issue 18):

* `interval(values)`: the mean of independent replications and the half-width
  of its two-sided confidence interval, t at n - 1 degrees of freedom (scipy's
  quantile, not a table that stops at 10).
* `paired(a, b)`: the mean difference b - a between two designs run with
  common random numbers (replication k of each draws the same studies, faults
  and topology from the same seed streams), and its interval from the
  differences, which removes the variance the designs share.
* `small_sample(n)`: the warning a table or plot prints beside a figure built
  from few observations ("n = 8 stat transfers").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

CONFIDENCE = 0.95
#: fewer observations than this behind a percentile, or fewer replications behind an interval, get a warning
SMALL_SAMPLE = 30
SMALL_REPLICATIONS = 5


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value at `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    return float(student_t.ppf(0.5 + confidence / 2.0, df))


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float | None  # None with a single value
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def interval(values: list[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and t half-width of independent observations (finite values only; at least one)."""
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        raise ValueError("no finite values")
    n = len(xs)
    mean = statistics.fmean(xs)
    if n == 1:
        return Interval(mean, None, 1)
    return Interval(mean, t_quantile(n - 1, confidence) * statistics.stdev(xs) / math.sqrt(n), n)


def paired(a: list[float | None], b: list[float | None], confidence: float = CONFIDENCE) -> Interval | None:
    """Mean of b[k] - a[k] over the replications k both have (common random numbers), with its interval.

    `a` and `b` are indexed by replication; a missing value (None, not finite) drops that pair. None when
    no pair is left."""
    diffs = [y - x for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not diffs:
        return None
    return interval(diffs, confidence)


def small_sample(n: int, what: str) -> str | None:
    """'n = 8 stat transfers' when n is below SMALL_SAMPLE, else None."""
    return f"n = {n} {what}" if n < SMALL_SAMPLE else None
