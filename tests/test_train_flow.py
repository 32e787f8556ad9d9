"""Integration: the training flow on the reduced tiny world, with real Prefect, MLflow and checkpoints.

All tests start from one base policy (the checked-in default tiny base, see FIXTURE); each
test has its own MLflow store.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import torch

from attnrl_core.config import load_config
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# The integration tests start from tests/fixtures/tiny_base: the default (flawed) tiny base made
# by the warm-start flow (`make test-fixture` rebuilds it). Its accuracy is mixed (40.0% greedy:
# ~85% on level 1, ~1% on levels 3-4), so trees have mixed leaves and every phase does real work.
FIXTURE = REPO / "tests" / "fixtures" / "tiny_base"
TRAIN_REDUCED = [
    "name=train-test",
    f"model.path={FIXTURE}",
    "data.heldout_size=16",
    "data.max_response_tokens=96",
    "eval.max_new_tokens=96",
    "batch.prompts=4",
    "batch.min_prompts=2",
    "batch.max_prompts=8",
    "batch.target_sequences=24",
    "rollout.group_size=4",
    "branch.min_token_offset=4",
    "branch.min_token_gap=2",
    "optim.minibatch_sequences=32",
    "optim.lr=1.0e-4",
    "train.iterations=3",
    "train.eval_every=2",
    "train.checkpoint_every=1",
    "train.retry_delay_s=0",
    # a verdict must not depend on how busy the machine is: runs compared bit for bit must not
    # see a fallback time out in one and not the other
    "verify.timeout_s=60",
]


CONFIG = str(REPO / "experiments/tiny.yaml")


def cfg_json(*extra: str) -> dict:
    return load_config(CONFIG, TRAIN_REDUCED + list(extra)).model_dump(mode="json")


def train(uri: str, *extra: str, **kwargs) -> dict:
    from flows.train import train_flow

    return train_flow(CONFIG, TRAIN_REDUCED + list(extra), tracking_uri=uri, quiet=True, **kwargs)


@pytest.fixture(scope="session")
def base_uri(session_home):
    """The shared base policy (a checked-in fixture) and an MLflow store for session-wide use."""
    assert (FIXTURE / "model.safetensors").is_file(), "tests/fixtures/tiny_base is missing: run `make test-fixture`"
    return f"sqlite:///{session_home / 'base-mlflow.db'}"


def run_metrics(uri: str, run_id: str) -> dict[tuple[str, int], float]:
    """Every (metric, step) -> value of a run, timing metrics excluded (they measure the machine)."""
    client = mlflow.MlflowClient(uri)
    out = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith(("time/", "progress/wall_s", "throughput/tokens_per_s")):
            continue
        for m in client.get_metric_history(run_id, key):
            assert (key, m.step) not in out, f"metric {key} logged twice at step {m.step}"
            out[(key, m.step)] = m.value
    return out


def final_weights(result: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(result["final_policy"]) / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


@pytest.mark.parametrize(
    "extra",
    [
        ["method=attnrl"],
        ["method=treerl"],
        ["method=grpo", "optim.kl_coef=0.0"],
        ["method=random"],
        ["method=earliest"],
        ["pipeline=on_policy", "expansion.fci_filter=false", "expansion.mode=uniform", "batch.adaptive=false"],
        ["fci.aggregate=mean", "expansion.rounding=round", "batch.formula=paper", "expansion.strict=false"],
    ],
    ids=["attnrl", "treerl", "grpo", "random", "earliest", "on-policy-ablations", "paper-variants"],
)
def test_two_iterations_per_method(base_uri, tmp_path, extra):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(uri, "train.iterations=2", *extra)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == load_config(None, extra).method
    metrics = run_metrics(uri, result["run_id"])
    steps = {step for (_, step) in metrics}
    assert steps == {0, 1, 2}  # 0 = the base evaluation
    assert ("progress/iteration", 2) in metrics and ("batch/prompts", 1) in metrics
    assert ("eval/heldout/avg_at_1", 2) in metrics and ("eval/heldout/avg_at_1", 0) in metrics
    assert ("actor/updated", 2) in metrics
    if "pipeline=on_policy" in extra:
        assert metrics[("actor/updated", 1)] == 1.0 or metrics[("batch/valid_sequences", 1)] == 0.0
    else:
        assert metrics[("actor/updated", 1)] == 0.0  # the first one-step iteration only primes
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"config", "eval", "trees", "checkpoints", "final_policy"} <= artifacts
    assert Path(result["final_policy"], "config.json").is_file()


def test_fault_injection_retry_matches_unfaulted_run(base_uri, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    clean = train(uri)
    faulted = train(uri, "train.fault=rollout@1,score@2,branch@2,update@2,update@3,checkpoint@3")
    assert_same_weights(final_weights(clean), final_weights(faulted))
    assert run_metrics(uri, clean["run_id"]) == run_metrics(uri, faulted["run_id"])


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(base_uri, tmp_path):
    from attnrl_core.errors import AttnRLError
    from tasks.checkpoint import complete_checkpoints

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(AttnRLError, match="non-finite|became"):
        train(uri, "optim.lr=1.0e+30", "train.iterations=6")
    run = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("train-test").experiment_id])[0]
    assert run.info.status == "FAILED"
    done = complete_checkpoints(Path(run.data.tags["checkpoint_dir"]))
    assert done, "the checkpoints written before the NaN are kept"
    for path in done:
        weights = torch.load(path / "policy.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_deepspeed_backend_retry_and_resume_match_its_uninterrupted_run(base_uri, tmp_path, monkeypatch):
    """The DeepSpeed trainer (ZeRO-2, one gloo rank on CPU) through the whole flow: an update
    retried in process (snapshot restore) and a failed run resumed from its checkpoint (optimizer
    state read back) both end with the uninterrupted run's weights and metrics."""
    from flows.train import train_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ds = ["train.backend=deepspeed", "train.zero_stage=2", "train.retries=1"]
    clean = train(uri, *ds)
    assert mlflow.MlflowClient(uri).get_run(clean["run_id"]).data.params["train.backend"] == "deepspeed"
    retried = train(uri, *ds, "train.fault=update@2")
    assert_same_weights(final_weights(clean), final_weights(retried))
    assert run_metrics(uri, clean["run_id"]) == run_metrics(uri, retried["run_id"])

    monkeypatch.setenv("ATTNRL_FAULT", "update@3")  # with no retries the run fails after iteration 2's checkpoint
    with pytest.raises(Exception, match="injected fault|update"):
        train(uri, *ds[:-1], "train.retries=0", run_name="ds-resume")
    monkeypatch.delenv("ATTNRL_FAULT")
    resumed = train_flow(None, tracking_uri=uri, resume="ds-resume", quiet=True)
    assert_same_weights(final_weights(clean), final_weights(resumed))
    assert run_metrics(uri, clean["run_id"]) == run_metrics(uri, resumed["run_id"])


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True, env=env, **kw)


