"""Side-by-side comparison of finished training runs: ablations and baselines over seeds.

    attnrl compare --experiment ablations-tiny [--metric eval/heldout/avg_at_1] [--baseline treerl]
    attnrl compare --suite experiments/ablations/suite.yaml --workers 2   # first run what is missing

Runs are grouped by their `ablation` tag (set by the suite runner) or else their `method` tag.
Per group: the mean over seeds and its 95% interval (attnrl_core.statistics.mean_interval:
the t-interval, or the percentile bootstrap for 5-29 highly skewed seeds or when asked) of the
metric's final value and of its best value over the training evaluations (the base evaluation
at step 0 is shown apart), plus generated tokens and wall-clock at the end.

At equal generated tokens: each run's metric interpolated (linearly between its evaluations) at
a few round token budgets inside the range every run covers, with the same intervals. With a
baseline group, every other group gets the paired difference to it over the seeds both have
(final and at each budget): its t-interval, p-value and verdict (better / worse / how many seeds
would tell). Three PNG plots show the metric against iteration, generated tokens and wall-clock
seconds: one line per group (mean over seeds) in its 95% band. The table (CSV + JSON), the
paired differences (CSV), the plots and one self-contained HTML report holding all of them are
logged to a new run of kind "compare" in the experiment. Sweep trials (tag `sweep`) and
unfinished, failed or pruned runs are left out.

A suite (`ablations_flow`) trains its missing config x seed runs in child processes, K at a time.
"""

from __future__ import annotations

import base64
import csv
import ctypes
import html
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal, Sequence

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attnrl_core.config import load_config, read_yaml_mapping, spec_error
from attnrl_core.errors import AttnRLError
from attnrl_core.statistics import budgets_between, interpolate, mean_interval, paired_difference, sample_sd, verdict
from flows import RUNS_DIR, tracking

TOKENS = "progress/generated_tokens"
WALL = "progress/wall_s"
X_AXES = {"iteration": "iteration", "tokens": "generated tokens", "wall": "wall-clock seconds"}
Interval = Literal["auto", "t", "bootstrap"]


@dataclass
class RunCurve:
    """One run's metric by step, with the tokens and wall-clock it had spent at each step."""

    run_id: str
    group: str
    method: str
    seed: str
    points: dict[int, float]  # step -> metric value (step 0 = the base policy)
    tokens: dict[int, float] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)

    def x(self, axis: str, step: int) -> float:
        if axis == "iteration":
            return float(step)
        spent = self.tokens if axis == "tokens" else self.wall
        return spent.get(step, 0.0)  # step 0 is before any generation or training

    @property
    def final(self) -> float:
        return self.points[max(self.points)]

    def best(self, direction: str) -> float:
        trained = [v for s, v in self.points.items() if s > 0] or list(self.points.values())
        return max(trained) if direction == "maximize" else min(trained)

    def token_curve(self) -> tuple[list[float], list[float]]:
        """(generated tokens, metric) at each evaluation, in step order."""
        steps = sorted(self.points)
        return [self.x("tokens", s) for s in steps], [self.points[s] for s in steps]

    def at_tokens(self, budget: float) -> float | None:
        """The metric after `budget` generated tokens: linear between the evaluations around it,
        None outside the tokens this run evaluated at.

        >>> RunCurve("r", "g", "m", "0", {0: 0.4, 1: 0.5, 2: 0.7}, {1: 100.0, 2: 300.0}).at_tokens(200)
        0.6
        """
        xs, ys = self.token_curve()
        return interpolate(xs, ys, budget)


def group_of(tags: dict) -> str:
    return tags.get("ablation") or tags.get("method") or "unknown"


def by_group(curves: Sequence[RunCurve]) -> dict[str, list[RunCurve]]:
    groups: dict[str, list[RunCurve]] = {}
    for c in curves:
        groups.setdefault(c.group, []).append(c)
    return groups


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {int(m.step): m.value for m in client.get_metric_history(run_id, key)}


