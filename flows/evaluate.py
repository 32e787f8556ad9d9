"""Evaluation flow: avg@K / pass@K of a saved policy on benchmarks, printed and logged to MLflow.

    attnrl eval --model runs/cache/warmstart/<key> --benchmark heldout tests/data/aime_sample.jsonl --samples 4 --temperature 0.6
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from prefect import flow

from attnrl_core.config import load_config
from attnrl_core.evaluation import EvalReport
from attnrl_core.policy import load_policy
from flows import tracking
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
    benchmarks: list[str],
    config_path: str | None = "experiments/tiny.yaml",
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> dict:
    """Evaluate the policy at `model_path`; returns {'rows': the table, 'mlflow_run_id': ...}."""
    cfg = load_config(config_path, overrides or [])
    cfg_json = cfg.model_dump(mode="json")
    experiment_id = tracking.setup(tracking_uri, cfg.name)
    model, tokenizer = load_policy(model_path, cfg.model)
    reports = evaluate_policy(model, tokenizer, cfg_json, benchmarks, seed=cfg.seed)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"eval-{Path(model_path).name}") as run:
        mlflow.set_tags({"kind": "evaluation", "model_path": str(model_path), "git_commit": tracking.git_commit()})
        mlflow.log_params({"eval.samples": cfg.eval.samples, "eval.temperature": cfg.eval.temperature, "benchmarks": ",".join(benchmarks)})
        log_reports(mlflow.MlflowClient(), run.info.run_id, reports)
    return {"rows": report_rows(reports), "mlflow_run_id": run.info.run_id}