def _env(uri: str) -> dict:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = uri
    # a Prefect home of its own: a subprocess we SIGKILL must not take down (or share) the
    # temporary API server of this test process
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="attnrl-cli-prefect-")
    return env


def _sets(*extra: str) -> list[str]:
    out = []
    for item in TRAIN_REDUCED + list(extra):
        out += ["--set", item]
    return out


def test_kill_9_then_resume_equals_uninterrupted_run(base_uri, tmp_path):
    """SIGKILL at seeded random moments (mid-rollout, mid-update, mid-checkpoint...), resume until
    done: same final weights, same metrics, no step logged twice, no checkpoint corrupted."""
    import random

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = ["train.iterations=5"]
    env = _env(uri)
    # the uninterrupted reference runs the same way as the killed one: a fresh CLI process, so
    # nothing this test process did before (other tests, its thread pool) can differ between them
    started_at = time.monotonic()
    done = _cli("train", "--quiet", "--run-name", "reference", *_sets(*extra), env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    duration = time.monotonic() - started_at  # kill moments scale with this machine's speed
    rng = random.Random(7)
    command = ["train", "--quiet", "--run-name", "killed", *_sets(*extra)]
    kills = 0
    while True:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *command], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            # between a third and nine tenths of a whole run: start-up, then the iterations' phases
            proc.wait(timeout=rng.uniform(0.35, 0.9) * duration if kills < 3 else 900)
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        client = mlflow.MlflowClient(uri)
        started = client.search_runs(
            [client.get_experiment_by_name("train-test").experiment_id], filter_string="attributes.run_name = 'killed'"
        )
        if started:  # killed before the run existed: start it again instead
            command = ["resume", "killed", "--quiet"]
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    assert kills >= 1
    client = mlflow.MlflowClient(uri)
    killed = client.search_runs([client.get_experiment_by_name("train-test").experiment_id], filter_string="attributes.run_name = 'killed'")
    assert len(killed) == 1 and killed[0].info.status == "FINISHED"
    reference = client.search_runs(
        [client.get_experiment_by_name("train-test").experiment_id], filter_string="attributes.run_name = 'reference'"
    )[0]

    def policy_of(run) -> dict:
        return final_weights({"final_policy": Path(run.data.tags["checkpoint_dir"]) / "final_policy"})

    assert_same_weights(policy_of(reference), policy_of(killed[0]))
    assert run_metrics(uri, reference.info.run_id) == run_metrics(uri, killed[0].info.run_id)


