"""What a comparison shows: the PNG plots, file-name-safe names, the formatting of values,
intervals and differences (the CLI's printed tables use it too), the CSV tables' columns and
writing, and the self-contained HTML report."""

from __future__ import annotations

import base64
import csv
import html
import re
from pathlib import Path
from typing import Sequence

from flows.compare.curves import X_AXES, RunCurve, by_group
from flows.compare.summary import Interval, group_band, tokens_label


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


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """The rows as a CSV table of these columns (other keys left out)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


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
