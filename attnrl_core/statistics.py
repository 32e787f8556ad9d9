"""Statistics for comparing training runs over seeds: intervals, paired differences, verdicts.

Pure functions of numbers (no MLflow, no Prefect): `flows/compare/summary.py` feeds them the metric of
each run. Everything is two-sided at `confidence` (95% by default).

- `t_cdf`, `t_quantile`: Student's t distribution, computed here from the regularized
  incomplete beta function (no SciPy needed; it agrees with scipy.stats.t to ~1e-10).
- `mean_interval`: the mean over seeds and its interval. The t-interval by default; the
  percentile bootstrap where the t-interval's normality assumption is clearly wrong (the rule
  is in `choose_method`) or when asked for.
- `paired_difference`: run A minus run B seed by seed over the seeds both have, its t-interval
  and two-sided p-value (the paired t-test: the seed's shared luck cancels out).
- `seeds_needed`, `verdict`: "better" / "worse", or how many seeds it would take.
- `interpolate`, `budgets_between`: a curve's value at a given x (generated tokens), linear
  between evaluations, and a few round budgets over a range.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

# ------------------------------------------------------------------- Student's t ----


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes' betacf)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (the Beta(a, b) CDF at x).

    >>> round(regularized_beta(1.0, 1.0, 0.3), 12)   # Beta(1, 1) is uniform
    0.3
    >>> round(regularized_beta(2.0, 3.0, 0.4), 6)  # 1 - (1-x)^4 - 4x(1-x)^3
    0.5248
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_tail(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's T with `df` degrees of freedom: the two-sided p-value of t.

    >>> round(t_tail(2.776445, 4), 4)   # t(0.975, 4): 5% in the two tails
    0.05
    >>> t_tail(0.0, 3)
    1.0
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's T with `df` degrees of freedom.

    >>> t_cdf(0.0, 5)
    0.5
    >>> round(t_cdf(1.0, 1), 6)         # df=1 is Cauchy: 1/2 + atan(1)/pi
    0.75
    """
    half_tail = t_tail(t, df) / 2.0
    return 1.0 - half_tail if t > 0 else half_tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p: Student's t quantile, by bisection on `t_cdf`.

    >>> [round(t_quantile(0.975, df), 3) for df in (1, 4, 9, 30)]   # the table values
    [12.706, 2.776, 2.262, 2.042]
    >>> t_quantile(0.5, 7), round(t_quantile(0.025, 4), 3)
    (0.0, -2.776)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2.0


