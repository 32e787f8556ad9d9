"""attnrl_core.statistics: every formula against a worked example by hand or a printed table."""

import math

import numpy as np
import pytest

from attnrl_core.statistics import (
    bootstrap_interval,
    budgets_between,
    choose_method,
    interpolate,
    mean_interval,
    paired_difference,
    regularized_beta,
    round_down,
    sample_sd,
    seeds_needed,
    skewness,
    t_cdf,
    t_interval,
    t_quantile,
    t_tail,
    verdict,
)

# ------------------------------------------------------------------------ Student's t ----


@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (100, 1.984)])
def test_t_quantile_matches_the_printed_table(df, table):
    assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-table, abs=5e-4)  # symmetric


def test_t_quantile_one_sided_table_and_closed_forms():
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    # df = 1 is the Cauchy distribution: quantile tan(pi (p - 1/2))
    assert t_quantile(0.9, 1) == pytest.approx(math.tan(math.pi * 0.4), rel=1e-9)
    # df = 2: quantile (2p - 1) sqrt(2 / (1 - (2p - 1)^2))
    a = 2 * 0.975 - 1
    assert t_quantile(0.975, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-9)
    # large df tends to the normal quantile 1.959964
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_cdf_and_tail_closed_forms():
    # df = 1: 1/2 + atan(t)/pi; df = 2: 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_tail(2.262157, 9) == pytest.approx(0.05, abs=1e-6)  # the two-sided 5% point
    assert t_tail(-2.262157, 9) == pytest.approx(0.05, abs=1e-6)
    assert t_tail(0.0, 9) == 1.0 and t_tail(math.inf, 9) == 0.0


def test_regularized_beta_closed_forms():
    # I_x(a, 1) = x^a, I_x(1, b) = 1 - (1-x)^b, I_x(a, b) = 1 - I_(1-x)(b, a)
    assert regularized_beta(3.0, 1.0, 0.4) == pytest.approx(0.4**3, rel=1e-12)
    assert regularized_beta(1.0, 4.0, 0.2) == pytest.approx(1 - 0.8**4, rel=1e-12)
    assert regularized_beta(2.5, 0.5, 0.9) == pytest.approx(1 - regularized_beta(0.5, 2.5, 0.1), rel=1e-12)
    assert regularized_beta(2.0, 2.0, 0.0) == 0.0 and regularized_beta(2.0, 2.0, 1.0) == 1.0


