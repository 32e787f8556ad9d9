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
from flows.compare.curves import by_group, load_curves

COLUMNS = {
    "pivot hit": "tree/pivot_hit_rate",
    "plan hit": "tree/plan_hit_rate",
    "pivot point share": "tree/pivot_point_share",
    "chance": "tree/pivot_step_share",
    "solve-all after": "tree/solve_all_after_ratio",
    "solve-none after": "tree/solve_none_after_ratio",
    "valid tokens": "batch/valid_token_ratio",
}


def diagnostics(client: MlflowClient, experiment_id: str) -> dict[str, dict[str, list[float]]]:
    """method / ablation -> column -> each run's mean over its iterations. The runs and their
    groups are `attnrl compare`'s (finished training runs, sweep trials excluded)."""
    table: dict[str, dict[str, list[float]]] = {}
    for column, key in COLUMNS.items():
        for group, curves in by_group(load_curves(client, experiment_id, key)).items():
            table.setdefault(group, {})[column] = [statistics.fmean(c.points.values()) for c in curves]
    return table


def main(experiments: list[str]) -> None:
    uri = tracking.resolve_uri()
    client = MlflowClient(uri)
    print(f"| experiment | method / ablation | seeds | {' | '.join(COLUMNS)} |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            sys.exit(f"no MLflow experiment {name!r} in {uri}")
        for group, columns in sorted(diagnostics(client, experiment.experiment_id).items()):
            cells = []
            for column in COLUMNS:
                values = [100 * v for v in columns.get(column, [])]
                cells.append(f"{statistics.fmean(values):.1f} [{min(values):.1f}, {max(values):.1f}]" if values else "-")
            print(f"| {name} | {group} | {max(map(len, columns.values()))} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["ablations-pivot"])
