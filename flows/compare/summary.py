"""The tables' numbers: per group the mean and 95% interval over seeds (final, best, at chosen
iterations and at equal generated tokens), the token budgets compared at, the paired differences
to a baseline and the bands of the plots. The pure math lives in attnrl_core.statistics."""

from __future__ import annotations

import statistics
from typing import Callable, Literal, Sequence

from attnrl_core.statistics import budgets_between, mean_interval, paired_difference, sample_sd, verdict
from flows.compare.curves import RunCurve, by_group

Interval = Literal["auto", "t", "bootstrap"]


def interval_fields(prefix: str, values: Sequence[float], interval: Interval = "auto") -> dict:
    """{prefix}_mean, _std (sample std; 0 for one seed), _low, _high (the 95% interval of the
    mean; None for one seed), _runs, _interval (t, bootstrap or none); all None for no values."""
    if not values:
        return {f"{prefix}_{k}": None for k in ("mean", "std", "low", "high", "interval")} | {f"{prefix}_runs": 0}
    iv = mean_interval(list(values), method=interval)
    return {
        f"{prefix}_mean": iv.mean, f"{prefix}_std": sample_sd(list(values)), f"{prefix}_low": iv.low, f"{prefix}_high": iv.high,
        f"{prefix}_runs": iv.n, f"{prefix}_interval": iv.method,
    }


def token_range(curves: Sequence[RunCurve]) -> tuple[float, float] | None:
    """(low, high): the generated tokens every run evaluated within (the latest first evaluation,
    the earliest last one); None when they share no stretch (or logged no tokens).

    >>> a = RunCurve("a", "g", "m", "0", {0: 0.1, 2: 0.2}, {2: 500.0})
    >>> b = RunCurve("b", "h", "m", "0", {0: 0.1, 2: 0.3}, {2: 800.0})
    >>> token_range([a, b])
    (0.0, 500.0)
    """
    spans = [(min(xs), max(xs)) for xs, _ in (c.token_curve() for c in curves)]
    if not spans:
        return None
    low, high = max(s[0] for s in spans), min(s[1] for s in spans)
    return (low, high) if high > low else None


def token_budgets(curves: Sequence[RunCurve], count: int = 3) -> list[float]:
    """`count` round token budgets spread over the range every run covers (statistics.budgets_between)."""
    span = token_range(curves)
    return budgets_between(*span, count=count) if span and count > 0 else []


def tokens_label(budget: float) -> str:
    """20000 -> '20k', 1500000 -> '1.5M', 900 -> '900'.

    >>> tokens_label(20000.0), tokens_label(1_500_000.0), tokens_label(900.0), tokens_label(61000.0)
    ('20k', '1.5M', '900', '61k')
    """
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if budget >= size:
            return f"{budget / size:.3g}{suffix}"
    return f"{budget:.3g}"


def summarize(
    curves: list[RunCurve], direction: str = "maximize", at: Sequence[int] = (), budgets: Sequence[float] = (), interval: Interval = "auto"
) -> list[dict]:
    """One row per group, best final mean first. final_* and best_*: mean, sample std and 95%
    interval over the group's runs (see interval_fields); `at`: also the metric at these
    iterations (`at_<k>_*` over the runs that evaluated there); `budgets`: the metric
    interpolated at these generated-token counts (`tok_<budget>_*`, see RunCurve.at_tokens).

    >>> a = RunCurve("r1", "attnrl", "attnrl", "0", {0: 0.5, 1: 0.6, 2: 0.7}, {1: 10, 2: 20}, {1: 1.0, 2: 2.0})
    >>> b = RunCurve("r2", "attnrl", "attnrl", "1", {0: 0.5, 1: 0.8, 2: 0.6}, {1: 12, 2: 22}, {1: 1.5, 2: 3.0})
    >>> row = summarize([a, b])[0]
    >>> round(row["final_mean"], 4), round(row["final_std"], 4), row["best_mean"], row["tokens_mean"]
    (0.65, 0.0707, 0.75, 21.0)
    >>> round(row["final_low"], 4), round(row["final_high"], 4)     # 0.65 -/+ 12.706 * 0.0707 / sqrt(2)
    (0.0147, 1.2853)
    >>> row = summarize([a, b], at=[1], budgets=[10])[0]    # at 10 tokens: 0.6 (evaluated there) and 0.5 + 10/12 * 0.3
    >>> row["at_1_mean"], round(row["at_1_std"], 4), row["at_1_runs"], round(row["tok_10_mean"], 4)
    (0.7, 0.1414, 2, 0.675)
    """
    rows = []
    for name, members in by_group(curves).items():
        base = [c.points[0] for c in members if 0 in c.points]
        last = [max(c.points) for c in members]
        row = {
            "group": name,
            "method": members[0].method,
            "runs": len(members),
            "seeds": ",".join(sorted({c.seed for c in members}, key=lambda s: (len(s), s))),
            "base_mean": statistics.fmean(base) if base else None,
            **interval_fields("final", [c.final for c in members], interval),
            **interval_fields("best", [c.best(direction) for c in members], interval),
            "tokens_mean": statistics.fmean([c.x("tokens", s) for c, s in zip(members, last)]),
            "wall_s_mean": statistics.fmean([c.x("wall", s) for c, s in zip(members, last)]),
            "iterations": max(last),
            "run_ids": [c.run_id for c in members],
        }
        for k in at:
            row.update(interval_fields(f"at_{k}", [c.points[k] for c in members if k in c.points], interval))
        for b in budgets:
            values = [v for v in (c.at_tokens(b) for c in members) if v is not None]
            row.update(interval_fields(f"tok_{b:.0f}", values, interval))
        rows.append(row)
    sign = -1 if direction == "maximize" else 1
    return sorted(rows, key=lambda r: (sign * r["final_mean"], r["group"]))