def test_t_agrees_with_scipy_when_it_is_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 19, 50, 199, 2.5):
        for p in (0.6, 0.9, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
        for t in (-12.0, -1.0, 0.3, 2.0, 30.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)


# ---------------------------------------------------------------- intervals of a mean ----


def test_t_interval_by_hand():
    # 0.50, 0.54, 0.52: mean 0.52, sd 0.02, se 0.02 / sqrt(3) = 0.011547, t(0.975, 2) = 4.302653
    iv = t_interval([0.50, 0.54, 0.52])
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (iv.mean, iv.n, iv.method) == (pytest.approx(0.52), 3, "t")
    assert iv.low == pytest.approx(0.52 - half, abs=1e-6) and iv.high == pytest.approx(0.52 + half, abs=1e-6)
    assert iv.half_width == pytest.approx(half, abs=1e-6)
    # a 90% interval uses t(0.95, 2) = 2.919986
    assert t_interval([0.50, 0.54, 0.52], 0.90).high == pytest.approx(0.52 + 2.919986 * 0.02 / math.sqrt(3), abs=1e-6)
    # one seed: a mean, no interval; identical seeds: a zero-width one
    one = t_interval([0.4])
    assert (one.mean, one.low, one.high, one.method, one.half_width) == (0.4, None, None, "none", None)
    same = t_interval([0.3, 0.3, 0.3])
    assert same.low == pytest.approx(0.3) and same.high == pytest.approx(0.3)
    with pytest.raises(ValueError):
        t_interval([])


def test_sample_sd_and_skewness_by_hand():
    assert sample_sd([0.6, 0.7]) == pytest.approx(math.sqrt(0.005))
    assert sample_sd([0.6]) == 0.0
    # 1, 1, 1, 1, 5: mean 1.8, m2 = 2.56, m3 = 6.144, g1 = 6.144 / 2.56^1.5 = 1.5, G1 = 1.5 sqrt(20) / 3
    assert skewness([1, 1, 1, 1, 5]) == pytest.approx(1.5 * math.sqrt(20) / 3)
    assert skewness([1, 1, 1, 1, -3]) == pytest.approx(-1.5 * math.sqrt(20) / 3)  # mirrored
    assert skewness([1, 2, 3]) == pytest.approx(0.0) and skewness([2, 2, 2, 2]) == 0.0 and skewness([1, 9]) == 0.0


def test_bootstrap_is_the_percentile_interval_of_resampled_means_and_seeded():
    values = [0.50, 0.50, 0.51, 0.50, 0.70]
    iv = bootstrap_interval(values, resamples=2000, seed=3)
    # the same computation spelled out
    rng = np.random.default_rng(3)
    means = np.asarray(values)[rng.integers(0, 5, size=(2000, 5))].mean(axis=1)
    assert (iv.low, iv.high) == tuple(np.quantile(means, [0.025, 0.975]))
    assert iv.mean == pytest.approx(0.542) and iv.method == "bootstrap"
    assert bootstrap_interval(values, resamples=2000, seed=3) == iv  # same seed, same interval
    assert bootstrap_interval(values, resamples=2000, seed=4) != iv
    # bounded by the data (a mean of resampled values) and asymmetric around the skewed mean
    assert 0.50 <= iv.low < iv.mean < iv.high <= 0.70 and iv.high - iv.mean > iv.mean - iv.low
    assert bootstrap_interval([0.2]).method == "none"


def test_auto_rule_t_unless_5_to_29_seeds_highly_skewed():
    skewed = [0.50, 0.50, 0.51, 0.50, 0.70]  # G1 = 2.2
    assert choose_method(skewed) == "bootstrap" and mean_interval(skewed).method == "bootstrap"
    assert mean_interval(skewed, method="t").method == "t"
    assert mean_interval([0.50, 0.54, 0.52], method="bootstrap").method == "bootstrap"  # when asked
    assert choose_method([0.50, 0.52, 0.51, 0.49, 0.53]) == "t"  # symmetric
    assert choose_method([0.5, 0.5, 0.9]) == "t"  # 3 seeds: too few to judge the shape
    assert choose_method([0.5] * 29 + [0.9]) == "t"  # 30 seeds: the mean is about normal anyway
    assert choose_method([0.5] * 28 + [0.9]) == "bootstrap"
    with pytest.raises(ValueError):
        mean_interval(skewed, method="normal")


# ------------------------------------------------------------------- paired differences ----


def test_paired_difference_by_hand():
    a = {"0": 0.60, "1": 0.62, "2": 0.65, "7": 0.9}
    b = {"0": 0.55, "1": 0.58, "2": 0.59, "5": 0.1}
    d = paired_difference(a, b)
    # diffs 0.05, 0.04, 0.06: mean 0.05, sd 0.01, se 0.01/sqrt(3); t = 8.660254 on 2 df
    assert d.seeds == ("0", "1", "2") and d.n == 3 and d.diffs == pytest.approx((0.05, 0.04, 0.06))
    assert d.mean == pytest.approx(0.05) and d.sd == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert d.low == pytest.approx(0.05 - half, abs=1e-6) and d.high == pytest.approx(0.05 + half, abs=1e-6)
    t = 0.05 / (0.01 / math.sqrt(3))
    assert d.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)  # two-sided p on 2 df, closed form
    # B - A: the mirror image, same p
    r = paired_difference(b, a)
    assert r.mean == pytest.approx(-0.05) and r.high == pytest.approx(-d.low) and r.p == pytest.approx(d.p)


def test_paired_difference_edge_cases():
    assert paired_difference({"0": 0.5}, {"1": 0.5}).n == 0 and paired_difference({"0": 0.5}, {"1": 0.5}).mean is None
    one = paired_difference({"0": 0.6}, {"0": 0.5})
    assert one.mean == pytest.approx(0.1) and (one.sd, one.low, one.high, one.p) == (None, None, None, None)
    shift = paired_difference({"0": 0.6, "1": 0.7}, {"0": 0.5, "1": 0.6})  # every seed +0.1 exactly
    assert shift.sd == pytest.approx(0.0, abs=1e-12)
    zero = paired_difference({"0": 0.6, "1": 0.7}, {"0": 0.6, "1": 0.7})
    assert (zero.mean, zero.sd, zero.p) == (0.0, 0.0, 1.0)
    # seeds sort as numbers
    assert paired_difference({s: 1.0 for s in ("10", "2", "1")}, {s: 0.0 for s in ("10", "2", "1")}).seeds == ("1", "2", "10")


def test_seeds_needed_is_the_smallest_n_whose_half_width_beats_the_effect():
    # sd 0.02, effect 0.01: t(0.975, n-1) * 0.02 / sqrt(n) = 0.00497 at n = 18 (t = 2.1098), 0.01030 at n = 17 (t = 2.1199)
    assert seeds_needed(0.02, 0.01) == 18
    assert seeds_needed(0.02, -0.01) == 18  # the size counts, not the sign
    assert seeds_needed(0.02, 0.05) == 3  # 4.303 * 0.02 / sqrt(3) = 0.0497
    assert seeds_needed(0.0, 0.01) == 2
    assert seeds_needed(0.5, 0.001) is None  # ~ (1.97 * 500)^2 seeds: absurd
    for sd, effect in ((0.013, 0.004), (0.05, 0.02), (0.003, 0.01)):
        n = seeds_needed(sd, effect)
        assert t_quantile(0.975, n - 1) * sd / math.sqrt(n) < effect
        assert n == 2 or t_quantile(0.975, n - 2) * sd / math.sqrt(n - 1) >= effect
    with pytest.raises(ValueError):
        seeds_needed(0.1, 0.0)


