"""Sweeps: the sweep file's validation (fast), then real Optuna studies of real training runs on the
reduced tiny world — pruning and resume on SQLite, and two workers on a real PostgreSQL server,
one of them SIGKILLed mid-trial."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnrl_core.config import load_config, parse_override
from attnrl_core.errors import AttnRLError
from flows.sweep import (
    PrunerSpec,
    SamplerSpec,
    format_value,
    load_sweep,
    make_pruner,
    make_sampler,
    study_counts,
)
from tests.support import REPO, TRAIN_REDUCED, free_port, mlflow_store

TINY = str(REPO / "experiments/tiny.yaml")
# A trial here is a one-iteration run on the reduced world, smaller still: the sweep machinery is
# under test, not the training (no base evaluation at step 0, 8 held-out problems, 2 x 2 samples).
TRIAL = TRAIN_REDUCED + ["train.iterations=1", "train.eval_before=false", "data.heldout_size=8", "batch.prompts=2", "rollout.group_size=2"]


def write_sweep(path: Path, **fields) -> Path:
    spec = {
        "base_config": TINY,
        "study_name": f"test-{uuid.uuid4().hex[:8]}",
        "objective": {"metric": "eval/heldout/avg_at_1", "reduce": "final"},
        "n_trials": 3,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search_space": {"branch.rho": {"type": "float", "low": 0.1, "high": 0.5}},
    }
    spec.update(fields)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ---------------------------------------------------------------- the sweep file (fast) ----


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**9, 10**9), st.booleans(),
                 st.sampled_from(["exp", "uniform", "fci", "entropy"])))
def test_trial_values_survive_the_override_round_trip(value):
    # str(1e-05) reads back as the string '1e-05' in YAML; a trial must train with exactly its value
    parsed = parse_override(f"optim.lr={format_value(value)}")["optim"]["lr"]
    assert parsed == value and type(parsed) is type(value)


def test_shipped_sweep_files_are_valid(monkeypatch):
    monkeypatch.chdir(REPO)
    spec, base, fixed = load_sweep("experiments/sweeps/branching.yaml")
    assert base == Path("experiments/tiny.yaml") and "train.iterations=30" in fixed
    wanted = {"branch.rho", "branch.num_points", "branch.continuations", "fci.delta", "branch.min_token_gap",
              "expansion.fci_filter", "expansion.mode", "branch.criterion", "optim.lr"}
    assert wanted <= set(spec.search_space)
    assert spec.pruner.name == "median" and spec.direction == "maximize"
    smoke, _, _ = load_sweep("experiments/sweeps/smoke.yaml")
    assert smoke.n_trials == 3


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"pruner": {"name": "sometimes"}}, "pruner.name"),
        ({"n_trials": 0}, "n_trials"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"search_space": {"branch.rhoo": {"type": "float", "low": 0.1, "high": 0.5}}}, "search_space.branch.rhoo is not a config field"),
        ({"search_space": {"branch.rho": {"type": "float", "low": 0.1, "high": 1.5}}}, "search_space.branch.rho reaches 1.5"),
        ({"search_space": {"branch.rho": {"type": "float", "low": 0.5, "high": 0.1}}}, "low <= high"),
        ({"search_space": {"expansion.mode": {"type": "categorical", "choices": ["exp", "sideways"]}}}, "search_space.expansion.mode reaches 'sideways'"),
        ({"search_space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "low > 0"),
        ({"search_space": {"branch.num_points": {"type": "int", "low": 1, "high": 4, "choices": [1]}}}, "no choices"),
        ({"search_space": {"name": {"type": "categorical", "choices": ["a", "b"]}}}, "search_space.name cannot be swept"),
        ({"enqueue": [{"branch.rho": 0.9}]}, "enqueue[0].branch.rho"),
        ({"enqueue": [{"optim.lr": 0.1}]}, "not in search_space"),
        ({"heartbeat": {"interval_s": 10, "grace_s": 5}}, "grace_s must exceed interval_s"),
        ({"base_config": "no/such/config.yaml"}, "base_config no/such/config.yaml exists neither"),
        ({"overrides": ["branch.rho=7"]}, "branch.rho"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_sweep_files_fail_up_front_naming_the_field(tmp_path, fields, message):
    path = write_sweep(tmp_path / "sweep.yaml", **fields)
    with pytest.raises(AttnRLError) as caught:
        load_sweep(path)
    assert message in str(caught.value)


def test_cli_sweep_rejects_a_bad_file_with_exit_code_2(tmp_path):
    from flows.cli import app

    path = write_sweep(tmp_path / "sweep.yaml", search_space={"branch.rho": {"type": "float", "low": 0.1, "high": 1.5}})
    result = CliRunner().invoke(app, ["sweep", "--config", str(path)])
    assert result.exit_code == 2
    assert "search_space.branch.rho" in result.stderr and "<= 1.0" in result.stderr
    unreachable = CliRunner().invoke(app, ["sweep", "--config", str(write_sweep(tmp_path / "ok.yaml")), "--storage", "postgresql+psycopg2://nobody@127.0.0.1:9/optuna"])
    assert unreachable.exit_code == 2 and "Optuna storage postgresql+psycopg2://nobody@127.0.0.1:9/optuna cannot be opened" in unreachable.stderr
    assert CliRunner().invoke(app, ["sweep", "--help"]).exit_code == 0


def test_pruners_and_samplers_take_their_arguments():
    pruner = make_pruner(PrunerSpec(name="percentile", percentile=40.0, n_startup_trials=2, n_warmup_steps=3))
    assert isinstance(pruner, optuna.pruners.PercentilePruner)
    assert (pruner._percentile, pruner._n_startup_trials, pruner._n_warmup_steps) == (40.0, 2, 3)
    assert isinstance(make_pruner(PrunerSpec()), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(PrunerSpec(name="none")), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(PrunerSpec(name="hyperband", min_resource=2)), optuna.pruners.HyperbandPruner)
    assert isinstance(make_sampler(SamplerSpec(name="tpe", seed=1)), optuna.samplers.TPESampler)

    def first_draw(worker: int, resumed_at: int) -> float:
        study = optuna.create_study(sampler=make_sampler(SamplerSpec(name="random", seed=7), worker, resumed_at))
        return study.ask().suggest_float("x", 0.0, 1.0)

    # reproducible, but two workers, or a resumed study, do not replay the same draws
    assert first_draw(0, 0) == first_draw(0, 0)
    assert len({first_draw(0, 0), first_draw(1, 0), first_draw(0, 5)}) == 3


# -------------------------------------------------------- real studies of real training runs ----


def children(client: mlflow.MlflowClient, parent_run_id: str) -> list:
    run = client.get_run(parent_run_id)
    return client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.mark.slow
def test_sweep_prunes_a_worse_trial_and_a_rerun_adds_exactly_the_missing_trial(base_uri, tmp_path):
    """Trial 1 evaluates with a 1-token budget (accuracy 0), below trial 0's accuracy at the same
    iteration: the median pruner must stop it. Then the same sweep with --trials 3 continues the
    study with exactly one new trial, under the same parent run."""
    from flows.cli import app
    from flows.sweep import sweep_flow

    uri = mlflow_store(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = write_sweep(
        tmp_path / "prune.yaml",
        pruner={"name": "median", "n_startup_trials": 1},
        search_space={"eval.max_new_tokens": {"type": "categorical", "choices": [96, 1]}, "branch.rho": {"type": "float", "low": 0.1, "high": 0.5}},
        enqueue=[
            {"eval.max_new_tokens": 96, "branch.rho": 0.2},
            {"eval.max_new_tokens": 1, "branch.rho": 0.2},
            {"eval.max_new_tokens": 96, "branch.rho": 0.3},
        ],
    )
    overrides = TRIAL
    first = sweep_flow(str(path), overrides, n_trials=2, storage=storage, tracking_uri=uri)
    assert [t["state"] for t in first["trials"][:2]] == ["COMPLETE", "PRUNED"]
    assert first["trials"][0]["value"] > 0, "precondition: the reduced base answers some held-out problems"
    assert first["counts"]["complete"] + first["counts"]["pruned"] == 2

    client = mlflow.MlflowClient(uri)
    pruned = client.get_run(first["trials"][1]["mlflow_run_id"])
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned"] == "true"
    assert pruned.data.tags["optuna_trial"] == "1" and pruned.data.tags["trial.eval.max_new_tokens"] == "1"
    kept = client.get_run(first["trials"][0]["mlflow_run_id"])
    assert kept.info.status == "FINISHED" and kept.data.metrics["eval/heldout/avg_at_1"] == first["trials"][0]["value"]
    study = optuna.load_study(study_name=yaml.safe_load(path.read_text())["study_name"], storage=storage)
    assert study.trials[1].intermediate_values == {1: 0.0}  # reported through the flow's eval hook

    result = CliRunner().invoke(app, ["sweep", "--config", str(path), "--trials", "3", "--storage", storage, "--tracking-uri", uri, "--quiet",
                                      *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output[-3000:]
    assert "2 complete, 1 pruned, 0 failed of target 3" in result.stdout
    study = optuna.load_study(study_name=study.study_name, storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert study.trials[2].params == {"eval.max_new_tokens": 96, "branch.rho": 0.3}

    parents = client.search_runs([kept.info.experiment_id], filter_string=f"tags.optuna_study = '{study.study_name}'")
    assert len(parents) == 1 and parents[0].info.run_id == first["parent_run_id"] and parents[0].info.status == "FINISHED"
    trial_runs = children(client, first["parent_run_id"])
    assert sorted(r.data.tags["optuna_trial"] for r in trial_runs) == ["0", "1", "2"]

    best = Path(first["best_config"])
    assert best.is_file()
    cfg = load_config(best)  # loadable by `attnrl train --config`
    assert cfg == load_config(TINY, overrides + ["eval.max_new_tokens=96", f"branch.rho={study.best_trial.params['branch.rho']}"])
    assert "best" in {a.path for a in client.list_artifacts(first["parent_run_id"])}


@pytest.mark.slow
def test_ctrl_c_mid_trial_requeues_it_and_the_rerun_resumes_its_run(base_uri, tmp_path):
    """SIGINT while a trial trains (after its first iteration was logged): the sweep stops with
    KeyboardInterrupt, the trial is re-queued, and running the sweep again finishes it inside the
    same MLflow run, without logging any iteration twice."""
    import threading

    from flows.sweep import sweep_flow

    uri = mlflow_store(tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = write_sweep(tmp_path / "interrupt.yaml", n_trials=1)
    name = yaml.safe_load(path.read_text())["study_name"]
    # long enough that the watcher below sees iteration 1 logged before the trial can finish,
    # even on a busy machine (with 3 iterations it sometimes finished first)
    overrides = TRIAL + ["train.iterations=8", "train.eval_every=8"]
    client = mlflow.MlflowClient(uri)
    interrupted = threading.Event()

    def press_ctrl_c_after_first_iteration():
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.2)
            experiment = client.get_experiment_by_name("train-test") if Path(uri[len("sqlite:///") :]).exists() else None
            runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.optuna_trial = '0' and tags.sweep = '{name}'") if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "progress/iteration"):
                interrupted.set()
                os.kill(os.getpid(), signal.SIGINT)
                return

    watcher = threading.Thread(target=press_ctrl_c_after_first_iteration, daemon=True)
    # earlier tests in the same process (Prefect runs, worker pools) may leave another SIGINT
    # handler installed: this test is about what a person's Ctrl-C does, so use Python's own
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            sweep_flow(str(path), overrides, storage=storage, tracking_uri=uri)
        watcher.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupted.is_set()
    study = optuna.load_study(study_name=name, storage=storage)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "FAIL"), (1, "WAITING")]
    assert study.trials[1].system_attrs["failed_trial"] == 0 and study_counts(study)["failed"] == 0
    (run,) = client.search_runs([client.get_experiment_by_name("train-test").experiment_id], filter_string=f"tags.sweep = '{name}' and tags.kind = 'train'")
    assert run.info.status == "FAILED"
    parent = client.search_runs([run.info.experiment_id], filter_string=f"tags.optuna_study = '{name}'")[0]
    assert parent.info.status == "KILLED"

    result = sweep_flow(str(path), overrides, storage=storage, tracking_uri=uri)
    assert [(t["number"], t["state"]) for t in result["trials"]] == [(0, "FAIL"), (1, "COMPLETE")]
    assert result["trials"][1]["mlflow_run_id"] == run.info.run_id and result["trials"][1]["retry_of"] == 0
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["optuna_trial"] == "1"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "progress/iteration")) == list(range(1, 9))


# ------------------------------------------------------------------------ PostgreSQL ----


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (postgres refuses to run as root: as root the
    server runs as the `postgres` user of Debian's package)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs Debian's postgresql package")
    as_user: list[str] = []
    home = Path(tempfile.mkdtemp(prefix="attnrl-pg-"))  # not under pytest's tmp (mode 0700, root's)
    if os.geteuid() == 0:
        try:
            shutil.chown(home, user="postgres")
        except LookupError:
            shutil.rmtree(home)
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = home / "data"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "attnrl", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-o", options, "-w", "start"],
                       check=True, capture_output=True, timeout=120)
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="attnrl", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql+psycopg2://attnrl@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def _cli_worker(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("wb") as out:
        # a session of its own: SIGKILL to the group takes the worker's helpers down with it, like a lost machine
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)


@pytest.mark.slow
def test_postgres_two_workers_run_every_trial_once_and_a_killed_worker_loses_nothing(base_uri, tmp_path, postgres_url):
    from flows.sweep import prefect_api_for_children, sweep_flow

    uri = mlflow_store(tmp_path)
    path = write_sweep(tmp_path / "pg.yaml", heartbeat={"interval_s": 1, "grace_s": 10, "max_retry": 2}, poll_s=1.0)
    name = yaml.safe_load(path.read_text())["study_name"]
    overrides = TRIAL

    # 1. `--workers 2`: two worker processes share the study on PostgreSQL
    result = sweep_flow(str(path), overrides, n_trials=4, workers=2, storage=postgres_url, tracking_uri=uri)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2, "both workers ran trials"
    client = mlflow.MlflowClient(uri)
    runs = children(client, result["parent_run_id"])
    assert sorted(r.data.tags["optuna_trial"] for r in runs) == ["0", "1", "2", "3"]  # one MLflow run per trial
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)

    # 2. the same command on "two machines"; one is SIGKILLed mid-trial, after its first iteration
    # was checkpointed. Its trial must be re-queued after the grace period and resumed, not lost.
    sets = [a for o in TRIAL + ["train.iterations=2", "train.checkpoint_every=1"] for a in ("--set", o)]
    args = ["sweep", "--config", str(path), "--trials", "6", "--storage", postgres_url, "--tracking-uri", uri, "--quiet", *sets]
    with prefect_api_for_children():
        env = dict(os.environ)
    doomed = _cli_worker(args, tmp_path / "doomed.log", env)
    survivor = None
    victim = None
    me = f"{socket.gethostname()}:{doomed.pid}"
    try:
        deadline = time.time() + 600
        while victim is None and time.time() < deadline and doomed.poll() is None:
            time.sleep(0.3)
            running = optuna.load_study(study_name=name, storage=postgres_url).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            mine = [t for t in running if t.user_attrs.get("worker") == me]
            if mine and survivor is None:  # the second machine joins once the first holds a trial
                survivor = _cli_worker(args, tmp_path / "survivor.log", env)
            for t in mine:
                run = client.search_runs([runs[0].info.experiment_id], filter_string=f"tags.optuna_trial = '{t.number}' and tags.sweep = '{name}'")
                if run and client.get_metric_history(run[0].info.run_id, "progress/iteration"):
                    victim = (t.number, run[0].info.run_id)
        assert victim is not None and survivor is not None, (tmp_path / "doomed.log").read_text()[-3000:]
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
        assert survivor.wait(timeout=900) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    finally:
        for proc in (doomed, survivor):
            try:
                if proc is not None:
                    os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    study = optuna.load_study(study_name=name, storage=postgres_url)
    states = {t.number: t.state.name for t in study.trials}
    assert states[victim[0]] == "FAIL"
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim[0]]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert study_counts(study)["complete"] == 6 and study_counts(study)["failed"] == 0
    # the retry continued the killed trial's MLflow run from its checkpoint: iteration 1 was not redone
    assert retry[0].user_attrs["mlflow_run_id"] == victim[1]
    resumed = client.get_run(victim[1])
    assert resumed.info.status == "FINISHED" and resumed.data.tags["optuna_retry_of"] == str(victim[0])
    assert sorted(m.step for m in client.get_metric_history(victim[1], "progress/iteration")) == [1, 2]
    # every COMPLETE trial has exactly one MLflow child run, and no child run is left over
    complete = sorted(t.number for t in study.trials if t.state.name == "COMPLETE")
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children(client, result["parent_run_id"])) == complete