# ------------------------------------------------------------ intervals of a mean ----


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and its interval; low = high = None when n < 2 (one seed has no
    spread to estimate). method: 't', 'bootstrap', or 'none' (n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    method: str

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2.0


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (divisor n - 1); 0.0 for fewer than two values.

    >>> round(sample_sd([0.6, 0.7]), 6)
    0.070711
    """
    n = len(values)
    if n < 2:
        return 0.0
    m = math.fsum(values) / n
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def skewness(values: Sequence[float]) -> float:
    """The adjusted Fisher-Pearson sample skewness G1 = g1 * sqrt(n(n-1)) / (n-2), where g1 =
    m3 / m2^1.5 (central moments); 0.0 for fewer than 3 values or no spread.

    >>> skewness([1, 2, 3, 4, 5])
    0.0
    >>> round(skewness([1, 1, 1, 1, 5]), 3)       # one seed far above the others
    2.236
    """
    n = len(values)
    if n < 3:
        return 0.0
    m = math.fsum(values) / n
    m2 = math.fsum((v - m) ** 2 for v in values) / n
    if m2 <= 0.0:
        return 0.0
    m3 = math.fsum((v - m) ** 3 for v in values) / n
    return m3 / m2**1.5 * math.sqrt(n * (n - 1)) / (n - 2)


# The rule for method="auto" (see choose_method)
BOOTSTRAP_MIN_N, BOOTSTRAP_MAX_N, SKEW_LIMIT = 5, 30, 1.0


def choose_method(values: Sequence[float]) -> Literal["t", "bootstrap"]:
    """The interval `mean_interval(method="auto")` uses: the percentile bootstrap when
    5 <= n < 30 and the sample is highly skewed (|G1| > 1, Bulmer's "highly skewed": one seed
    far from the others), else the t-interval.

    Why this rule: the t-interval assumes the mean over seeds is about normal. From 30 values on
    the central limit theorem makes that good enough whatever the seeds do, so t. Below 5 a
    sample cannot tell a skewed distribution from chance, and the percentile bootstrap is then
    much too narrow (it resamples 2-4 numbers, and its interval ignores the t factor: with 3
    seeds it is less than half the t-interval's width), so t as well: it is the honest, wide
    answer. In between, a strongly skewed sample makes the symmetric t-interval misplaced, and
    the bootstrap follows the data's asymmetry.

    >>> choose_method([0.50, 0.52, 0.51, 0.49, 0.53])
    't'
    >>> choose_method([0.50, 0.50, 0.51, 0.50, 0.70])
    'bootstrap'
    >>> choose_method([0.50, 0.90])     # too few to judge the shape: t
    't'
    """
    n = len(values)
    if BOOTSTRAP_MIN_N <= n < BOOTSTRAP_MAX_N and abs(skewness(values)) > SKEW_LIMIT:
        return "bootstrap"
    return "t"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean ± t(1 - alpha/2, n-1) * sd / sqrt(n), alpha = 1 - confidence.

    >>> iv = t_interval([0.50, 0.54, 0.52])     # mean 0.52, sd 0.02, t(0.975, 2) = 4.303
    >>> round(iv.mean, 4), round(iv.low, 4), round(iv.high, 4)
    (0.52, 0.4703, 0.5697)
    >>> t_interval([0.5])
    Interval(mean=0.5, low=None, high=None, n=1, method='none')
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, n, "none")
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * sample_sd(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t")


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """The percentile bootstrap: the alpha/2 and 1 - alpha/2 quantiles of the means of
    `resamples` resamples (n values drawn with replacement) from numpy's Generator(`seed`): the
    same values give the same interval.

    >>> iv = bootstrap_interval([0.50, 0.50, 0.51, 0.50, 0.70])
    >>> round(iv.mean, 3), round(iv.low, 3), round(iv.high, 3), iv.method
    (0.542, 0.5, 0.622, 'bootstrap')
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    x = np.asarray(values, dtype=float)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, n, "none")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(mean, float(low), float(high), n, "bootstrap")


def mean_interval(
    values: Sequence[float], confidence: float = 0.95, method: Literal["auto", "t", "bootstrap"] = "auto", seed: int = 0
) -> Interval:
    """The mean over seeds with its interval: `t_interval` or `bootstrap_interval`; "auto"
    picks by `choose_method`.

    >>> mean_interval([0.50, 0.54, 0.52]).method, mean_interval([0.50, 0.50, 0.51, 0.50, 0.70]).method
    ('t', 'bootstrap')
    >>> mean_interval([0.50, 0.50, 0.51, 0.50, 0.70], method="t").method
    't'
    """
    if method == "auto":
        method = choose_method(values)
    if method == "bootstrap":
        return bootstrap_interval(values, confidence, seed=seed)
    if method == "t":
        return t_interval(values, confidence)
    raise ValueError(f"method must be 'auto', 't' or 'bootstrap', got {method!r}")


# ------------------------------------------------------------ paired differences ----


@dataclass(frozen=True)
class Paired:
    """A minus B seed by seed over their shared seeds: the mean difference, the sample sd of
    the differences, the t-interval of the mean and the two-sided p-value of 'no difference'
    (None where n < 2)."""

    seeds: tuple[str, ...]
    diffs: tuple[float, ...]
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None
    p: float | None

    @property
    def n(self) -> int:
        return len(self.seeds)


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95) -> Paired:
    """A - B over the seeds both have (keys: seeds), with the paired t-interval and p-value:
    d_i = a_i - b_i, mean ± t(1 - alpha/2, n-1) * sd(d) / sqrt(n), p = P(|T| >= |mean| / (sd / sqrt(n))).

    >>> d = paired_difference({"0": 0.60, "1": 0.62, "2": 0.65, "3": 0.5}, {"0": 0.55, "1": 0.58, "2": 0.59})
    >>> d.seeds, [round(x, 2) for x in d.diffs]        # seed 3 has no partner: left out
    (('0', '1', '2'), [0.05, 0.04, 0.06])
    >>> round(d.mean, 4), round(d.sd, 4), round(d.low, 4), round(d.high, 4), round(d.p, 4)
    (0.05, 0.01, 0.0252, 0.0748, 0.0131)
    """
    seeds = tuple(sorted(set(a) & set(b), key=_seed_order))
    diffs = tuple(a[s] - b[s] for s in seeds)
    n = len(diffs)
    if n == 0:
        return Paired(seeds, diffs, None, None, None, None, None)
    mean = math.fsum(diffs) / n
    if n < 2:
        return Paired(seeds, diffs, mean, None, None, None, None)
    sd = sample_sd(diffs)
    se = sd / math.sqrt(n)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * se
    if se == 0.0:  # every seed moved by exactly the same amount
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = t_tail(mean / se, n - 1)
    return Paired(seeds, diffs, mean, sd, mean - half, mean + half, p)