def seed_values(members: Sequence[RunCurve], value: Callable[[RunCurve], float | None]) -> dict[str, float]:
    """{seed: value} over a group's runs; a seed trained more than once counts once, its runs averaged."""
    per_seed: dict[str, list[float]] = {}
    for c in members:
        v = value(c)
        if v is not None:
            per_seed.setdefault(c.seed, []).append(v)
    return {s: statistics.fmean(vs) for s, vs in per_seed.items()}


def paired_rows(
    curves: list[RunCurve],
    baseline: str,
    order: Sequence[str],
    direction: str = "maximize",
    budgets: Sequence[float] = (),
    min_effect: float = 0.01,
    rate: bool = True,
) -> list[dict]:
    """For each group in `order` but the baseline: group minus baseline over their shared seeds,
    at the final evaluation and at each token budget: the mean difference, its 95% t-interval,
    the two-sided p-value and the verdict (attnrl_core.statistics.verdict; `min_effect` in the
    metric's units, differences in points when `rate`).

    >>> a = [RunCurve(f"a{s}", "a", "m", str(s), {0: 0.5, 1: v}) for s, v in enumerate([0.60, 0.62, 0.65])]
    >>> b = [RunCurve(f"b{s}", "b", "m", str(s), {0: 0.5, 1: v}) for s, v in enumerate([0.55, 0.58, 0.59])]
    >>> row = paired_rows(a + b, "b", ["a", "b"])[0]
    >>> row["group"], row["at"], row["pairs"], round(row["diff_mean"], 4), round(row["p"], 4), row["verdict"]
    ('a', 'final', 3, 0.05, 0.0131, 'better')
    """
    groups = by_group(curves)
    points: list[tuple[str, float | None, Callable[[RunCurve], float | None]]] = [("final", None, lambda c: c.final)]
    points += [(f"{tokens_label(b)} tok", b, lambda c, b=b: c.at_tokens(b)) for b in budgets]
    scale, unit, decimals = (100.0, "points", 1) if rate else (1.0, "", 4)
    rows = []
    for name in order:
        if name == baseline:
            continue
        for label, budget, value in points:
            d = paired_difference(seed_values(groups[name], value), seed_values(groups[baseline], value))
            rows.append(
                {
                    "group": name, "baseline": baseline, "at": label, "budget": budget, "pairs": d.n, "seeds": ",".join(d.seeds),
                    "diff_mean": d.mean, "diff_sd": d.sd, "diff_low": d.low, "diff_high": d.high, "p": d.p,
                    "verdict": verdict(d, direction, min_effect, scale=scale, unit=unit, decimals=decimals),  # type: ignore[arg-type]
                }
            )
    return rows


def group_band(members: list[RunCurve], axis: str, interval: Interval = "auto") -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, mean, low, high) over the steps every member evaluated: x is the members' mean x, and
    low-high the 95% interval of the mean over them (mean_interval; the mean itself for one run).

    >>> a = RunCurve("r1", "g", "m", "0", {0: 0.2, 2: 0.4}, {2: 100.0})
    >>> b = RunCurve("r2", "g", "m", "1", {0: 0.4, 2: 0.8, 4: 0.9}, {2: 300.0, 4: 500.0})
    >>> [[round(v, 4) for v in seq] for seq in group_band([a, b], "tokens")]   # 12.706 * sd / sqrt(2)
    [[0.0, 200.0], [0.3, 0.6], [-0.9706, -1.9412], [1.5706, 3.1412]]
    """
    steps = sorted(set.intersection(*(set(c.points) for c in members)))
    xs = [statistics.fmean([c.x(axis, s) for c in members]) for s in steps]
    ivs = [mean_interval([c.points[s] for c in members], method=interval) for s in steps]
    return xs, [iv.mean for iv in ivs], [iv.mean if iv.low is None else iv.low for iv in ivs], [iv.mean if iv.high is None else iv.high for iv in ivs]
