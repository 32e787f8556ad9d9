"""Integration: prefect.yaml deploys to a real Prefect server on 127.0.0.1 (this pytest worker's
session server) and a real process worker runs the train deployment on a reduced config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.support import REPO, TRAIN_REDUCED, mlflow_store

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _run(args, env, **kw):
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_train_deployment_runs_through_a_worker(prefect_api, tmp_path):
    env = dict(os.environ, PREFECT_API_URL=prefect_api)  # this worker's session server
    env["MLFLOW_TRACKING_URI"] = mlflow_store(tmp_path)
    _run([PREFECT, "work-pool", "create", "attnrl-local", "--type", "process"], env)
    _run([PREFECT, "--no-prompt", "deploy", "--all"], env)
    # the sweep deployment ships with its nightly schedule switched off
    schedules = _run([PREFECT, "deployment", "schedule", "ls", "sweep/attnrl-sweep"], env).stdout
    assert "0 2 * * *" in schedules and "False" in schedules, schedules
    params = {"overrides": TRAIN_REDUCED + ["train.iterations=2", "name=deployed"], "run_name": "via-worker", "quiet": True}
    _run([PREFECT, "deployment", "run", "train/attnrl-train", "--params", json.dumps(params)], env)
    _run([PREFECT, "worker", "start", "--pool", "attnrl-local", "--run-once"], env)

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("deployed").experiment_id], filter_string="attributes.run_name = 'via-worker'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["progress/iteration"] == 2.0