MAX_SEEDS = 200


def seeds_needed(sd: float, effect: float, confidence: float = 0.95, cap: int = MAX_SEEDS) -> int | None:
    """The smallest n >= 2 with t(1 - alpha/2, n-1) * sd / sqrt(n) < |effect|: how many seeds a
    paired comparison with this spread needs before an observed difference of `effect` would
    put its interval clear of 0. None if more than `cap` (the answer would be absurd).

    This is the n at which a true difference of `effect` is detected about half the time (the
    observed mean falls on either side of it); for ~80% of the time take about twice as many.

    >>> seeds_needed(sd=0.02, effect=0.01)    # t(0.975, 17) * 0.02 / sqrt(18) = 0.00497 < 0.01; n = 17 gives 0.0103
    18
    >>> seeds_needed(sd=0.02, effect=0.05), seeds_needed(sd=0.5, effect=0.001)
    (3, None)
    """
    if effect == 0.0:
        raise ValueError("effect must be non-zero")
    q = 1.0 - (1.0 - confidence) / 2.0

    def enough(n: int) -> bool:
        return t_quantile(q, n - 1) * sd / math.sqrt(n) < abs(effect)

    if not enough(cap):
        return None
    lo, hi = 1, cap  # enough(hi); the left side shrinks as n grows, so bisect on n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def verdict(
    paired: Paired,
    direction: Literal["maximize", "minimize"] = "maximize",
    min_effect: float = 0.01,
    confidence: float = 0.95,
    scale: float = 100.0,
    unit: str = "points",
    decimals: int = 1,
) -> str:
    """'better' / 'worse' when the paired interval excludes 0 (better = higher when maximizing),
    else how many seeds would settle it: "no difference detectable with n seeds; about m seeds
    would detect a difference of d points", with m = `seeds_needed(sd, d)` and d the observed
    difference when it is at least `min_effect`, else `min_effect` (smaller differences are not
    worth the seeds). Differences print times `scale` (100: rates as percentage points).

    >>> verdict(paired_difference({"0": 0.60, "1": 0.62, "2": 0.65}, {"0": 0.55, "1": 0.58, "2": 0.59}))
    'better'
    >>> verdict(paired_difference({"0": 0.60, "1": 0.62, "2": 0.65}, {"0": 0.55, "1": 0.58, "2": 0.59}), "minimize")
    'worse'
    >>> verdict(paired_difference({"0": 0.52, "1": 0.50, "2": 0.55}, {"0": 0.50, "1": 0.51, "2": 0.52}))
    'no difference detectable with 3 seeds; about 12 seeds would detect a difference of 1.3 points'
    >>> verdict(paired_difference({"0": 0.50, "1": 0.52}, {"0": 0.51, "1": 0.51}))   # observed 0: 1 point
    'no difference detectable with 2 seeds; about 11 seeds would detect a difference of 1.0 points'
    >>> verdict(paired_difference({"0": 0.40, "1": 0.60}, {"0": 0.50, "1": 0.50}))
    'no difference detectable with 2 seeds; more than 200 seeds would be needed to detect a difference of 1.0 points'
    >>> verdict(paired_difference({"0": 0.375, "1": 0.375}, {"0": 0.375, "1": 0.375}))
    'no difference detectable with 2 seeds: every paired difference is 0, no spread to size more seeds by'
    """
    n = paired.n
    if n == 0:
        return "no shared seeds to compare"
    if n < 2 or paired.sd is None or paired.low is None or paired.high is None or paired.mean is None:
        return "one shared seed: no spread to judge by (train more seeds)"
    if paired.low > 0.0 or paired.high < 0.0:
        higher = paired.mean > 0.0
        return "better" if higher == (direction == "maximize") else "worse"
    if paired.sd == 0.0:  # every seed gave both the same value (e.g. a coarse metric that did not move)
        return f"no difference detectable with {n} seeds: every paired difference is 0, no spread to size more seeds by"
    effect = abs(paired.mean) if abs(paired.mean) >= min_effect else min_effect
    size = f"{scale * effect:.{decimals}f}{' ' + unit if unit else ''}"
    m = seeds_needed(paired.sd, effect, confidence)
    if m is not None and m <= n:
        return f"no difference detectable with {n} seeds, which would detect one of {size}"
    if m is None:
        return f"no difference detectable with {n} seeds; more than {MAX_SEEDS} seeds would be needed to detect a difference of {size}"
    return f"no difference detectable with {n} seeds; about {m} seeds would detect a difference of {size}"


