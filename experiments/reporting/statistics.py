"""Paired comparisons of two variants on the same evaluation items: the difference, its 95%
confidence interval by a paired bootstrap, and the smallest difference the comparison could
have detected.

Values are per seed, per item: `treated[s][i]` and `control[s][i]` are the scores of item i under
seed s (the same items for both variants within a seed). The difference is the mean over seeds of
the mean paired item difference. The bootstrap resamples items within each seed (paired: an item
keeps both of its scores) and, with several seeds, the seeds too; the interval is the percentile
interval of the resampled differences."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95
# The minimum detectable difference: a true difference of this size is found (the interval
# excludes 0) 80% of the time at the 5% level: (z_0.975 + z_0.8) standard errors.
DETECTABLE_Z = 1.959964 + 0.841621


@dataclass(frozen=True)
class Difference:
    delta: float
    ci_low: float
    ci_high: float
    se: float              # the bootstrap standard deviation of the difference
    detectable: float      # the minimum detectable difference (DETECTABLE_Z * se)
    items: int             # per seed
    seeds: int

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict:
        return asdict(self)


def paired_difference(treated: list[list[float]], control: list[list[float]], seed: int = 0,
                      resamples: int = RESAMPLES, level: float = LEVEL) -> Difference:
    """treated - control on paired items (see the module doc). ValueError when the items do not pair."""
    if not treated or len(treated) != len(control):
        raise ValueError(f"the variants have {len(treated)} and {len(control)} seeds; they must have the same, at least one")
    diffs = []
    for t, c in zip(treated, control):
        if len(t) != len(c) or not t:
            raise ValueError(f"a seed has {len(t)} and {len(c)} items; paired items must match and not be empty")
        diffs.append(np.asarray(t, dtype=float) - np.asarray(c, dtype=float))
    delta = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    n_seeds = len(diffs)
    # per seed, `resamples` item-resampled means; then seeds resampled (with several) and averaged
    item_means = np.stack([d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1) for d in diffs])
    seeds = rng.integers(0, n_seeds, (resamples, n_seeds)) if n_seeds > 1 else np.zeros((resamples, 1), dtype=int)
    samples = item_means[seeds, np.arange(resamples)[:, None]].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    se = float(samples.std(ddof=1))
    return Difference(delta, float(low), float(high), se, DETECTABLE_Z * se, len(diffs[0]), n_seeds)


def difference_of_differences(a: Difference, b: Difference) -> tuple[float, float, float]:
    """a.delta - b.delta on independent item sets (a normal interval from the two SEs):
    how much of a difference remains from one setting to another."""
    delta = a.delta - b.delta
    se = float(np.hypot(a.se, b.se))
    return delta, delta - 1.959964 * se, delta + 1.959964 * se


def unpaired_difference(late: list[float], early: list[float], seed: int = 0, resamples: int = RESAMPLES,
                        level: float = LEVEL) -> Difference:
    """mean(late) - mean(early) on independent samples (a learning signal's logged values late vs
    early in a run): each sample resampled on its own; percentile interval."""
    if len(late) < 2 or len(early) < 2:
        raise ValueError(f"{len(early)} and {len(late)} values; each side needs at least 2")
    a, b = np.asarray(late, dtype=float), np.asarray(early, dtype=float)
    rng = np.random.default_rng(seed)
    samples = a[rng.integers(0, len(a), (resamples, len(a)))].mean(axis=1) - b[rng.integers(0, len(b), (resamples, len(b)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    se = float(samples.std(ddof=1))
    return Difference(float(a.mean() - b.mean()), float(low), float(high), se, DETECTABLE_Z * se, len(a) + len(b), 1)
