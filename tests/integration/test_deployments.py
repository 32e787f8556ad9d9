"""Integration: prefect.yaml deploys to a real Prefect server on 127.0.0.1 and a real process
worker runs the train deployment on a reduced config."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.support import REPO
from tests.support import TRAIN_REDUCED

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-server")
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("the Prefect server did not come up on 127.0.0.1")
            time.sleep(1)
        env["PREFECT_API_URL"] = url
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def _run(args, env, **kw):
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_train_deployment_runs_through_a_worker(prefect_server, tmp_path):
    env = prefect_server
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