# ----------------------------------------------------------------- curves and budgets ----


def interpolate(xs: Sequence[float], ys: Sequence[float], at: float) -> float | None:
    """The curve through (xs, ys) at x = `at`: linear between the two evaluations around it,
    None outside [xs[0], xs[-1]] (no extrapolation). xs must be ascending; of two
    evaluations at the same x the later counts.

    >>> interpolate([0, 100, 300], [0.40, 0.50, 0.60], 200)
    0.55
    >>> interpolate([0, 100, 300], [0.40, 0.50, 0.60], 100), interpolate([0, 100, 300], [0.40, 0.50, 0.60], 301)
    (0.5, None)
    """
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} xs but {len(ys)} ys")
    if not xs or at < xs[0] or at > xs[-1]:
        return None
    i = bisect.bisect_right(xs, at) - 1  # the last evaluation at or before `at` (the later of equal xs)
    if xs[i] == at or i == len(xs) - 1:
        return float(ys[i])
    w = (at - xs[i]) / (xs[i + 1] - xs[i])
    return round(float(ys[i]) + w * (float(ys[i + 1]) - float(ys[i])), 12)


def round_down(x: float, digits: int = 2) -> float:
    """x rounded down to `digits` significant digits.

    >>> round_down(12345.0), round_down(987.0, 1), round_down(0.0)
    (12000.0, 900.0, 0.0)
    """
    if x <= 0.0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.floor(x / step + 1e-9) * step


def budgets_between(low: float, high: float, count: int = 3) -> list[float]:
    """`count` round budgets spread over (low, high]: high * k / count for k = 1..count, each
    rounded down to 2 significant digits, kept if still above low (duplicates dropped).

    >>> budgets_between(0, 61234)
    [20000.0, 40000.0, 61000.0]
    >>> budgets_between(0, 0)
    []
    """
    out: list[float] = []
    for k in range(1, count + 1):
        b = round_down(high * k / count)
        if b > low and b <= high and b not in out:
            out.append(b)
    return out
