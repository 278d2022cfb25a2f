"""Comparisons of two variants on the same evaluation items, with intervals as wide as the evidence.

The design a comparison has: *units* (the runs of a variant: training seeds, and base builds with
several bases) crossed with *items* (the evaluation problems; every unit scores the same ones).
`treated[u][i]` and `control[u][i]` are item i's scores in unit u; D = treated - control. Both
units and items are random: another seed, another base build or other problems of the same kind
would each move the number. The difference is the grand mean of D; its variance is the crossed
random-effects one (units and items both random, Cornfield and Tukey's two-way ANOVA estimator):

    Var = MS_units / (U I) + MS_items / (U I) - MS_residual / (U I)

with Satterthwaite's degrees of freedom and a t interval, so a comparison over 3 seeds or bases
is as uncertain as 3 draws are (a percentile bootstrap over 3 seeds is not). With one unit it is
the paired t interval over items. Seeds within bases: with several bases each base's seeds are
averaged first (`groups`), so the outer level is the base build; the interval then covers items,
seeds and bases. `covers` says which.

Several comparisons in one report are a family: `holm` adjusts their p-values (Holm's step-down,
controlling the chance of any false verdict at 5%). `contrast` is a difference of differences on
the same units (verdict 4: under shift minus in distribution, the same models). `trend` asks
whether a logged signal moved, first quarter against last, against series with no trend and the
same autocorrelation (an AR(1) sieve bootstrap)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
POWER = 0.8      # the minimum detectable difference: found (interval excludes 0) this often at the 5% level
RESAMPLES = 4000
COVERS = {1: "items", 2: "items and training seeds", 3: "items, training seeds and base builds"}


@dataclass(frozen=True)
class Difference:
    delta: float
    ci_low: float
    ci_high: float
    se: float
    detectable: float      # the minimum detectable difference: (t_0.975 + t_0.8) standard errors
    items: int             # items per unit (summed over item sets for a contrast)
    seeds: int             # units: runs per variant (seeds x bases)
    df: float = math.inf   # Satterthwaite degrees of freedom of the t interval
    p: float = 1.0         # two-sided p-value of "no difference"
    bases: int = 1
    covers: str = COVERS[1]

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict:
        row = asdict(self)
        row["df"] = self.df if math.isfinite(self.df) else None  # JSON has no infinity: None is "normal quantiles"
        return row


def _matrix(treated, control) -> np.ndarray:
    if not treated or len(treated) != len(control):
        raise ValueError(f"the variants have {len(treated)} and {len(control)} seeds; they must have the same, at least one")
    rows = []
    for t, c in zip(treated, control):
        if len(t) != len(c) or not t:
            raise ValueError(f"a seed has {len(t)} and {len(c)} items; paired items must match and not be empty")
        rows.append(np.asarray(t, dtype=float) - np.asarray(c, dtype=float))
    if len({len(r) for r in rows}) > 1:
        raise ValueError("every seed must score the same items; the seeds have different numbers of items")
    return np.stack(rows)


def _by_group(d: np.ndarray, groups: list | None) -> tuple[np.ndarray, int]:
    """Units averaged within their group (the seeds of one base build) when there are several groups."""
    if groups is None or len(set(map(str, groups))) < 2:
        return d, 1
    if len(groups) != len(d):
        raise ValueError(f"{len(groups)} groups for {len(d)} units")
    keys = list(dict.fromkeys(map(str, groups)))
    return np.stack([d[[str(g) == k for g in groups]].mean(0) for k in keys]), len(keys)


def _components(d: np.ndarray, weight: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One item set's unit means [U] and its (variance term, its degrees of freedom) pairs: items,
    and minus the residual when there are several units (each already divided by U I)."""
    units, items = d.shape
    w2 = weight * weight
    col = d.mean(0)
    if units == 1:
        return d[0].mean(keepdims=True), [(w2 * col.var(ddof=1) / items if items > 1 else 0.0, items - 1)]
    row = d.mean(1)
    resid = d - row[:, None] - col[None, :] + d.mean()
    ms_items = units * col.var(ddof=1) if items > 1 else 0.0
    ms_resid = (resid ** 2).sum() / ((units - 1) * (items - 1)) if items > 1 else 0.0
    scale = w2 / (units * items)
    return row, [(scale * ms_items, items - 1), (-scale * ms_resid, (units - 1) * (items - 1))]


