"""Integration: evaluation as the config defines it (eval.benchmarks, eval.objective) in the training
flow and the evaluation flow, with real Prefect and MLflow, on the run's own engine."""

import mlflow
import pytest

from tests.support import DATA, FIXTURE, mlflow_store, run_metrics, train

pytestmark = pytest.mark.slow

AIME = str(DATA / "aime_sample.jsonl")
SETS = [
    f"eval.benchmarks=[heldout, {{source: '{AIME}', name: aime, samples: 2, temperature: 1.0, max_new_tokens: 24}}]",
    "eval.objective=[heldout, aime]",
]


def test_two_sets_their_own_sampling_and_a_mean_objective_pick_the_best(base_uri, tmp_path):
    uri = mlflow_store(tmp_path)
    result = train(uri, "train.iterations=2", "train.eval_every=1", *SETS)
    metrics = run_metrics(uri, result["run_id"])
    for step in (0, 1, 2):
        heldout, aime = metrics[("eval/heldout/avg_at_1", step)], metrics[("eval/aime/avg_at_2", step)]
        assert metrics[("eval/mean/avg", step)] == pytest.approx((heldout + aime) / 2)
        assert ("eval/aime/pass_at_2", step) in metrics and ("eval/heldout/level_1/avg_at_1", step) in metrics
    assert not any(k.startswith("eval/aime/level_") for k, _ in metrics)  # a file without levels has none
    run = mlflow.MlflowClient(uri).get_run(result["run_id"])
    assert run.data.tags["objective_metric"] == result["objective_metric"] == "eval/mean/avg"
    best = max((1, 2), key=lambda it: (metrics[("eval/mean/avg", it)], -it))  # the first of equal scores
    assert result["best"]["iteration"] == best and result["best"]["score"] == metrics[("eval/mean/avg", best)]
    # the final table's data: per set (levels where the set has them) and the objective
    assert set(result["final_eval"]) == {"heldout", "aime", "objective"}
    assert result["final_eval"]["aime"]["k"] == 2 and result["final_eval"]["aime"]["levels"] == {}
    assert set(result["final_eval"]["heldout"]["levels"]) == {"1", "2", "3", "4"}
    assert result["base_eval"]["objective"]["value"] == metrics[("eval/mean/avg", 0)]


def test_evaluation_flow_uses_the_configs_sets_with_a_progress_hook(base_uri, tmp_path, monkeypatch):
    from flows.evaluate import evaluate_flow
    from flows.progress import EvalProgress

    seen = []
    original = EvalProgress.__call__
    monkeypatch.setattr(EvalProgress, "__call__", lambda self, *a: (seen.append(a), original(self, *a)))
    uri = mlflow_store(tmp_path)
    overrides = ["name=eval-test", "data.heldout_size=8", "eval.max_new_tokens=48", "eval.progress_rows=4", *SETS]
    result = evaluate_flow(str(FIXTURE), None, "experiments/tiny.yaml", overrides, tracking_uri=uri)
    assert {r["benchmark"] for r in result["rows"]} == {"heldout", "aime"}
    assert result["objective"]["metric"] == "eval/mean/avg"
    # heldout: 8 problems greedy in calls of 4; aime: 2 samples each, so 2 problems a call
    assert [a[:3] for a in seen if a[0] == "heldout"] == [("heldout", 0, 8), ("heldout", 4, 8), ("heldout", 8, 8)]
    aime = [a for a in seen if a[0] == "aime"]
    assert [a[1:3] for a in aime] == [(0, 3), (2, 3), (3, 3)] and aime[-1][3] > 0  # tokens generated so far
    run = mlflow.MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert run.data.metrics["eval/mean/avg"] == pytest.approx(result["objective"]["value"])
