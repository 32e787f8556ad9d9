"""End to end: `attnrl train` / `attnrl resume` as fresh CLI processes (exit codes, kill -9 + resume)."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from flows.run_tracking import SENTINEL
from tests.support import REPO, assert_same_weights, cli, cli_env, final_weights, mlflow_store, run_metrics, sets

pytestmark = pytest.mark.slow


def test_kill_9_then_resume_equals_uninterrupted_run(base_uri, tmp_path, prefect_api):
    """SIGKILL at seeded random moments (mid-rollout, mid-update, mid-checkpoint...), resume until
    done: same final weights, same metrics, no step logged twice, no checkpoint corrupted."""
    uri = mlflow_store(tmp_path)
    extra = ["train.iterations=5"]
    env = cli_env(uri, prefect_api)
    # the uninterrupted reference runs the same way as the killed one: a fresh CLI process, so
    # nothing this test process did before (other tests, its thread pool) can differ between them
    done = cli("train", "--quiet", "--run-name", "reference", *sets(*extra), env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("train-test").experiment_id

    def run_named(name: str):
        found = client.search_runs([experiment], filter_string=f"attributes.run_name = '{name}'")
        return found[0] if found else None

    def logged_iterations(run) -> list:
        return [] if run is None else client.get_metric_history(run.info.run_id, SENTINEL)

    # Kill moments are placed by the run's own progress, not by the clock: a kill comes a seeded
    # random share of one iteration after the attempt logged an iteration of its own, so it lands
    # mid-rollout, mid-update or mid-checkpoint however fast this attempt runs next to the
    # reference (timed kills missed when the reference had run under heavier load).
    stamps = sorted(m.timestamp for m in logged_iterations(run_named("reference")))
    iteration_s = (stamps[-1] - stamps[0]) / 1000 / (len(stamps) - 1)
    rng = random.Random(7)
    command = ["train", "--quiet", "--run-name", "killed", *sets(*extra)]
    kills = 0
    while True:
        before = len(logged_iterations(run_named("killed")))
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *command], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if kills < 3:
            while proc.poll() is None and len(logged_iterations(run_named("killed"))) <= before:
                time.sleep(0.2)
            time.sleep(rng.uniform(0.0, 0.9) * iteration_s)
        if kills >= 3 or proc.poll() is not None:
            proc.wait(timeout=900)
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        command = ["resume", "killed", "--quiet"]
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    assert kills >= 1
    killed = client.search_runs([experiment], filter_string="attributes.run_name = 'killed'")
    assert len(killed) == 1 and killed[0].info.status == "FINISHED"
    reference = run_named("reference")

    def policy_of(run) -> dict:
        return final_weights({"final_policy": Path(run.data.tags["checkpoint_dir"]) / "final_policy"})

    assert_same_weights(policy_of(reference), policy_of(killed[0]))
    assert run_metrics(uri, reference.info.run_id) == run_metrics(uri, killed[0].info.run_id)


def test_cli_train_end_to_end_and_bad_input(base_uri, tmp_path, prefect_api, monkeypatch):
    """A run as a fresh CLI process; then bad input in process through the same Typer app (a
    missing run as a fresh process is test_cli_fast's)."""
    from typer.testing import CliRunner

    from flows.cli import app

    uri = mlflow_store(tmp_path)
    env = cli_env(uri, prefect_api)
    done = cli("train", "--quiet", *sets("train.iterations=2"), env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "before" in done.stdout and "after" in done.stdout and "MLflow run" in done.stdout

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    bad = CliRunner().invoke(app, ["train", "--quiet", "--set", "branch.rho=1.5"])
    assert bad.exit_code == 2
    assert "branch.rho" in bad.stderr and "<= 1.0" in bad.stderr
    unreachable = CliRunner().invoke(app, ["train", "--quiet", *sets(), "--tracking-uri", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 2 and "unreachable" in unreachable.stderr

    # export: the last checkpoint's policy as a save_pretrained folder is the run's final policy
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("train-test").experiment_id])[0]
    exported = tmp_path / "exported"
    done = CliRunner().invoke(app, ["export", run.info.run_name, "--out", str(exported)])
    assert done.exit_code == 0, done.output
    assert "iteration 2 of run" in done.stdout
    final = Path(run.data.tags["checkpoint_dir"]) / "final_policy"
    assert_same_weights(final_weights({"final_policy": exported}), final_weights({"final_policy": final}))
    assert (exported / "tokenizer.json").is_file() and not list(tmp_path.glob("exported.tmp-*"))
    written = sorted((p.name, p.stat().st_mtime_ns) for p in exported.iterdir())
    again = CliRunner().invoke(app, ["export", run.info.run_id, "--out", str(exported)])
    assert again.exit_code == 2 and "--out" in again.stderr and "not an empty folder" in again.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in exported.iterdir()) == written  # untouched
    absent = CliRunner().invoke(app, ["export", run.info.run_id, "--out", str(tmp_path / "it7"), "--iteration", "7"])
    assert absent.exit_code == 2 and "--iteration 7" in absent.stderr and "2]" in absent.stderr
    assert not (tmp_path / "it7").exists()
