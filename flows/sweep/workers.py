"""Workers: one worker's trial loop against the shared storage, its process entry point, how the
sweep starts one as a plain interpreter, and the Prefect API its trial flow runs report to."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna

from attnrl_core.config import load_config
from attnrl_core.errors import AttnRLError
from flows import tracking
from flows.sweep.objective import TrialFailed, make_objective, requeue_stale_trial
from flows.sweep.spec import SweepSpec
from flows.sweep.study import open_storage, open_study, study_counts


def run_worker(spec_json: dict, base: str, fixed: list[str], storage_url: str, tracking_uri: str, n_trials: int, worker: int = 0, quiet: bool = True) -> None:
    """Run trials until the study holds n_trials COMPLETE + PRUNED trials (one worker's loop).

    Before each trial it fails and re-queues the trials of dead workers (stale heartbeats). When
    every remaining trial is running elsewhere it waits (poll_s) rather than overshoot the target,
    since one of those may still die and come back as a re-queued trial.
    """
    spec = SweepSpec.model_validate(spec_json)
    experiment_id = tracking.setup(tracking_uri, load_config(base, fixed).name)
    on_stale = requeue_stale_trial(tracking_uri, experiment_id, spec.study_name, spec.heartbeat.max_retry)
    storage = open_storage(storage_url, spec.heartbeat, on_stale=on_stale)
    study = open_study(spec, storage, worker)
    parent_run_id = study.user_attrs["mlflow_parent_run_id"]
    objective = make_objective(spec, Path(base), fixed, tracking_uri, experiment_id, parent_run_id, quiet)
    while True:
        with warnings.catch_warnings():  # experimental in optuna 5, and the documented way to do this
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counts = study_counts(study)
        if counts["complete"] + counts["pruned"] >= n_trials:
            return
        if counts["failed"] >= spec.max_failed_trials:
            errors = [t.user_attrs.get("error", "?") for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))]
            raise AttnRLError(
                f"Sweep {spec.study_name} stopped: {counts['failed']} trials failed (max_failed_trials = {spec.max_failed_trials}). "
                f"Last error: {errors[-1] if errors else '?'}"
            )
        if counts["waiting"] == 0 and counts["complete"] + counts["pruned"] + counts["running"] >= n_trials:
            time.sleep(spec.poll_s)
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker process: run_worker(**the JSON file argv[0]); a user error becomes
    one paragraph on stderr and exit code 2."""
    try:
        run_worker(**json.loads(Path(argv[0]).read_text()))
    except AttnRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def start_worker(kwargs: dict, log_path: Path) -> subprocess.Popen:
    """One worker as a plain interpreter (`python -c`), not a multiprocessing child: its exit runs
    the normal atexit hooks (which stop helper pools), and the spawned helpers it starts do not
    re-import a heavy main module."""
    env = dict(os.environ)
    # the repository root (this file is flows/sweep/workers.py), so the child imports this `flows`
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args_path = log_path.with_suffix(".json")
    args_path.write_text(json.dumps(kwargs, indent=1))
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "import sys; from flows.sweep import worker_main; sys.exit(worker_main(sys.argv[1:]))", str(args_path)],
            env=env, stdout=log, stderr=log,
        )


@contextlib.contextmanager
def prefect_api_for_children():
    """Let worker processes report their trial flow runs to this process's Prefect API (the
    temporary local one, unless PREFECT_API_URL already names a server): one place to see them,
    and no temporary API server started per worker."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.client.orchestration import get_client

    os.environ["PREFECT_API_URL"] = str(get_client(sync_client=True).api_url).rstrip("/")
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