def contrast(sets: list[tuple[float, list[list[float]], list[list[float]]]], groups: list | None = None,
             level: float = LEVEL) -> Difference:
    """sum_k w_k * (treated_k - control_k) over item sets k scored by the same units (sets: (w_k,
    treated_k, control_k)); each set's items are independent of the others'. One set of weight 1
    is the plain paired difference."""
    matrices = []
    for weight, treated, control in sets:
        d, n_groups = _by_group(_matrix(treated, control), groups)
        matrices.append((weight, d))
    units = {d.shape[0] for _, d in matrices}
    if len(units) != 1:
        raise ValueError("every item set must be scored by the same units")
    units = units.pop()
    unit_total, terms = np.zeros(units), []
    for weight, d in matrices:
        row, parts = _components(d, weight)
        unit_total = unit_total + weight * row
        terms += parts
    delta = float(unit_total.mean())
    if units > 1:
        terms.append((unit_total.var(ddof=1) / units, units - 1))
    variance = sum(v for v, _ in terms)
    if variance <= 0:  # the residual estimate ate the rest (or nothing varies): the larger plain term
        variance = max([v for v, _ in terms if v > 0], default=0.0)
    df = _satterthwaite(variance, terms)
    n_items = sum(d.shape[1] for _, d in matrices)
    seeds = len(sets[0][1])
    return _difference(delta, variance, df, n_items, seeds, n_groups, level)


def _satterthwaite(variance: float, terms: list[tuple[float, float]]) -> float:
    denominator = sum(v * v / df for v, df in terms if df > 0 and v != 0)
    return variance * variance / denominator if denominator > 0 else math.inf


def _difference(delta: float, variance: float, df: float, items: int, seeds: int, bases: int, level: float) -> Difference:
    se = math.sqrt(max(variance, 0.0))
    t = float(stats.t.ppf(1 - (1 - level) / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(1 - (1 - level) / 2))
    power = float(stats.t.ppf(POWER, df)) if math.isfinite(df) else float(stats.norm.ppf(POWER))
    if se == 0:
        p = 1.0 if delta == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(delta) / se, df)) if math.isfinite(df) else float(2 * stats.norm.sf(abs(delta) / se))
    covers = COVERS[3] if bases > 1 else COVERS[2] if seeds > 1 else COVERS[1]
    return Difference(delta, delta - t * se, delta + t * se, se, (t + power) * se, items, seeds, df, p, bases, covers)


def paired_difference(treated: list[list[float]], control: list[list[float]], groups: list | None = None,
                      level: float = LEVEL) -> Difference:
    """treated - control on paired items (the module doc); `groups`: each unit's base build."""
    return contrast([(1.0, treated, control)], groups, level)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (the family's chance of any false rejection <= alpha when
    each adjusted p is compared with alpha), in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def trend(values: list[float], seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> Difference:
    """mean(last quarter) - mean(first quarter) of a logged series, tested against what a series
    with no trend and the same autocorrelation gives: an AR(1) fitted to the demeaned series
    (its coefficient corrected for Kendall's small-sample bias, (1 + 3 phi) / n), simulated
    `resamples` times (a sieve bootstrap). The interval is the difference +- the null's `level`
    quantile of |difference|. Consecutive logged values are correlated; a test that takes them as
    independent finds a trend in noise (at 24 values of an AR(1) of 0.5: 42% of the time with an
    i.i.d. bootstrap of the quarters, 12% with a block bootstrap, 3% with this; measured in
    tests/test_statistics.py). Needs at least 8 values."""
    if len(values) < 8:
        raise ValueError(f"{len(values)} values; a trend needs at least 8 (2 a quarter)")
    x = np.asarray(values, dtype=float)
    n, q = len(x), len(x) // 4
    delta = float(x[-q:].mean() - x[:q].mean())
    z = x - x.mean()
    energy = float((z ** 2).sum())
    phi = float((z[1:] * z[:-1]).sum() / energy) if energy > 0 else 0.0
    phi = min(0.95, max(0.0, phi + (1 + 3 * phi) / n))
    sd = math.sqrt(z.var(ddof=1) * (1 - phi ** 2))
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(resamples, n)) * sd
    series = np.zeros((resamples, n))
    series[:, 0] = noise[:, 0] / math.sqrt(1 - phi ** 2)
    for i in range(1, n):
        series[:, i] = phi * series[:, i - 1] + noise[:, i]
    null = np.abs(series[:, -q:].mean(1) - series[:, :q].mean(1))
    half = float(np.quantile(null, level))
    p = float((null >= abs(delta)).mean()) if sd > 0 else float(delta == 0)
    se = half / float(stats.norm.ppf(1 - (1 - level) / 2))
    return Difference(delta, delta - half, delta + half, se, se * float(stats.norm.ppf(1 - (1 - level) / 2) +
                      stats.norm.ppf(POWER)), 2 * q, 1, math.inf, p, 1, "logged steps (AR(1) sieve bootstrap)")
