"""Evaluation flow: avg@K / pass@K of a saved policy on benchmarks, printed and logged to MLflow.

    attnrl eval --model runs/cache/warmstart/<key> --benchmark heldout tests/data/aime_sample.jsonl --samples 4 --temperature 0.6
    attnrl eval --config experiments/smollm2-gsm.yaml        # the config's eval.benchmarks, on its rollout.engine

The policy is evaluated on the config's rollout engine (hf here, the vLLM server on GPUs) with a
progress bar per benchmark set (problems done, tokens/s) unless quiet.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from prefect import flow

from attnrl_core.config import check_inputs, load_config
from attnrl_core.evaluation import EvalReport, objective_value
from attnrl_core.policy import load_policy
from attnrl_core.rollout import engine_class
from flows import tracking
from flows.progress import EvalProgress
from tasks.evaluate import evaluate_policy


def report_rows(reports: dict[str, EvalReport]) -> list[dict]:
    """One row per benchmark (and per level of the synthetic set): the evaluation table."""
    rows = []
    for name, rep in reports.items():
        rows.append({"benchmark": name, "level": "all", "problems": rep.problems, f"avg@{rep.k}": rep.avg, f"pass@{rep.k}": rep.pass_k})
        for level, lrep in rep.by_level.items():
            rows.append({"benchmark": name, "level": str(level), "problems": lrep.problems, f"avg@{rep.k}": lrep.avg, f"pass@{rep.k}": lrep.pass_k})
    return rows


def log_reports(client: mlflow.MlflowClient, run_id: str, reports: dict[str, EvalReport], step: int | None = None, metrics: bool = True) -> None:
    """Metrics eval/<benchmark>/avg_at_K ... (unless the caller batches them) plus the table and
    a few sample responses as artifacts."""
    if metrics:
        for name, rep in reports.items():
            for key, value in rep.metrics(f"eval/{name}").items():
                client.log_metric(run_id, key, value, step=step or 0)
    suffix = "" if step is None else f"_iter{step:05d}"
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / f"eval_table{suffix}.json"
        table.write_text(json.dumps(report_rows(reports), indent=1))
        samples = Path(tmp) / f"eval_samples{suffix}.json"
        samples.write_text(
            json.dumps({n: [{"prompt": p, "response": r, "correct": c} for p, r, c in rep.samples] for n, rep in reports.items()}, indent=1)
        )
        client.log_artifacts(run_id, tmp, artifact_path="eval")


@flow(name="evaluate")
def evaluate_flow(
    model_path: str,
    benchmarks: list[str] | None = None,
    config_path: str | None = "experiments/tiny.yaml",
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    quiet: bool = True,
) -> dict:
    """Evaluate the policy at `model_path` on `benchmarks` (sources: 'heldout' or files, each
    with the eval section's sampling), or on the config's eval.benchmarks when None. Returns
    {'rows': the table, 'objective': {'metric', 'value'}, 'mlflow_run_id': ...}."""
    if benchmarks:  # these sets, with the eval section's sampling, in place of the config's
        overrides = list(overrides or []) + ["eval.objective=[]", "eval.benchmarks=" + json.dumps(list(benchmarks))]
    cfg = load_config(config_path, overrides or [])
    check_inputs(cfg, model_path=str(model_path), train_data=False)
    cfg_json = cfg.model_dump(mode="json")
    experiment_id = tracking.setup(tracking_uri, cfg.name)
    model, tokenizer = load_policy(model_path, cfg.model)
    engine = engine_class(cfg.rollout.engine).for_run(model, tokenizer, str(model_path), cfg.rollout)
    try:
        with EvalProgress(quiet) as progress:
            reports = evaluate_policy(engine, tokenizer, cfg_json, seed=cfg.seed, progress=progress)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    objective = {"metric": cfg.eval.objective_metric(), "value": objective_value(cfg.eval, reports)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"eval-{Path(model_path).name}") as run:
        mlflow.set_tags({"kind": "evaluation", "model_path": str(model_path), "git_commit": tracking.git_commit(), "objective_metric": objective["metric"]})
        sets = cfg.eval.sets()
        mlflow.log_params(
            {"eval.samples": cfg.eval.samples, "eval.temperature": cfg.eval.temperature, "benchmarks": ",".join(b.key for b in sets), "rollout.engine": cfg.rollout.engine}
        )
        mlflow.log_dict([b.model_dump() for b in sets], "eval/benchmark_sets.json")
        log_reports(mlflow.MlflowClient(), run.info.run_id, reports)
        if objective["metric"].startswith("eval/mean/"):
            mlflow.log_metric(objective["metric"], objective["value"], step=0)
    return {"rows": report_rows(reports), "objective": objective, "mlflow_run_id": run.info.run_id}
