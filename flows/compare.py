"""Side-by-side comparison of finished training runs: ablations and baselines over seeds.

    attnrl compare --experiment ablations-tiny [--metric eval/heldout/avg_at_1]
    attnrl compare --suite experiments/ablations/suite.yaml    # first run what is missing

Runs are grouped by their `ablation` tag (set by the suite runner) or else their `method` tag.
Per group: mean ± std over seeds of the metric's final value and of its best value over the
training evaluations (the base evaluation at step 0 is shown apart), plus generated tokens
and wall-clock at the end. Three PNG plots show the metric against iteration, generated
tokens and wall-clock seconds — one line per group (mean over seeds) in a min-max band. The
table (CSV + JSON) and the plots are logged to a new run of kind "compare" in the experiment.
Sweep trials (tag `sweep`) and unfinished, failed or pruned runs are left out.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attnrl_core.config import load_config, read_yaml_mapping, spec_error
from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR, tracking

TOKENS = "progress/generated_tokens"
WALL = "progress/wall_s"
X_AXES = {"iteration": "iteration", "tokens": "generated tokens", "wall": "wall-clock seconds"}


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


def group_of(tags: dict) -> str:
    return tags.get("ablation") or tags.get("method") or "unknown"


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


def _mean_std(values: list[float]) -> tuple[float, float]:
    # sample std over seeds (n - 1): one seed has no spread to report
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(curves: list[RunCurve], direction: str = "maximize", at: Sequence[int] = ()) -> list[dict]:
    """One row per group, best final mean first; `at`: also the metric at these iterations
    (`at_<k>_mean`, `at_<k>_std`, `at_<k>_runs` over the runs that evaluated there).

    >>> a = RunCurve("r1", "attnrl", "attnrl", "0", {0: 0.5, 1: 0.6, 2: 0.7}, {1: 10, 2: 20}, {1: 1.0, 2: 2.0})
    >>> b = RunCurve("r2", "attnrl", "attnrl", "1", {0: 0.5, 1: 0.8, 2: 0.6}, {1: 12, 2: 22}, {1: 1.5, 2: 3.0})
    >>> row = summarize([a, b])[0]
    >>> round(row["final_mean"], 4), round(row["final_std"], 4), row["best_mean"], row["tokens_mean"]
    (0.65, 0.0707, 0.75, 21.0)
    >>> row = summarize([a, b], at=[1])[0]
    >>> row["at_1_mean"], round(row["at_1_std"], 4), row["at_1_runs"]
    (0.7, 0.1414, 2)
    """
    groups: dict[str, list[RunCurve]] = {}
    for c in curves:
        groups.setdefault(c.group, []).append(c)
    rows = []
    for name, members in groups.items():
        final_mean, final_std = _mean_std([c.final for c in members])
        best_mean, best_std = _mean_std([c.best(direction) for c in members])
        base = [c.points[0] for c in members if 0 in c.points]
        last = [max(c.points) for c in members]
        rows.append(
            {
                "group": name,
                "method": members[0].method,
                "runs": len(members),
                "seeds": ",".join(sorted({c.seed for c in members}, key=lambda s: (len(s), s))),
                "base_mean": statistics.fmean(base) if base else None,
                "final_mean": final_mean,
                "final_std": final_std,
                "best_mean": best_mean,
                "best_std": best_std,
                "tokens_mean": statistics.fmean([c.x("tokens", s) for c, s in zip(members, last)]),
                "wall_s_mean": statistics.fmean([c.x("wall", s) for c, s in zip(members, last)]),
                "iterations": max(last),
                "run_ids": [c.run_id for c in members],
            }
        )
        for k in at:
            values = [c.points[k] for c in members if k in c.points]
            mean, std = _mean_std(values) if values else (None, None)
            rows[-1].update({f"at_{k}_mean": mean, f"at_{k}_std": std, f"at_{k}_runs": len(values)})
    sign = -1 if direction == "maximize" else 1
    return sorted(rows, key=lambda r: (sign * r["final_mean"], r["group"]))


def group_band(members: list[RunCurve], axis: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, mean, min, max) over the steps every member evaluated; x is the members' mean x.

    >>> a = RunCurve("r1", "g", "m", "0", {0: 0.2, 2: 0.4}, {2: 100.0})
    >>> b = RunCurve("r2", "g", "m", "1", {0: 0.4, 2: 0.8, 4: 0.9}, {2: 300.0, 4: 500.0})
    >>> [[round(v, 6) for v in seq] for seq in group_band([a, b], "tokens")]
    [[0.0, 200.0], [0.3, 0.6], [0.2, 0.4], [0.4, 0.8]]
    """
    steps = sorted(set.intersection(*(set(c.points) for c in members)))
    xs = [statistics.fmean([c.x(axis, s) for c in members]) for s in steps]
    ys = [[c.points[s] for c in members] for s in steps]
    return xs, [statistics.fmean(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def plot(curves: list[RunCurve], axis: str, metric: str, title: str, path: Path) -> Path:
    """One line per group (mean over seeds) with a light min-max band, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    groups: dict[str, list[RunCurve]] = {}
    for c in curves:
        groups.setdefault(c.group, []).append(c)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, (name, members) in enumerate(sorted(groups.items())):
        xs, mean, lo, hi = group_band(members, axis)
        color = colors(i % 10)
        ax.plot(xs, mean, marker="o", markersize=3, linewidth=1.8, color=color, label=f"{name} (n={len(members)})")
        if len(members) > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel(X_AXES[axis])
    ax.set_ylabel(metric)
    ax.set_title(title)
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


TABLE_COLUMNS = ["group", "method", "runs", "seeds", "iterations", "base_mean", "final_mean", "final_std", "best_mean", "best_std", "tokens_mean", "wall_s_mean"]


def compare(
    experiment: str,
    metric: str = "eval/heldout/avg_at_1",
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    direction: Literal["maximize", "minimize"] = "maximize",
    at: Sequence[int] = (),
) -> dict:
    """Summarise and plot the experiment's finished runs; log it all to a 'compare' run.
    `at`: iterations whose metric values join the table (see `summarize`).

    Returns {'rows': one dict per group, 'plots': {axis: png path}, 'table': csv path,
    'mlflow_run_id': the compare run, 'out_dir': folder}.
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
    rows = summarize(curves, direction, at)
    out = Path(out_dir) if out_dir is not None else RUNS_DIR / "compare" / slug(experiment)
    out.mkdir(parents=True, exist_ok=True)
    plots = {axis: plot(curves, axis, metric, f"{experiment}: {metric} vs {X_AXES[axis]}", out / f"{slug(metric)}_vs_{axis}.png") for axis in X_AXES}
    table = out / f"{slug(metric)}.csv"
    with table.open("w", newline="") as f:
        at_columns = [f"at_{k}_{part}" for k in at for part in ("mean", "std", "runs")]
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS + at_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{slug(metric)}.json").write_text(json.dumps({"experiment": experiment, "metric": metric, "direction": direction, "rows": rows}, indent=1))
    mlflow.set_tracking_uri(uri)
    run = client.create_run(
        exp.experiment_id, run_name=f"compare-{slug(metric)}",
        tags={"kind": "compare", "metric": metric, "groups": ",".join(r["group"] for r in rows), "git_commit": tracking.git_commit()},
    )
    rid = run.info.run_id
    for path in [*plots.values(), table, out / f"{slug(metric)}.json"]:
        client.log_artifact(rid, str(path), artifact_path="compare")
    client.set_terminated(rid, status="FINISHED")
    return {"rows": rows, "plots": {k: str(v) for k, v in plots.items()}, "table": str(table), "mlflow_run_id": rid, "out_dir": str(out)}


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


@flow(name="ablations")
def ablations_flow(
    suite_path: str, seeds: list[int] | None = None, overrides: list[str] | None = None, tracking_uri: str | None = None, quiet: bool = False
) -> dict:
    """Run every config x seed of the suite that has no finished run yet (an unfinished one is
    resumed from its checkpoint), tagged ablation=<config stem>, suite=<suite stem>.

    Returns {'experiment', 'metric', 'runs': [{'ablation', 'seed', 'run_id', 'status'}], 'failed': [...]};
    a run that fails is reported and the suite goes on with the next one.
    """
    from flows.train import train_flow

    spec, entries, experiment = load_suite(suite_path, seeds, overrides)
    uri = tracking.resolve_uri(tracking_uri)
    experiment_id = tracking.setup(uri, experiment)
    client = MlflowClient(uri)
    runs, failed = [], []
    for name, cfg_path in entries:
        for seed in spec.seeds:
            sets = spec.overrides + [f"seed={seed}"]
            cfg_hash = load_config(cfg_path, sets).hash()
            found = client.search_runs(
                [experiment_id], filter_string=f"tags.ablation = '{name}' and tags.seed = '{seed}' and tags.config_hash = '{cfg_hash}'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )
            entry = {"ablation": name, "seed": seed}
            if found and found[0].info.status == "FINISHED":
                runs.append({**entry, "run_id": found[0].info.run_id, "status": "skipped (finished before)"})
                continue
            try:
                if found:
                    result = train_flow(None, tracking_uri=uri, resume=found[0].info.run_id, quiet=quiet)
                else:
                    result = train_flow(
                        str(cfg_path), sets, run_name=f"{name}-s{seed}", tracking_uri=uri, quiet=quiet,
                        extra_tags={"ablation": name, "suite": Path(suite_path).stem},
                    )
                runs.append({**entry, "run_id": result["run_id"], "status": "resumed" if found else "trained"})
            except Exception as exc:  # noqa: BLE001 - one failing config must not cost the others their runs
                failed.append({**entry, "error": f"{type(exc).__name__}: {exc}"})
    return {"experiment": experiment, "metric": spec.metric, "runs": runs, "failed": failed}
