"""Integration: a reduced warm start and an evaluation, end to end, on real Prefect and MLflow."""

import json
import shutil

import mlflow
import pytest

from attnrl_core.config import load_config
from tests.support import REDUCED, mlflow_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reduced_cfg():
    return load_config("experiments/tiny.yaml", REDUCED + ["name=warmstart-test"])


def test_warmstart_trains_caches_and_logs(reduced_cfg, tmp_path):
    from flows.warmstart import base_path, warmstart_flow

    uri = mlflow_store(tmp_path)
    path = base_path(reduced_cfg)
    shutil.rmtree(path, ignore_errors=True)  # from an empty cache: the evaluation test may have filled it
    first = warmstart_flow(cfg_json=reduced_cfg.model_dump(mode="json"), tracking_uri=uri, quiet=True)
    assert first["model_path"] == str(path) and not first["cached"]
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    record = json.loads((path / "warmstart.json").read_text())
    assert len(record["losses"]) == reduced_cfg.warmstart.steps
    assert record["losses"][-1] < record["losses"][0]  # it learned something
    assert set(first["heldout"]) == {"avg", "1", "2", "3", "4"}

    # second call: cache hit, same MLflow run, nothing retrained
    second = warmstart_flow(cfg_json=reduced_cfg.model_dump(mode="json"), tracking_uri=uri, quiet=True)
    assert second["cached"] and second["mlflow_run_id"] == first["mlflow_run_id"]

    run = mlflow.MlflowClient(uri).get_run(first["mlflow_run_id"])
    assert run.data.tags["kind"] == "warmstart"
    assert "eval/heldout/level_4/avg_at_1" in run.data.metrics
    assert run.data.params["warmstart.steps"] == str(reduced_cfg.warmstart.steps)
    history = mlflow.MlflowClient(uri).get_metric_history(first["mlflow_run_id"], "warmstart/loss")
    assert len(history) >= 10
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(first["mlflow_run_id"], "base_policy")}
    assert "base_policy/model.safetensors" in artifacts
    # a live run: open from the first step (its span covers the training) and FINISHED at the end,
    # in an experiment the UI opens on its runs table
    assert run.info.status == "FINISHED"
    assert (run.info.end_time - run.info.start_time) / 1000 >= run.data.metrics["time/warmstart_s"]
    assert history[0].timestamp < run.info.end_time - 1000 * run.data.metrics["time/warmstart_s"] / 2
    experiment = mlflow.MlflowClient(uri).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_cache_key_follows_the_config(reduced_cfg):
    from flows.warmstart import cache_key

    other = load_config("experiments/tiny.yaml", REDUCED + ["warmstart.flaw=0"])
    assert cache_key(other) != cache_key(reduced_cfg)
    renamed = load_config("experiments/tiny.yaml", REDUCED + ["name=other", "branch.rho=0.5"])
    assert cache_key(renamed) == cache_key(reduced_cfg)  # RL settings do not change the base


def test_evaluate_flow_logs_table(reduced_cfg, tmp_path):
    from flows.evaluate import evaluate_flow
    from flows.warmstart import warmstart_flow

    uri = mlflow_store(tmp_path)
    base = warmstart_flow(cfg_json=reduced_cfg.model_dump(mode="json"), tracking_uri=uri, quiet=True)
    overrides = REDUCED + ["name=warmstart-test", "eval.samples=3", "eval.temperature=1.0"]
    result = evaluate_flow(base["model_path"], ["heldout", "tests/data/aime_sample.jsonl"], "experiments/tiny.yaml", overrides, tracking_uri=uri)
    rows = result["rows"]
    assert {r["benchmark"] for r in rows} == {"heldout", "aime_sample"}
    heldout_all = next(r for r in rows if r["benchmark"] == "heldout" and r["level"] == "all")
    assert heldout_all["problems"] == 40
    assert 0.0 <= heldout_all["avg@3"] <= heldout_all["pass@3"] <= 1.0
    run = mlflow.MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert "eval/aime_sample/pass_at_3" in run.data.metrics
    files = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(result["mlflow_run_id"], "eval")}
    assert "eval/eval_table.json" in files