def test_verdicts():
    up = paired_difference({"0": 0.60, "1": 0.62, "2": 0.65}, {"0": 0.55, "1": 0.58, "2": 0.59})
    assert verdict(up) == "better" and verdict(up, "minimize") == "worse"
    down = paired_difference({"0": 0.55, "1": 0.58, "2": 0.59}, {"0": 0.60, "1": 0.62, "2": 0.65})
    assert verdict(down) == "worse" and verdict(down, "minimize") == "better"
    # diffs 0.02, -0.01, 0.03: mean 0.01333 (observed, above the 1-point minimum), sd 0.02082
    unclear = paired_difference({"0": 0.52, "1": 0.50, "2": 0.55}, {"0": 0.50, "1": 0.51, "2": 0.52})
    assert unclear.low < 0 < unclear.high
    assert seeds_needed(unclear.sd, unclear.mean) == 12
    assert verdict(unclear) == "no difference detectable with 3 seeds; about 12 seeds would detect a difference of 1.3 points"
    # observed ~0: the stated minimum effect (1 point by default; here 2) is what the seeds are sized for
    flat = paired_difference({"0": 0.50, "1": 0.52}, {"0": 0.51, "1": 0.51})  # diffs -0.01, +0.01
    assert verdict(flat) == "no difference detectable with 2 seeds; about 11 seeds would detect a difference of 1.0 points"
    assert verdict(flat, min_effect=0.02) == f"no difference detectable with 2 seeds; about {seeds_needed(flat.sd, 0.02)} seeds would detect a difference of 2.0 points"
    noisy = paired_difference({"0": 0.40, "1": 0.60}, {"0": 0.50, "1": 0.50})
    assert verdict(noisy).endswith("more than 200 seeds would be needed to detect a difference of 1.0 points")
    # a metric that is not a rate prints in its own unit
    raw = paired_difference({"0": 3.0, "1": 5.0, "2": 4.0}, {"0": 3.5, "1": 4.0, "2": 4.5})
    assert "detect a difference of 1.0000" in verdict(raw, min_effect=1.0, scale=1.0, unit="", decimals=4)
    # enough seeds already, nothing seen: say so
    tight = paired_difference({str(s): 0.5 + 0.001 * (-1) ** s for s in range(8)}, {str(s): 0.5 for s in range(8)})
    assert verdict(tight) == "no difference detectable with 8 seeds, which would detect one of 1.0 points"
    # identical values on every seed (a coarse metric that did not move): nothing to size seeds by
    same = paired_difference({"0": 0.375, "1": 0.375}, {"0": 0.375, "1": 0.375})
    assert verdict(same) == "no difference detectable with 2 seeds: every paired difference is 0, no spread to size more seeds by"
    assert verdict(paired_difference({"0": 0.6}, {"1": 0.5})) == "no shared seeds to compare"
    assert verdict(paired_difference({"0": 0.6}, {"0": 0.5})).startswith("one shared seed")


# ----------------------------------------------------------------- curves and budgets ----


def test_interpolate_linear_between_evaluations_none_outside():
    xs, ys = [0.0, 100.0, 300.0], [0.40, 0.50, 0.60]
    assert interpolate(xs, ys, 50.0) == pytest.approx(0.45)
    assert interpolate(xs, ys, 250.0) == pytest.approx(0.575)  # 0.5 + 150/200 * 0.1
    assert interpolate(xs, ys, 0.0) == 0.40 and interpolate(xs, ys, 300.0) == 0.60
    assert interpolate(xs, ys, -1.0) is None and interpolate(xs, ys, 300.5) is None
    assert interpolate([10.0], [0.3], 10.0) == 0.3 and interpolate([], [], 0.0) is None
    assert interpolate([0.0, 5.0, 5.0, 9.0], [0.1, 0.2, 0.4, 0.5], 5.0) == 0.4  # a repeated x: the later value
    with pytest.raises(ValueError):
        interpolate([0.0, 1.0], [0.1], 0.5)


def test_budgets_are_round_and_inside_the_range():
    assert round_down(12345.0) == 12000.0 and round_down(0.0123) == pytest.approx(0.012) and round_down(-5.0) == 0.0
    assert budgets_between(0.0, 61234.0) == [20000.0, 40000.0, 61000.0]
    assert budgets_between(0.0, 61234.0, count=4) == [15000.0, 30000.0, 45000.0, 61000.0]
    assert budgets_between(0.0, 0.0) == [] and budgets_between(0.0, 3.0, count=3) == [1.0, 2.0, 3.0]
    assert budgets_between(50.0, 61.0) == [61.0]  # only what lies above low
