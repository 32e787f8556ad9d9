"""Integration: the pivot world through the real flows -- a reduced warm start of its own base
(its own tokenizer and cache key), then training iterations that log the pivot hit rates."""

import mlflow
import pytest

from attnrl_core.config import load_config
from attnrl_core.pivot_world import PHRASES
from tests.support import REDUCED, REPO, mlflow_store, run_metrics

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "experiments/pivot.yaml")
PIVOT_REDUCED = REDUCED + ["name=pivot-test", "warmstart.batch_size=8", "eval.max_new_tokens=64"]
TRAIN = [
    "data.heldout_size=8",
    "eval.max_new_tokens=64",
    "data.max_response_tokens=96",
    "batch.prompts=3",
    "batch.min_prompts=2",
    "batch.target_sequences=16",
    "rollout.group_size=3",
    "optim.minibatch_sequences=32",
    "train.iterations=2",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "train.retry_delay_s=0",
    "verify.timeout_s=60",
]


def test_cache_keys_of_the_two_worlds():
    from flows.warmstart import cache_key

    # the arithmetic world's keys are what they were before the pivot world existed
    assert cache_key(load_config(REPO / "experiments/tiny.yaml")) == "21ae243b6c4e3d98"
    assert cache_key(load_config(REPO / "experiments/tiny.yaml", ["warmstart.flaw=0"])) == "7a554250b2401252"
    pivot = load_config(CONFIG)
    assert cache_key(pivot) != cache_key(load_config(CONFIG, ["data.world=arith"]))
    assert cache_key(pivot) != cache_key(load_config(CONFIG, ["data.pivot.check_rate=0.5"]))
    assert cache_key(pivot) == cache_key(load_config(CONFIG, ["branch.criterion=random", "fci.zero_first_step=false"]))


def test_pivot_warm_start_then_training_logs_pivot_hit_rates(tmp_path):
    from flows.train import train_flow
    from flows.warmstart import warmstart_flow

    uri = mlflow_store(tmp_path)
    cfg = load_config(CONFIG, PIVOT_REDUCED)
    base = warmstart_flow(cfg_json=cfg.model_dump(mode="json"), tracking_uri=uri, quiet=True)
    assert set(base["heldout"]) == {"avg", "1", "2", "3", "4"}
    from attnrl_core.policy import load_policy

    _, tokenizer = load_policy(base["model_path"])
    assert set(PHRASES) <= set(tokenizer.get_vocab())  # the world's phrases are single tokens

    for extra in (["method=attnrl"], ["method=earliest", "pipeline=on_policy"]):
        result = train_flow(CONFIG, PIVOT_REDUCED + TRAIN + [f"model.path={base['model_path']}", *extra], tracking_uri=uri, quiet=True)
        assert mlflow.MlflowClient(uri).get_run(result["run_id"]).info.status == "FINISHED"
        metrics = run_metrics(uri, result["run_id"])
        for name in ("tree/pivot_hit_rate", "tree/plan_hit_rate", "tree/pivot_point_share", "tree/pivot_step_share"):
            assert 0.0 <= metrics[(name, 1)] <= 1.0, name
        assert ("tree/solve_all_after_ratio", 2) in metrics
