"""End to end: a CLI run ends every process it started — when killed with SIGKILL, and when asked
to stop with SIGTERM (then promptly, at a safe point, marked KILLED, resumable)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from flows.reaper import carriers
from tasks.checkpoint import complete_checkpoints
from tests.support import REPO, cli, cli_env, mlflow_store, owner_token, sets

pytestmark = pytest.mark.slow


def _start_train(env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "train", "--quiet", "--run-name", "life", *sets("train.iterations=12", *extra)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_iteration(uri: str, at_least: int, proc: subprocess.Popen, timeout_s: float = 600.0) -> str:
    """Wait until the run 'life' has logged iteration `at_least`; returns its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("train-test")
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'life'") if exp else []
        if runs:
            history = client.get_metric_history(runs[0].info.run_id, "progress/iteration")
            if any(m.step >= at_least for m in history):
                return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"the run did not reach iteration {at_least}")


def _prefect_server_children(token: str) -> list[int]:
    found = []
    for pid in carriers(token):
        try:
            if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def _commands(pids: list[int]) -> list[bytes]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return out


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkill_of_a_cli_run_leaves_no_process_behind(base_uri, tmp_path, ranks):
    """With 2 ranks the run has also started a local Ray (GCS, raylet, workers) and 2 rank actors."""
    uri = mlflow_store(tmp_path)
    env = cli_env(uri)
    proc = _start_train(env, f"train.ranks={ranks}")
    token = owner_token(proc.pid)
    _wait_for_iteration(uri, 1, proc)
    assert _prefect_server_children(token), "the run's temporary Prefect API server should be running"
    if ranks > 1:
        started = _commands(carriers(token))
        assert sum(c.startswith(b"ray::RankActor") for c in started) == ranks, started
        assert any(b"gcs_server" in c for c in started) and any(b"raylet" in c for c in started), started
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while carriers(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert carriers(token) == [], "processes started by the killed run are still running"


def test_sigterm_stops_promptly_marks_killed_keeps_checkpoint_and_resumes(base_uri, tmp_path, prefect_api):
    uri = mlflow_store(tmp_path)
    env = cli_env(uri, prefect_api)
    proc = _start_train(env)
    token = owner_token(proc.pid)
    run_id = _wait_for_iteration(uri, 2, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=60)
    stopped_after = time.monotonic() - sent
    assert returncode != 0
    assert stopped_after < 30, f"SIGTERM took {stopped_after:.1f} s to stop the run"
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED"
    done = complete_checkpoints(Path(run.data.tags["checkpoint_dir"]))
    assert done, "the last complete checkpoint is kept"
    deadline = time.monotonic() + 15
    while carriers(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert carriers(token) == []

    resumed = cli("resume", run_id, "--quiet", env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
