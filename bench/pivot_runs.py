"""The branching diagnostics of finished pivot-world runs, per method / ablation, from MLflow.

    ATTNRL_HOME=runs .venv/bin/python bench/pivot_runs.py ablations-pivot [ablations-pivot-rules-off ...]

For each run: the mean over its iterations of each diagnostic (one iteration's value is a
handful of prompts, too noisy to compare); then, per ablation, the mean over seeds and the
range [min, max] of the seeds' means. Columns are in % (pivot and plan hit rate: the share of
branched responses with a branch point on a pivotal / the plan step; pivot point share: the
share of branch points on pivotal steps, chance = pivot step share; solve-all / solve-none:
the share of prompts whose responses and continuations all succeed / all fail after branching;
valid tokens: the share of trained tokens with a non-zero advantage).
"""

from __future__ import annotations

import statistics
import sys

from mlflow.tracking import MlflowClient

from flows import tracking

COLUMNS = {
    "pivot hit": "tree/pivot_hit_rate",
    "plan hit": "tree/plan_hit_rate",
    "pivot point share": "tree/pivot_point_share",
    "chance": "tree/pivot_step_share",
    "solve-all after": "tree/solve_all_after_ratio",
    "solve-none after": "tree/solve_none_after_ratio",
    "valid tokens": "batch/valid_token_ratio",
}


def run_means(client: MlflowClient, run_id: str) -> dict[str, float]:
    means = {}
    for column, key in COLUMNS.items():
        values = [m.value for m in client.get_metric_history(run_id, key)]
        if values:
            means[column] = statistics.fmean(values)
    return means


def main(experiments: list[str]) -> None:
    client = MlflowClient(tracking.resolve_uri())
    print(f"| experiment | method / ablation | seeds | {' | '.join(COLUMNS)} |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            sys.exit(f"no MLflow experiment {name!r} in {tracking.resolve_uri()}")
        groups: dict[str, list[dict]] = {}
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED' and tags.kind = 'train'", max_results=5000):
            if "ablation" in run.data.tags:
                groups.setdefault(run.data.tags["ablation"], []).append(run_means(client, run.info.run_id))
        for ablation, seeds in sorted(groups.items()):
            cells = []
            for column in COLUMNS:
                values = [100 * s[column] for s in seeds if column in s]
                cells.append(f"{statistics.fmean(values):.1f} [{min(values):.1f}, {max(values):.1f}]" if values else "-")
            print(f"| {name} | {ablation} | {len(seeds)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["ablations-pivot"])
