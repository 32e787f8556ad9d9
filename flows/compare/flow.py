"""The entry points: `compare` (summarise, plot and report an experiment's finished runs, logged
to a 'compare' MLflow run; `attnrl compare --experiment`) and the `ablations` Prefect flow (train
what a suite lacks; `attnrl compare --suite`).

Its imports are absolute: Prefect may load a flow's file as a script, outside the package.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Sequence

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow

from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR, tracking
from flows.compare.curves import X_AXES, by_group, load_curves
from flows.compare.report import PAIRED_COLUMNS, PART_COLUMNS, TABLE_COLUMNS, plot, report_html, slug, write_csv
from flows.compare.summary import Interval, paired_rows, summarize, token_budgets
from flows.compare.suite import load_suite, plan_suite, run_suite_jobs


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
    write_csv(table, columns, rows)
    files = [*plots.values(), table]
    paired_table = None
    if baseline:
        paired_table = out / f"{slug(metric)}_vs_{slug(baseline)}.csv"
        write_csv(paired_table, PAIRED_COLUMNS, paired)
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
