"""The `sweep` Prefect flow (prefect.yaml's attnrl-sweep deployment, `attnrl sweep`): run or
continue a sweep file's study in one or K workers, then log its counts, trial table and best
config to the study's parent MLflow run.

Its imports are absolute: Prefect loads a deployment's entrypoint file as a script, outside the package.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow

from attnrl_core.config import Config, load_config
from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR, tracking
from flows.sweep.runs import ensure_parent_run, trial_rows, write_best
from flows.sweep.spec import load_sweep
from flows.sweep.study import default_storage, open_storage, open_study, public_url, study_counts
from flows.sweep.workers import prefect_api_for_children, run_worker, start_worker
from tasks.ranks import ray_cluster


@flow(name="sweep")
def sweep_flow(
    sweep_path: str,
    overrides: list[str] | None = None,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
    quiet: bool = True,
) -> dict:
    """Run (or continue) the Optuna study of the sweep file; returns its trials and best config.

    `overrides` are extra fixed overrides of the base config (after the file's own);
    `n_trials` replaces the file's total target; `workers` > 1 runs that many worker
    processes against the storage (default sqlite:///runs/optuna.db).

    >>> r = sweep_flow("experiments/sweeps/smoke.yaml", n_trials=2)   # doctest: +SKIP
    >>> r["counts"], r["best"]["params"], r["best_config"]
    ({'complete': 2, ...}, {'branch.rho': 0.31}, 'runs/sweeps/smoke/best.yaml')
    """
    if workers < 1:
        raise AttnRLError(f"--workers must be at least 1 (got {workers}).")
    spec, base, fixed = load_sweep(sweep_path, overrides or [])
    target = n_trials if n_trials is not None else spec.n_trials
    if target < 1:
        raise AttnRLError(f"--trials must be at least 1 (got {target}).")
    uri = tracking.resolve_uri(tracking_uri)
    storage_url = storage or default_storage()
    cfg = load_config(base, fixed)  # the trials' base: their experiment, Ray cluster and base policy
    experiment_id = tracking.setup(uri, cfg.name)
    study = open_study(spec, open_storage(storage_url, spec.heartbeat))
    for point in spec.enqueue:  # skip_if_exists: a re-run must not queue them again
        study.enqueue_trial(point, skip_if_exists=True)
    client = MlflowClient(uri)
    parent_run_id = ensure_parent_run(client, experiment_id, study, spec, sweep_path, storage_url)
    shared = {"spec_json": spec.model_dump(mode="json"), "base": str(base), "fixed": fixed, "storage_url": storage_url, "tracking_uri": uri, "n_trials": target}
    status = "FINISHED"
    try:
        # trials with train.ranks > 1 share one Ray cluster: the one named, or a local one on the whole machine
        with ray_cluster(cfg, whole_machine=True):
            _run_workers(spec, cfg, base, fixed, uri, shared, workers, quiet)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        counts = study_counts(study)
        best = write_best(study, base, fixed, RUNS_DIR / "sweeps" / spec.study_name, spec)
        rows = trial_rows(study)
        client.log_dict(parent_run_id, rows, "sweep/trials.json")
        stamp = int(time.time() * 1000)
        done = counts["complete"] + counts["pruned"]
        metrics = [mlflow.entities.Metric(f"sweep/trials_{k}", float(v), stamp, done) for k, v in counts.items()]
        if best is not None:
            metrics.append(mlflow.entities.Metric("sweep/best_value", float(best[1]["value"]), stamp, done))
            client.log_artifact(parent_run_id, str(best[0]), artifact_path="best")
            client.set_tag(parent_run_id, "best_trial", str(best[1]["number"]))
            client.set_tag(parent_run_id, "best_params", json.dumps(best[1]["params"])[:5000])
        client.log_batch(parent_run_id, metrics=metrics)
        client.set_terminated(parent_run_id, status=status)
    return {
        "study_name": spec.study_name,
        "storage": public_url(storage_url),
        "parent_run_id": parent_run_id,
        "n_trials": target,
        "counts": counts,
        "trials": rows,
        "best": best[1] if best else None,
        "best_config": str(best[0]) if best else None,
    }


def _run_workers(spec, cfg: Config, base: Path, fixed: list[str], uri: str, shared: dict, workers: int, quiet: bool) -> None:
    """The study's trials (base config `cfg`): in this process (one worker) or in `workers`
    worker processes."""
    if workers == 1:
        run_worker(**shared, worker=0, quiet=quiet)
    else:
        if cfg.model.path is None:
            # every trial starts from the tiny base policy: build it once, not once per worker at the same time
            from flows.warmstart import warmstart_flow

            warmstart_flow(str(base), fixed, tracking_uri=uri, quiet=quiet)
        logs = RUNS_DIR / "sweeps" / spec.study_name / "logs"
        with prefect_api_for_children():
            procs = [start_worker({**shared, "worker": i, "quiet": True}, logs / f"worker-{i}.log") for i in range(workers)]
        try:
            codes = [p.wait() for p in procs]
        except BaseException:  # interrupted or cancelled: do not leave workers running on
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            raise
        if any(codes):
            tails = []
            for i, code in enumerate(codes):
                if code:
                    lines = (logs / f"worker-{i}.log").read_text(errors="replace").strip().splitlines()
                    tails.append(f"worker {i} (exit {code}): {lines[-1] if lines else 'no output'}")
            raise AttnRLError(f"Sweep {spec.study_name}: {sum(map(bool, codes))} of {workers} workers stopped early; " + " ".join(tails) + f" (logs in {logs})")
