"""Sweeps: an Optuna study over any config fields, one nested MLflow training run per trial.

    attnrl sweep --config experiments/sweeps/branching.yaml [--trials N] [--workers K] [--storage URL]

A sweep file names a base config (plus fixed overrides), the objective (an eval metric, its final
or best value, and the direction), a sampler, a pruner and the search space: dotted config field
-> distribution. Every trial is one `train_flow` call with the trial's values as `--set`
overrides; its MLflow run is a child of the sweep's parent run (one parent per study, found
again by its `optuna_study` tag), tagged with the trial number and its values.

Counting: `n_trials` is the study's TOTAL target, counted as COMPLETE + PRUNED trials across every
run of the sweep and every worker. Re-running the same sweep continues the study where it stopped
(no trial is repeated); `--trials 30` on a study that holds 20 runs 10 more. A trial stopped by
Ctrl-C is re-queued, and the next run resumes its MLflow run from the last checkpoint. Failed
trials do not count: they are visible as FAIL in Optuna and FAILED in MLflow, and the sweep stops
once `max_failed_trials` of them pile up.

Workers: `--workers K` starts K worker processes against one storage; each runs trials until the
study's total reaches n_trials. A worker that dies mid-trial stops beating its heartbeat; after
`heartbeat.grace_s` another worker marks that trial FAIL, re-queues it with the same values
(`RetryHeartbeatStaleTrialCallback`, optuna 5's name for RetryFailedTrialCallback) and the retry
resumes the dead worker's MLflow run from its last checkpoint. The same command on several
machines against one PostgreSQL storage and one MLflow server scales the same way.
"""

# The names the rest of the code imports from flows.sweep (the CLI, the tests, a worker process's
# `from flows.sweep import worker_main`), and the rest of what flows/sweep.py offered before it
# became this package. Modules import each other in this order; none imports one after it.
from flows.sweep.spec import (
    FIXED_FIELDS,
    HeartbeatSpec,
    ObjectiveSpec,
    ParamSpec,
    PrunerSpec,
    SamplerSpec,
    SweepSpec,
    format_value,
    load_sweep,
    resolve_base,
    trial_overrides,
)
from flows.sweep.study import (
    DONE_STATES,
    default_storage,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    public_url,
    retry_callback,
    study_counts,
)
from flows.sweep.runs import ensure_parent_run, objective_value, trial_rows, trial_run, write_best
from flows.sweep.objective import TrialFailed, make_objective, requeue_stale_trial
from flows.sweep.workers import prefect_api_for_children, run_worker, start_worker, worker_main
from flows.sweep.flow import sweep_flow

__all__ = [
    "DONE_STATES",
    "FIXED_FIELDS",
    "HeartbeatSpec",
    "ObjectiveSpec",
    "ParamSpec",
    "PrunerSpec",
    "SamplerSpec",
    "SweepSpec",
    "TrialFailed",
    "default_storage",
    "ensure_parent_run",
    "format_value",
    "load_sweep",
    "make_objective",
    "make_pruner",
    "make_sampler",
    "objective_value",
    "open_storage",
    "open_study",
    "prefect_api_for_children",
    "public_url",
    "requeue_stale_trial",
    "resolve_base",
    "retry_callback",
    "run_worker",
    "start_worker",
    "study_counts",
    "sweep_flow",
    "trial_overrides",
    "trial_rows",
    "trial_run",
    "worker_main",
    "write_best",
]