def load_curves(client: MlflowClient, experiment_id: str, metric: str) -> list[RunCurve]:
    """Every finished training run of the experiment that logged `metric` (sweep trials excluded)."""
    runs = client.search_runs(
        [experiment_id], filter_string="tags.kind = 'train' and attributes.status = 'FINISHED'", max_results=5000,
        order_by=["attributes.start_time ASC"],
    )
    curves = []
    for run in runs:
        if "sweep" in run.data.tags or metric not in run.data.metrics:
            continue
        rid = run.info.run_id
        curves.append(
            RunCurve(
                run_id=rid, group=group_of(run.data.tags), method=run.data.tags.get("method", "?"), seed=run.data.tags.get("seed", "?"),
                points=_history(client, rid, metric), tokens=_history(client, rid, TOKENS), wall=_history(client, rid, WALL),
            )
        )
    return curves


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


def plot(
    curves: list[RunCurve], axis: str, metric: str, title: str, path: Path, interval: Interval = "auto", bounds: tuple[float, float] | None = None
) -> Path:
    """One line per group (mean over seeds) in a light band of its 95% interval, written as PNG;
    `bounds` clips the bands (a rate's lie in [0, 1]; two seeds' t-intervals are wide)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, (name, members) in enumerate(sorted(by_group(curves).items())):
        xs, mean, lo, hi = group_band(members, axis, interval)
        if bounds is not None:
            lo, hi = [max(bounds[0], v) for v in lo], [min(bounds[1], v) for v in hi]
        color = colors(i % 10)
        ax.plot(xs, mean, marker="o", markersize=3, linewidth=1.8, color=color, label=f"{name} (n={len(members)})")
        if len(members) > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel(X_AXES[axis])
    ax.set_ylabel(metric)
    ax.set_title(title + "\n(band: 95% interval of the mean over seeds)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def slug(text: str) -> str:
    """'eval/heldout/avg_at_1' -> 'eval-heldout-avg_at_1': a file-name-safe metric name."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


# ------------------------------------------------------------------------ formatting ----


def fmt_value(value: float | None, rate: bool) -> str:
    """A metric value: a rate in % with one decimal, anything else with 4 significant digits."""
    if value is None:
        return "-"
    text = f"{100 * value:.1f}" if rate else f"{value:.4g}"
    return text[1:] if re.fullmatch(r"-0(\.0*)?", text) else text  # no "-0.0"


def fmt_interval(mean: float | None, low: float | None, high: float | None, rate: bool) -> str:
    """'54.3 [53.1,55.5]': a mean and its interval ('54.3' alone for one seed).

    >>> fmt_interval(0.543, 0.531, 0.555, True), fmt_interval(0.5, None, None, True), fmt_interval(None, None, None, True)
    ('54.3 [53.1,55.5]', '50.0', '-')
    """
    if mean is None:
        return "-"
    if low is None or high is None:
        return fmt_value(mean, rate)
    return f"{fmt_value(mean, rate)} [{fmt_value(low, rate)},{fmt_value(high, rate)}]"


def fmt_diff(mean: float | None, low: float | None, high: float | None, rate: bool) -> str:
    """'+1.2 ±2.0': a paired difference and the half-width of its (symmetric) t-interval.

    >>> fmt_diff(0.012, -0.008, 0.032, True), fmt_diff(-0.082, -0.125, -0.039, True), fmt_diff(0.01, None, None, True)
    ('+1.2 ±2.0', '-8.2 ±4.3', '+1.0')
    """
    if mean is None:
        return "-"
    text = fmt_value(mean, rate)
    text = text if text.startswith("-") or text == fmt_value(0.0, rate) else "+" + text
    if low is None or high is None:
        return text
    return f"{text} ±{fmt_value((high - low) / 2, rate)}"


def fmt_p(p: float | None) -> str:
    """'0.013', '<0.001', '-'."""
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


TABLE_COLUMNS = [
    "group", "method", "runs", "seeds", "iterations", "base_mean", "final_mean", "final_std", "final_low", "final_high", "final_interval",
    "best_mean", "best_std", "best_low", "best_high", "best_interval", "tokens_mean", "wall_s_mean",
]
PAIRED_COLUMNS = ["group", "baseline", "at", "budget", "pairs", "seeds", "diff_mean", "diff_sd", "diff_low", "diff_high", "p", "verdict"]
PART_COLUMNS = ("mean", "std", "low", "high", "runs", "interval")


