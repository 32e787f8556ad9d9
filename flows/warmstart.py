"""Warm-start flow: the tiny policy's supervised base, cached by config and logged to MLflow.

    attnrl warmstart --config experiments/tiny.yaml      # trains once (~1,200 steps), then cached

The cache key hashes everything that shapes the base (tiny model shape, warm-start settings,
difficulty levels, tokenizer phrases); a second call with the same key returns at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import mlflow
from prefect import flow
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnrl_core import data
from attnrl_core.config import Config, load_config
from attnrl_core.policy import load_policy
from flows import RUNS_DIR, tracking
from tasks.evaluate import HELDOUT, evaluate_policy
from tasks.warmstart import train_base

# Bump when the synthetic world or the warm-start recipe changes in a way the config cannot see.
RECIPE_VERSION = 1


def cache_key(cfg: Config) -> str:
    blob = json.dumps(
        {
            "tiny": cfg.model.tiny.model_dump(),
            "warmstart": cfg.warmstart.model_dump(),
            "levels": cfg.data.levels,
            "phrases": list(data.PHRASES),
            "recipe": RECIPE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_path(cfg: Config) -> Path:
    return RUNS_DIR / "cache" / "warmstart" / cache_key(cfg)


def _progress(quiet: bool, total: int):
    progress = Progress(
        TextColumn("[bold]warm start"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        console=Console(stderr=True),
    )
    task_id = progress.add_task("sft", total=total, loss=float("nan"))

    def on_step(step: int, loss: float, lr: float) -> None:
        progress.update(task_id, completed=step + 1, loss=loss)

    return progress, on_step


@flow(name="warmstart")
def warmstart_flow(
    config_path: str | None = "experiments/tiny.yaml",
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    quiet: bool = False,
    cfg_json: dict | None = None,
) -> dict:
    """Return {'model_path', 'cached', 'heldout': {level: accuracy, ...}, 'mlflow_run_id'}.

    Trains (or reuses) the base policy, evaluates it greedily on the held-out set, and logs a
    run named 'warmstart-<key>' with params, the loss curve, per-level accuracy and the model.
    """
    cfg = Config.model_validate(cfg_json) if cfg_json is not None else load_config(config_path, overrides or [])
    experiment_id = tracking.setup(tracking_uri, cfg.name)
    key = cache_key(cfg)
    path = base_path(cfg)
    cached = (path / "warmstart.json").is_file()
    train_seconds = 0.0
    if not cached:
        progress, on_step = _progress(quiet, cfg.warmstart.steps)
        start = time.perf_counter()
        with progress:
            train_base(cfg.model_dump(mode="json"), str(path), on_step=on_step)
        train_seconds = time.perf_counter() - start
    record = json.loads((path / "warmstart.json").read_text())

    if "heldout" not in record:
        model, tokenizer = load_policy(path, cfg.model)
        report = evaluate_policy(model, tokenizer, cfg.model_dump(mode="json"), [HELDOUT], seed=cfg.warmstart.seed)[HELDOUT]
        record["heldout"] = {"avg": report.avg, **{str(k): v.avg for k, v in report.by_level.items()}}
        record["train_seconds"] = train_seconds
        tmp = path / "warmstart.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(path / "warmstart.json")

    client = mlflow.MlflowClient()
    existing = client.search_runs([experiment_id], filter_string=f"tags.warmstart_key = '{key}'", max_results=1)
    if existing:
        run_id = existing[0].info.run_id
    else:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"warmstart-{key}") as run:
            run_id = run.info.run_id
            mlflow.set_tags({"kind": "warmstart", "warmstart_key": key, "git_commit": tracking.git_commit()})
            mlflow.log_params({f"warmstart.{k}": v for k, v in cfg.warmstart.model_dump(mode="json").items()})
            mlflow.log_params({f"model.tiny.{k}": v for k, v in cfg.model.tiny.model_dump().items()})
            mlflow.log_param("parameters", record["summary"]["parameters"])
            losses = record["losses"]
            stride = max(1, len(losses) // 200)  # ~200 points draw the curve; thousands only slow the UI
            for step in range(0, len(losses), stride):
                mlflow.log_metric("warmstart/loss", losses[step], step=step)
            heldout = record["heldout"]
            mlflow.log_metric(f"eval/{HELDOUT}/avg_at_1", heldout["avg"])
            for level, acc in heldout.items():
                if level != "avg":
                    mlflow.log_metric(f"eval/{HELDOUT}/level_{level}/avg_at_1", acc)
            if record.get("train_seconds"):
                mlflow.log_metric("time/warmstart_s", record["train_seconds"])
            mlflow.log_artifacts(str(path), artifact_path="base_policy")
    return {"model_path": str(path), "cached": cached, "heldout": record["heldout"], "mlflow_run_id": run_id}
