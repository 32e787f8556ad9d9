"""A trial: the function Optuna calls, one `train_flow` run with the trial's values that reports
its evaluations for pruning, and the heartbeat callback that re-queues a dead worker's trial."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from flows.sweep.runs import objective_value, trial_run
from flows.sweep.spec import SweepSpec, format_value, trial_overrides
from flows.sweep.study import retry_callback


class TrialFailed(Exception):
    """A trial's training run raised: the trial is FAIL and the sweep goes on with the next one."""


def make_objective(spec: SweepSpec, base: Path, fixed: list[str], tracking_uri: str, experiment_id: str, parent_run_id: str, quiet: bool):
    """The function Optuna calls per trial: one `train_flow` run with the trial's values."""
    from flows.train import train_flow

    client = MlflowClient(tracking_uri)
    requeue = retry_callback(spec.heartbeat.max_retry)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        params = {field: dim.suggest(trial, field) for field, dim in spec.search_space.items()}
        trial.set_user_attr("worker", worker)

        def report(iteration: int, eval_metrics: dict[str, float]) -> bool:
            if spec.objective.metric not in eval_metrics:
                return False
            trial.report(eval_metrics[spec.objective.metric], step=iteration)
            return trial.should_prune()

        # A re-queued trial of a dead worker continues that worker's run from its last checkpoint.
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        history = frozen.system_attrs.get("retry_history", [])
        previous = trial_run(client, experiment_id, spec.study_name, history[-1]) if history else None
        try:
            if previous is not None:
                client.set_tag(previous.info.run_id, "optuna_trial", str(trial.number))
                client.set_tag(previous.info.run_id, "optuna_retry_of", ",".join(map(str, history)))
                if "error" in previous.data.tags:  # set when its worker was found dead; the run lives on
                    client.delete_tag(previous.info.run_id, "error")
                result = train_flow(None, tracking_uri=tracking_uri, resume=previous.info.run_id, quiet=quiet, on_evaluation=report)
            else:
                tags = {"sweep": spec.study_name, "optuna_trial": str(trial.number), **{f"trial.{k}": format_value(v) for k, v in params.items()}}
                result = train_flow(
                    str(base), fixed + trial_overrides(params), run_name=f"{spec.study_name}-trial-{trial.number:03d}",
                    tracking_uri=tracking_uri, quiet=quiet, parent_run_id=parent_run_id, extra_tags=tags, on_evaluation=report,
                )
        except KeyboardInterrupt:
            # Ctrl-C mid-trial: queue the trial again, so the next run of the sweep resumes its
            # MLflow run from the last checkpoint instead of counting it as a failure
            requeue(trial.study, next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
            raise
        except Exception as exc:
            run = trial_run(client, experiment_id, spec.study_name, trial.number)
            if run is not None:
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                if run.info.status == "RUNNING":  # failed before train_flow's own handler could mark it
                    client.set_terminated(run.info.run_id, status="FAILED")
                client.set_tag(run.info.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise TrialFailed(f"trial {trial.number} failed: {type(exc).__name__}: {exc}") from exc
        trial.set_user_attr("mlflow_run_id", result["run_id"])
        if result["pruned"]:
            raise optuna.TrialPruned(f"pruned at iteration {result['pruned_at']}")
        return objective_value(client, result["run_id"], spec)

    return objective


def requeue_stale_trial(tracking_uri: str, experiment_id: str, study_name: str, max_retry: int):
    """Heartbeat callback for a dead worker's trial: re-queue it with the same values (and the
    evaluations it reported) and mark its MLflow run FAILED; the retry resumes that run and sets
    it RUNNING again."""
    retry = retry_callback(max_retry)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry(study, trial)
        client = MlflowClient(tracking_uri)
        run = trial_run(client, experiment_id, study_name, trial.number)
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="FAILED")
            client.set_tag(run.info.run_id, "error", "its worker stopped beating (killed or lost); the trial was re-queued")

    return on_stale