# ------------------------------------------------------------------------ the report ----

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 70em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: right; vertical-align: top; }
th { background: #f6f6f6; } td.name, th.name, td.text { text-align: left; } td.text { max-width: 30em; }
.better { color: #11703a; font-weight: 600; } .worse { color: #a3201a; font-weight: 600; } .meta, .note { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,), classes: Sequence[Sequence[str]] | None = None) -> str:
    """An HTML table of already formatted cells (escaped here); `text_columns` align left."""
    head = "".join(f'<th class="name">{html.escape(h)}</th>' if i in text_columns else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            css = " ".join(filter(None, [("name" if i == 0 else "text") if i in text_columns else "", classes[r][i] if classes else ""]))
            cells.append(f'<td class="{css}">{html.escape(cell)}</td>' if css else f"<td>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def report_html(summary: dict, plots: dict[str, Path]) -> str:
    """One self-contained HTML page: the tables, the paired verdicts, the plots (base64 PNG in
    the page) and the runs compared. Nothing is fetched from anywhere when it is opened."""
    rate, rows, budgets, at = summary["rate"], summary["rows"], summary["budgets"], summary["at"]
    unit = " (in %)" if rate else ""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(summary['experiment'])}: {esc(summary['metric'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(summary['experiment'])}: {esc(summary['metric'])}</h1>",
        f'<p class="meta">{esc(summary["created"])} &middot; commit {esc(summary["git_commit"])} &middot; MLflow compare run '
        f"{esc(summary['mlflow_run_id'])} &middot; {sum(r['runs'] for r in rows)} finished runs in {len(rows)} groups &middot; "
        f"{'higher' if summary['direction'] == 'maximize' else 'lower'} is better</p>",
        f"<h2>Per method: mean [95% interval] over seeds{unit}</h2>",
    ]
    header = ["method / ablation", "runs", "seeds", "base", *(f"it {k}" for k in at), "final", "best", "tokens", "wall s", "interval"]
    cells = [
        [
            r["group"], str(r["runs"]), r["seeds"], fmt_value(r["base_mean"], rate),
            *(fmt_interval(r[f"at_{k}_mean"], r[f"at_{k}_low"], r[f"at_{k}_high"], rate) for k in at),
            fmt_interval(r["final_mean"], r["final_low"], r["final_high"], rate), fmt_interval(r["best_mean"], r["best_low"], r["best_high"], rate),
            f"{r['tokens_mean'] / 1000:.1f}k", f"{r['wall_s_mean']:.0f}", r["final_interval"] or "-",
        ]
        for r in rows
    ]
    parts.append(_html_table(header, cells, text_columns=(0, 2)))
    parts.append(
        '<p class="note">final: the last evaluation; best: the best training evaluation (the base at iteration 0 is shown apart); '
        "tokens and wall: at the end. interval: t = Student t-interval, bootstrap = percentile bootstrap (chosen for 5-29 highly "
        "skewed seeds, |skewness| &gt; 1), none = one seed.</p>"
    )
    if budgets:
        parts.append(f"<h2>At equal generated tokens: mean [95% interval]{unit}</h2>")
        header = ["method / ablation", "runs", *(f"{tokens_label(b)} tokens" for b in budgets)]
        cells = [[r["group"], str(r["runs"]), *(fmt_interval(r[f"tok_{b:.0f}_mean"], r[f"tok_{b:.0f}_low"], r[f"tok_{b:.0f}_high"], rate) for b in budgets)] for r in rows]
        parts.append(_html_table(header, cells))
        parts.append(
            '<p class="note">Each run\'s metric interpolated linearly between its evaluations at these budgets, which lie inside '
            "the range of generated tokens every run compared here evaluated at.</p>"
        )
    if summary["baseline"]:
        parts.append(f"<h2>Paired differences vs {esc(summary['baseline'])} over shared seeds{' (in points)' if rate else ''}</h2>")
        header = ["method / ablation", "at", "pairs", "difference [95% interval]", "p", "verdict"]
        cells, classes = [], []
        for p in summary["paired"]:
            cells.append([p["group"], p["at"], str(p["pairs"]), fmt_interval(p["diff_mean"], p["diff_low"], p["diff_high"], rate), fmt_p(p["p"]), p["verdict"]])
            classes.append(["", "", "", "", "", p["verdict"] if p["verdict"] in ("better", "worse") else ""])
        parts.append(_html_table(header, cells, text_columns=(0, 1, 5), classes=classes))
        parts.append(
            '<p class="note">Each seed\'s run minus the baseline\'s run of the same seed; the mean of those differences with its '
            "Student t-interval and the two-sided paired t-test p-value. better / worse: the interval excludes 0. Otherwise "
            f"the number of seeds at which a difference of the observed size (or the minimum effect, {fmt_value(summary['min_effect'], rate)}"
            f"{' points' if rate else ''}, if smaller) would clear 0 with the seen spread: detected about half the time; "
            "twice as many seeds detect it about 80% of the time.</p>"
        )
    parts.append("<h2>Curves</h2>")
    for axis, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f'<img alt="{esc(summary["metric"])} vs {esc(X_AXES[axis])}" src="data:image/png;base64,{data}">')
    parts.append("<h2>Runs compared</h2>")
    cells = [[r["group"], r["seed"], r["run_id"], fmt_value(r["final"], rate)] for r in summary["runs"]]
    parts.append(_html_table(["method / ablation", "seed", "MLflow run", "final"], cells, text_columns=(0, 2)))
    parts.append("</body></html>")
    return "\n".join(parts)


def compare(
    experiment: str,
    metric: str = "eval/heldout/avg_at_1",
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    direction: Literal["maximize", "minimize"] = "maximize",
    at: Sequence[int] = (),
    baseline: str | None = None,
    interval: Interval = "auto",
    min_effect: float = 0.01,
    budgets: int = 3,
) -> dict:
    """Summarise and plot the experiment's finished runs; log it all to a 'compare' run.
    `at`: iterations whose metric values join the table (see `summarize`); `budgets`: how many
    token budgets to compare at (0: none); `baseline`: a group to pair the others with (see
    `paired_rows`, `min_effect` in the metric's units); `interval`: auto, t or bootstrap.

    Returns {'rows': one dict per group, 'paired': one dict per group x point (empty without a
    baseline), 'budgets', 'rate' (every value in [0, 1]: shown in %), 'plots': {axis: png path},
    'table': csv path, 'report': html path, 'mlflow_run_id': the compare run, 'out_dir': folder}.
    """
    uri = tracking.resolve_uri(tracking_uri)
    tracking.preflight(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AttnRLError(f"No MLflow experiment named {experiment!r} in {uri}; it holds: {', '.join(names) or 'none'}.")
    curves = load_curves(client, exp.experiment_id, metric)
    if not curves:
        raise AttnRLError(
            f"Experiment {experiment!r} has no finished training run that logged {metric!r} (sweep trials are left out). "
            "Train some runs first (e.g. attnrl compare --suite experiments/ablations/suite.yaml), or pass another --metric."
        )
    groups = by_group(curves)
    if baseline is not None and baseline not in groups:
        raise AttnRLError(f"Baseline {baseline!r} is no group of experiment {experiment!r}; its groups: {', '.join(sorted(groups))}.")
    rate = all(0.0 <= v <= 1.0 for c in curves for v in c.points.values())
    token_points = token_budgets(curves, budgets)
    rows = summarize(curves, direction, at, token_points, interval)
    paired = paired_rows(curves, baseline, [r["group"] for r in rows], direction, token_points, min_effect, rate) if baseline else []

    out = Path(out_dir) if out_dir is not None else RUNS_DIR / "compare" / slug(experiment)
    out.mkdir(parents=True, exist_ok=True)
    bounds = (0.0, 1.0) if rate else None
    plots = {
        axis: plot(curves, axis, metric, f"{experiment}: {metric} vs {X_AXES[axis]}", out / f"{slug(metric)}_vs_{axis}.png", interval, bounds)
        for axis in X_AXES
    }
    columns = TABLE_COLUMNS + [f"{p}_{part}" for p in [*(f"at_{k}" for k in at), *(f"tok_{b:.0f}" for b in token_points)] for part in PART_COLUMNS]
    table = out / f"{slug(metric)}.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    files = [*plots.values(), table]
    paired_table = None
    if baseline:
        paired_table = out / f"{slug(metric)}_vs_{slug(baseline)}.csv"
        with paired_table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PAIRED_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(paired)
        files.append(paired_table)

    mlflow.set_tracking_uri(uri)
    run = client.create_run(
        exp.experiment_id, run_name=f"compare-{slug(metric)}",
        tags={"kind": "compare", "metric": metric, "groups": ",".join(r["group"] for r in rows), "git_commit": tracking.git_commit(),
              **({"baseline": baseline} if baseline else {})},
    )
    rid = run.info.run_id
    try:
        summary = {
            "experiment": experiment, "metric": metric, "direction": direction, "rate": rate, "interval": interval, "confidence": 0.95,
            "at": list(at), "budgets": token_points, "baseline": baseline, "min_effect": min_effect, "rows": rows, "paired": paired,
            "runs": [{"group": c.group, "seed": c.seed, "run_id": c.run_id, "final": c.final} for c in curves],
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git_commit": tracking.git_commit(), "mlflow_run_id": rid,
        }
        (out / f"{slug(metric)}.json").write_text(json.dumps(summary, indent=1))
        report = out / "report.html"
        report.write_text(report_html(summary, plots))
        for path in [*files, out / f"{slug(metric)}.json", report]:
            client.log_artifact(rid, str(path), artifact_path="compare")
    except BaseException:
        client.set_terminated(rid, status="FAILED")
        raise
    client.set_terminated(rid, status="FINISHED")
    return {
        "rows": rows, "paired": paired, "budgets": token_points, "rate": rate, "plots": {k: str(v) for k, v in plots.items()}, "table": str(table),
        "paired_table": None if paired_table is None else str(paired_table), "report": str(report), "mlflow_run_id": rid, "out_dir": str(out),
    }


# ------------------------------------------------------------------------ the suite ----


class SuiteSpec(BaseModel):
    """An ablation suite: configs x seeds, e.g. experiments/ablations/suite.yaml."""

    model_config = ConfigDict(extra="forbid")
    configs: list[str] = Field(min_length=1, description="Config files (relative to the suite file); the file stem names the ablation.")
    seeds: list[int] = Field(min_length=1, description="Seeds to run each config with.")
    overrides: list[str] = Field(default_factory=list, description="--set overrides applied to every run.")
    metric: str = Field("eval/heldout/avg_at_1", min_length=1, description="The metric the comparison reports.")


def load_suite(path: str | Path, seeds: list[int] | None = None, overrides: list[str] | None = None) -> tuple[SuiteSpec, list[tuple[str, Path]], str]:
    """(spec, [(ablation name, config path)], experiment); every config is checked up front and
    all must share one experiment name, so the comparison sees every run."""
    path = Path(path)
    if not path.is_file():
        raise AttnRLError(f"Suite file {path} does not exist (see experiments/ablations/suite.yaml).")
    try:
        spec = SuiteSpec.model_validate(read_yaml_mapping(path, what="Suite file"))
    except ValidationError as exc:
        raise spec_error(exc, "suite file", str(path), "experiments/ablations/suite.yaml") from None
    if seeds:
        spec.seeds = list(seeds)
    spec.overrides = spec.overrides + list(overrides or [])
    entries = [(Path(c).stem, path.parent / c) for c in spec.configs]
    names = {name: load_config(cfg, spec.overrides).name for name, cfg in entries}
    if len(set(names.values())) != 1:
        raise AttnRLError(f"Suite file {path}: its configs must share one experiment `name` to be compared; they have {names}.")
    return spec, entries, next(iter(names.values()))


@dataclass
class SuiteJob:
    """One config x seed of a suite and the run MLflow holds for it: `run_id` with `status`
    FINISHED (skip it), RUNNING / FAILED / KILLED (resume it), or None (train it)."""

    ablation: str
    seed: int
    config: Path
    overrides: list[str]
    config_hash: str
    run_id: str | None = None
    status: str | None = None

    @property
    def name(self) -> str:
        return f"{self.ablation}-s{self.seed}"

    @property
    def action(self) -> Literal["skip", "resume", "train"]:
        return "skip" if self.status == "FINISHED" else "resume" if self.run_id else "train"

    def runs_filter(self, with_hash: bool = True) -> str:
        found = f"tags.kind = 'train' and tags.ablation = '{self.ablation}' and tags.seed = '{self.seed}'"
        return found + (f" and tags.config_hash = '{self.config_hash}'" if with_hash else "")


def plan_suite(client: MlflowClient, experiment_id: str, spec: SuiteSpec, entries: list[tuple[str, Path]]) -> list[SuiteJob]:
    """Every config x seed with what to do: a run with its tags (ablation, seed, config hash)
    that FINISHED means skip; else the newest unfinished one is resumed; else train."""
    jobs = []
    for name, cfg_path in entries:
        for seed in spec.seeds:
            sets = spec.overrides + [f"seed={seed}"]
            job = SuiteJob(name, seed, cfg_path, sets, load_config(cfg_path, sets).hash())
            found = client.search_runs([experiment_id], filter_string=job.runs_filter(), order_by=["attributes.start_time DESC"], max_results=100)
            done = [r for r in found if r.info.status == "FINISHED"]
            pick = done[0] if done else (found[0] if found else None)
            if pick is not None:
                job.run_id, job.status = pick.info.run_id, pick.info.status
            jobs.append(job)
    return jobs


# -- child processes --------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h
REPO_ROOT = Path(__file__).resolve().parents[1]


def _die_with_parent() -> Callable[[], None] | None:
    """The preexec_fn of a child: on Linux prctl(PR_SET_PDEATHSIG, SIGKILL), so the kernel kills
    the child when the parent dies, however it dies (kill -9 included); None elsewhere, where only
    the parent's own cleanup (stop_children) ends them. libc is loaded here, in the parent: the
    child calls one function between fork and exec and imports nothing."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed: go at once
            os._exit(1)

    return preexec


def start_child(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """Start `cmd` with its output in `log_path` (appended), in a process group of its own (so
    its helpers, e.g. Prefect's temporary API server, can be stopped with it), killed by the
    kernel if this process dies (`_die_with_parent`).

    The parent-death signal fires when the THREAD that started the child ends, so children are
    started from the thread that waits for them (the suite's, the main thread under Prefect).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent()
        )


def exited(proc: subprocess.Popen) -> bool:
    """True once the child has exited, without reaping it: its pid (= its group id) stays ours
    until `reap`, so signalling the group cannot hit a stranger that got the pid."""
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap(proc: subprocess.Popen) -> int:
    """SIGKILL what is left of the child's process group (the helpers of a child that died
    abruptly), then collect the child's exit code."""
    _signal_group(proc, signal.SIGKILL)
    return proc.wait()


def stop_children(procs: Sequence[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM to each running child's group (a training run stops at its next phase boundary,
    KILLED, and its helpers stop: resumable next time), SIGKILL to whatever still runs after
    `grace_s` (its run stays RUNNING: resumable as well)."""
    for p in procs:
        if not exited(p):
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        while not exited(p) and time.monotonic() < deadline:
            time.sleep(0.1)
        reap(p)


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_env(threads: int, prefect_home: Path) -> dict:
    """A child's environment: `threads` intra-op threads for torch (OMP_NUM_THREADS, read when
    torch starts; MKL too), a Prefect home of its own (its temporary API server and database:
    killing one child cannot take down or share another's), the parent's Prefect API if one is
    configured (a real server sees every child's flow runs), this checkout on PYTHONPATH, and the
    same runs/ folder."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PREFECT_HOME"] = str(prefect_home)
    env["ATTNRL_HOME"] = str(RUNS_DIR)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if api.url and "PREFECT_API_URL" not in env:  # set in the parent's profile, which the new home lacks
        env["PREFECT_API_URL"] = str(api.url)
        if api.key:
            env["PREFECT_API_KEY"] = api.key.get_secret_value()
    return env


def train_child(argv: list[str]) -> int:
    """Entry point of a suite's training child: train_flow(**the JSON file argv[0]), quiet,
    tagged with its ablation and suite; a user error is one line on stderr and exit code 2.
    (`attnrl train` has no option for tags; a resumed run goes through `attnrl resume`.)"""
    args = json.loads(Path(argv[0]).read_text())
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        from flows.train import train_flow

        result = train_flow(
            args["config"], args["overrides"], run_name=args["run_name"], tracking_uri=args["tracking_uri"], quiet=True, extra_tags=args["extra_tags"]
        )
    except AttnRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args["result"]).write_text(json.dumps({"run_id": result["run_id"]}))
    print(f"run {result['run_id']} finished")
    return 0


@dataclass
class ChildTask:
    """One command for the pool: its name (log and Prefect home are named after it)."""

    name: str
    what: str  # for the progress line: "train", "resume <run id>", "warm start"
    cmd: list[str]
    on_exit: Callable[[int, float], None]  # (exit code, seconds)


def run_pool(tasks: Sequence[ChildTask], workers: int, threads: int, home: Path, say: Callable[[str], None]) -> None:
    """Run the tasks' commands as children, `workers` at a time, each with `threads` threads and
    its own Prefect home under `home`/prefect (removed when it exits), its output in
    `home`/logs/<name>.log. Ctrl-C or SIGTERM here stops every child (stop_children) and raises;
    a kill -9 here kills them through their parent-death signal."""
    pending = list(tasks)[::-1]
    running: dict[subprocess.Popen, tuple[ChildTask, float, Path]] = {}
    on_term = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum, frame):
            raise SystemExit(128 + signum)

        on_term = signal.signal(signal.SIGTERM, terminate)
    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.pop()
                prefect_home = home / "prefect" / task.name
                shutil.rmtree(prefect_home, ignore_errors=True)  # left by a parent that was killed
                prefect_home.mkdir(parents=True)
                log = home / "logs" / f"{task.name}.log"
                proc = start_child(task.cmd, child_env(threads, prefect_home), log)
                running[proc] = (task, time.monotonic(), prefect_home)
                say(f"suite: {task.name}: {task.what} started (pid {proc.pid}, {threads} thread{'s' * (threads > 1)}; log {log})")
            for proc in [p for p in running if exited(p)]:
                task, started, prefect_home = running.pop(proc)
                code = reap(proc)
                shutil.rmtree(prefect_home, ignore_errors=True)
                task.on_exit(code, time.monotonic() - started)
            time.sleep(0.2)
    finally:
        stop_children(list(running))
        for task, _, prefect_home in running.values():
            shutil.rmtree(prefect_home, ignore_errors=True)
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_suite_jobs(client: MlflowClient, experiment_id: str, jobs: list[SuiteJob], uri: str, workers: int, suite: str, quiet: bool = False) -> tuple[list[dict], list[dict]]:
    """Skip the finished jobs; build the base policies the rest need and the cache lacks
    (`attnrl warmstart`, once per base, before any training: two children must not build one
    base at once); then train (train_child) or resume (`attnrl resume <run id>`) the rest,
    `workers` at a time with cores // workers threads each. Returns (runs, failed)."""
    home = RUNS_DIR / "suites" / slug(suite)
    threads = max(1, cpu_count() // workers)
    say: Callable[[str], None] = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results: dict[str, dict] = {}
    failed: list[dict] = []
    todo = []
    for job in jobs:
        if job.action == "skip":
            results[job.name] = {"ablation": job.ablation, "seed": job.seed, "run_id": job.run_id, "status": "skipped (finished before)"}
        else:
            todo.append(job)

    def fail(job: SuiteJob, error: str, log: Path) -> None:
        tail = _log_tail(log)
        failed.append({"ablation": job.ablation, "seed": job.seed, "error": error + (f": {tail}" if tail else "") + f" (log {log})"})

    # 1. base policies: one warm start per missing cache entry
    bases: dict[Path, list[SuiteJob]] = {}
    for job in todo:
        if job.action == "train":
            cfg = load_config(job.config, job.overrides)
            if not cfg.model.path:
                from flows.warmstart import base_path  # imports the training stack: only when a base may be missing

                if not (base_path(cfg) / "warmstart.json").is_file():
                    bases.setdefault(base_path(cfg), []).append(job)
    blocked: set[str] = set()

    def base_done(path: Path, waiting: list[SuiteJob], name: str):
        def on_exit(code: int, seconds: float) -> None:
            say(f"suite: {name} {'done' if code == 0 else f'FAILED (exit code {code})'} after {seconds:.0f} s")
            if code != 0:
                for job in waiting:
                    blocked.add(job.name)
                    fail(job, f"the warm start of its base policy failed (exit code {code})", home / "logs" / f"{name}.log")

        return on_exit

    warm = []
    for path, waiting in bases.items():
        first, name = waiting[0], f"warmstart-{path.name}"
        cmd = [sys.executable, "-m", "flows.cli", "warmstart", "--config", str(first.config), *[a for s in first.overrides for a in ("--set", s)]]
        warm.append(ChildTask(name, "warm start", cmd + ["--quiet", "--tracking-uri", uri], base_done(path, waiting, name)))
    run_pool(warm, workers, threads, home, say)

    # 2. the training runs
    def job_done(job: SuiteJob, result: Path):
        def on_exit(code: int, seconds: float) -> None:
            log = home / "logs" / f"{job.name}.log"
            started_ms = int((time.time() - seconds) * 1000)
            if job.action == "resume":
                run_id = job.run_id
            elif result.is_file():  # the child says which run it trained
                run_id = json.loads(result.read_text())["run_id"]
            else:  # it died: its run, if it got as far as creating one
                found = client.search_runs(
                    [experiment_id], filter_string=f"attributes.run_name = '{job.name}' and {job.runs_filter(with_hash=False)} and attributes.start_time >= {started_ms - 60_000}",
                    order_by=["attributes.start_time DESC"], max_results=1,
                )
                run_id = found[0].info.run_id if found else None
            status = client.get_run(run_id).info.status if run_id else None
            ok = code == 0 and status == "FINISHED"
            say(f"suite: {job.name} {'done' if ok else f'FAILED (exit code {code}, run {status})'} after {seconds:.0f} s")
            if ok:
                results[job.name] = {"ablation": job.ablation, "seed": job.seed, "run_id": run_id, "status": "resumed" if job.action == "resume" else "trained"}
            else:
                fail(job, f"exit code {code}, MLflow run {run_id} {status or 'not created'}", log)

        return on_exit

    tasks = []
    for job in todo:
        if job.name in blocked:
            continue
        result = home / "args" / f"{job.name}.result.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
        if job.action == "resume":
            cmd = [sys.executable, "-m", "flows.cli", "resume", str(job.run_id), "--quiet", "--tracking-uri", uri]
        else:
            args = {
                "config": str(job.config.resolve()), "overrides": job.overrides, "run_name": job.name, "tracking_uri": uri,
                "extra_tags": {"ablation": job.ablation, "suite": suite}, "result": str(result),
            }
            args_path = home / "args" / f"{job.name}.json"
            args_path.write_text(json.dumps(args, indent=1))
            cmd = [sys.executable, "-c", "import sys; from flows.compare import train_child; sys.exit(train_child(sys.argv[1:]))", str(args_path)]
        tasks.append(ChildTask(job.name, f"resume {job.run_id}" if job.action == "resume" else "train", cmd, job_done(job, result)))
    run_pool(tasks, workers, threads, home, say)
    return [results[j.name] for j in jobs if j.name in results], failed


@flow(name="ablations")
def ablations_flow(
    suite_path: str,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    quiet: bool = False,
    workers: int = 1,
) -> dict:
    """Run every config x seed of the suite that has no finished run yet, tagged
    ablation=<config stem>, suite=<suite stem>: `workers` child processes at a time, each with
    cores // workers torch threads (OMP_NUM_THREADS) and its own PREFECT_HOME. A config x seed
    with a FINISHED run is never trained again; one whose run is RUNNING (its process died),
    FAILED or KILLED is resumed from its checkpoint with `attnrl resume <run id>`, in the same
    MLflow run. (A suite is run by one process at a time: a RUNNING run is taken to be dead.)

    The children die with this process: each is started with the Linux parent-death signal
    (prctl(PR_SET_PDEATHSIG, SIGKILL) through ctypes in preexec_fn, see `start_child`), in its own
    process group, which Ctrl-C / SIGTERM here stops (stop_children: their runs end KILLED or
    stay RUNNING, both resumed next time) and which is killed once a child exits (what a child
    left behind goes with it). Output: runs/suites/<suite>/logs/<ablation>-s<seed>.log.

    Returns {'experiment', 'metric', 'runs': [{'ablation', 'seed', 'run_id', 'status'}], 'failed': [...]};
    a run that fails is reported (with the tail of its log) and the suite goes on with the others.
    """
    if workers < 1:
        raise AttnRLError(f"workers must be >= 1, got {workers}.")
    spec, entries, experiment = load_suite(suite_path, seeds, overrides)
    uri = tracking.resolve_uri(tracking_uri)
    experiment_id = tracking.setup(uri, experiment)
    client = MlflowClient(uri)
    jobs = plan_suite(client, experiment_id, spec, entries)
    runs, failed = run_suite_jobs(client, experiment_id, jobs, uri, workers, Path(suite_path).stem, quiet)
    return {"experiment": experiment, "metric": spec.metric, "runs": runs, "failed": failed}
