"""Run curves: one finished training run's metric by step with the generated tokens and
wall-clock it had spent at each step, runs grouped by ablation or method, and the curves read
from an MLflow experiment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from mlflow.tracking import MlflowClient

from attnrl_core.statistics import interpolate

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
