"""Integration: the training flow on the reduced tiny world, with real Prefect, MLflow and checkpoints.

All tests start from one base policy (the checked-in default tiny base, tests/support.py
FIXTURE); each test has its own MLflow store.
"""

import json
from pathlib import Path

import mlflow
import pytest
import torch

from attnrl_core.config import load_config
from tests.support import assert_same_weights, final_weights, mlflow_store, run_metrics, train

pytestmark = pytest.mark.slow


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
    uri = mlflow_store(tmp_path)
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
    uri = mlflow_store(tmp_path)
    clean = train(uri)
    faulted = train(uri, "train.fault=rollout@1,score@2,branch@2,update@2,update@3,checkpoint@3")
    assert_same_weights(final_weights(clean), final_weights(faulted))
    assert run_metrics(uri, clean["run_id"]) == run_metrics(uri, faulted["run_id"])


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(base_uri, tmp_path):
    from attnrl_core.errors import AttnRLError
    from tasks.checkpoint import complete_checkpoints

    uri = mlflow_store(tmp_path)
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

    uri = mlflow_store(tmp_path)
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


def test_torn_checkpoint_is_skipped(base_uri, tmp_path):
    from tasks.checkpoint import complete_checkpoints, is_complete

    uri = mlflow_store(tmp_path)
    result = train(uri, "train.iterations=2", "train.keep_last=3")
    run_dir = Path(result["checkpoint_dir"])
    newest = complete_checkpoints(run_dir)[-1]
    with open(newest / "policy.pt", "r+b") as f:  # a torn write: the file is cut short
        f.truncate(100)
    assert not is_complete(newest)
    assert complete_checkpoints(run_dir)[-1].name == "iter_000001"


def test_one_step_pipeline_primes_then_keeps_exactly_one_pending_batch(base_uri, tmp_path):
    from tasks.checkpoint import complete_checkpoints

    uri = mlflow_store(tmp_path)
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
