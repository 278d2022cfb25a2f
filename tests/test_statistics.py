"""The paired comparison on hand cases: the difference, its bootstrap interval, the detectable difference."""
import math

import numpy as np
import pytest

from tokreason.experiments.reporting.statistics import DETECTABLE_Z, difference_of_differences, paired_difference


def test_identical_variants_differ_by_exactly_nothing():
    d = paired_difference([[1, 0, 1, 1]], [[1, 0, 1, 1]])
    assert (d.delta, d.ci_low, d.ci_high, d.se, d.detectable) == (0.0, 0.0, 0.0, 0.0, 0.0) and not d.significant


def test_a_constant_paired_gain_has_a_zero_width_interval():
    d = paired_difference([[1, 1, 1, 0]], [[0, 0, 0, -1]])  # every item gains exactly 1
    assert d.delta == 1.0 and d.ci_low == d.ci_high == 1.0 and d.significant


def test_the_interval_matches_the_normal_approximation_of_a_paired_mean():
    rng = np.random.default_rng(1)
    control = rng.integers(0, 2, 2000)
    flips = rng.random(2000) < 0.2  # 20% of the items change; a net gain of about 4 points
    treated = np.where(flips, rng.random(2000) < 0.6, control).astype(int)
    d = paired_difference([treated.tolist()], [control.tolist()])
    diffs = treated - control
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))  # the textbook paired standard error
    assert d.delta == pytest.approx(diffs.mean())
    assert d.se == pytest.approx(se, rel=0.08)
    assert d.ci_low == pytest.approx(diffs.mean() - 1.96 * se, abs=0.004)
    assert d.ci_high == pytest.approx(diffs.mean() + 1.96 * se, abs=0.004)
    assert d.detectable == pytest.approx(DETECTABLE_Z * d.se) and DETECTABLE_Z == pytest.approx(2.8016, abs=1e-4)


def test_pairing_matters_an_item_keeps_both_scores():
    # The same per-variant accuracies; perfectly correlated items leave no doubt about the sign.
    control = [0, 1] * 50
    d = paired_difference([[1] * 100], [control])
    assert d.delta == 0.5 and d.ci_low > 0.35


def test_seeds_are_averaged_and_resampled():
    d = paired_difference([[1, 1], [0, 0]], [[0, 0], [0, 0]], resamples=2000)
    assert d.delta == 0.5 and d.seeds == 2 and d.items == 2
    assert d.ci_low == 0.0 and d.ci_high == 1.0  # two seeds that disagree: the interval spans both


def test_repeatable_and_refuses_unpaired_items():
    a = paired_difference([[1, 0, 1, 0, 1]], [[0, 0, 1, 1, 0]], seed=3)
    assert a == paired_difference([[1, 0, 1, 0, 1]], [[0, 0, 1, 1, 0]], seed=3)
    with pytest.raises(ValueError, match="paired items must match"):
        paired_difference([[1, 0]], [[1]])
    with pytest.raises(ValueError, match="same, at least one"):
        paired_difference([[1]], [[1], [0]])


def test_difference_of_differences_adds_the_errors():
    a = paired_difference([[1, 1, 1, 0]], [[0, 0, 0, -1]])
    delta, low, high = difference_of_differences(a, a)
    assert (delta, low, high) == (0.0, 0.0, 0.0)


def test_a_signal_that_moves_and_one_that_does_not():
    from tokreason.experiments.reporting.statistics import unpaired_difference

    moved = unpaired_difference([0.5, 0.6, 0.55, 0.65], [0.1, 0.2, 0.15, 0.05])
    assert moved.delta == pytest.approx(0.575 - 0.125) and moved.ci_low > 0.3 and moved.significant
    flat = unpaired_difference([0.1, 0.3, 0.2, 0.2], [0.2, 0.1, 0.3, 0.2])
    assert flat.delta == pytest.approx(0.0) and flat.ci_low < 0 < flat.ci_high
    with pytest.raises(ValueError, match="at least 2"):
        unpaired_difference([1.0], [0.0, 1.0])