def test_torn_checkpoint_is_skipped(base_uri, tmp_path):
    from tasks.checkpoint import complete_checkpoints, is_complete

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(uri, "train.iterations=2", "train.keep_last=3")
    run_dir = Path(result["checkpoint_dir"])
    newest = complete_checkpoints(run_dir)[-1]
    with open(newest / "policy.pt", "r+b") as f:  # a torn write: the file is cut short
        f.truncate(100)
    assert not is_complete(newest)
    assert complete_checkpoints(run_dir)[-1].name == "iter_000001"


def test_cli_train_end_to_end_and_bad_input(base_uri, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _cli("train", "--quiet", *_sets("train.iterations=2"), env=_env(uri), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "before" in done.stdout and "after" in done.stdout and "MLflow run" in done.stdout

    bad = _cli("train", "--quiet", "--set", "branch.rho=1.5", env=_env(uri), timeout=120)
    assert bad.returncode == 2
    assert "branch.rho" in bad.stderr and "<= 1.0" in bad.stderr

    unreachable = _cli("train", "--quiet", *_sets(), "--tracking-uri", "http://127.0.0.1:9", env=_env(uri), timeout=120)
    assert unreachable.returncode == 2 and "unreachable" in unreachable.stderr

    missing = _cli("resume", "no-such-run", "--quiet", env=_env(uri), timeout=120)
    assert missing.returncode == 2 and "no-such-run" in missing.stderr


def test_one_step_pipeline_primes_then_keeps_exactly_one_pending_batch(base_uri, tmp_path):
    from tasks.checkpoint import complete_checkpoints

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(uri, "train.iterations=3", "train.keep_last=5")
    metrics = run_metrics(uri, result["run_id"])
    states = [json.loads((p / "state.json").read_text()) for p in complete_checkpoints(Path(result["checkpoint_dir"]))]
    assert [s["iteration"] for s in states] == [1, 2, 3]
    for s in states:
        # the batch sampled in iteration i waits, scored and planned, for iteration i + 1
        assert len(s["pending"]) == metrics[("batch/prompts", s["iteration"])]
        assert all(r["step_fci"] and r["token_logprobs"] for g in s["pending"] for r in g["responses"])
    assert metrics[("actor/updated", 1)] == 0.0  # iteration 1 only primes

    on_policy = train(uri, "train.iterations=1", "pipeline=on_policy")
    state = json.loads((complete_checkpoints(Path(on_policy["checkpoint_dir"]))[-1] / "state.json").read_text())
    assert state["pending"] == []
