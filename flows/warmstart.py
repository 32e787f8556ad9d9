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
from mlflow.entities import Metric, Param
from prefect import flow
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnrl_core.config import Config, load_config
from attnrl_core.policy import load_policy
from attnrl_core.worlds import world_for
from flows import RUNS_DIR, tracking
from tasks.evaluate import HELDOUT, evaluate_policy
from tasks.warmstart import train_base

# Bump when the synthetic world or the warm-start recipe changes in a way the config cannot see.
RECIPE_VERSION = 1


# The same for the pivot world (attnrl_core/pivot_world.py); it enters only that world's keys.
PIVOT_RECIPE_VERSION = 3  # 2: one-digit operations, parts in definition order; 3: no lead on the first combination


def cache_key(cfg: Config) -> str:
    """16 hex digits over what shapes the base. The arithmetic world's key is what it was before
    there were other worlds (same fields, same phrases); another world adds its name, its knobs,
    its phrases and its recipe version."""
    world = world_for(cfg.data)
    fields = {
        "tiny": cfg.model.tiny.model_dump(),
        "warmstart": cfg.warmstart.model_dump(),
        "levels": cfg.data.levels,
        "phrases": list(world.phrases),
        "recipe": RECIPE_VERSION,
    }
    if world.name == "pivot":
        fields.update({"world": world.name, "world_knobs": cfg.data.pivot.model_dump(), "world_recipe": PIVOT_RECIPE_VERSION})
    blob = json.dumps(fields, sort_keys=True)
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


def _start_run(client: mlflow.MlflowClient, experiment_id: str, cfg: Config, key: str) -> str:
    """The warm start's MLflow run, open from its first step: tags and params now, curve live."""
    run = client.create_run(
        experiment_id,
        run_name=f"warmstart-{key}",
        tags={
            "kind": "warmstart",
            "warmstart_key": key,
            "git_commit": tracking.git_commit(),
            "mlflow.note.content": f"Supervised warm start of the tiny policy: {cfg.warmstart.steps} steps, flaw {cfg.warmstart.flaw} "
            f"on levels {cfg.warmstart.flaw_levels}. Its result is the base policy the training runs start from.",
        },
    )
    params = {f"warmstart.{k}": v for k, v in cfg.warmstart.model_dump(mode="json").items()}
    params.update({f"model.tiny.{k}": v for k, v in cfg.model.tiny.model_dump().items()})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def _finish_run(client: mlflow.MlflowClient, run_id: str, record: dict, path: Path, logged_live: bool, stride: int) -> None:
    """The base's size, held-out accuracy and files; the loss curve too when it was not logged live
    (a base found in the cache, logged to a store that has no run for it yet)."""
    client.log_param(run_id, "parameters", record["summary"]["parameters"])
    if not logged_live:
        losses = record["losses"]
        stamp = int(time.time() * 1000)
        metrics = [Metric("warmstart/loss", losses[step], stamp, step) for step in range(0, len(losses), stride)]
        for i in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[i : i + 500])
    heldout = record["heldout"]
    client.log_metric(run_id, f"eval/{HELDOUT}/avg_at_1", heldout["avg"])
    for level, acc in heldout.items():
        if level != "avg":
            client.log_metric(run_id, f"eval/{HELDOUT}/level_{level}/avg_at_1", acc)
    if record.get("train_seconds"):
        client.log_metric(run_id, "time/warmstart_s", record["train_seconds"])
    client.log_artifacts(run_id, str(path), artifact_path="base_policy")
    client.set_terminated(run_id, status="FINISHED")


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
    client = mlflow.MlflowClient()
    finished = client.search_runs(
        [experiment_id], filter_string=f"tags.warmstart_key = '{key}' and attributes.status = 'FINISHED'", max_results=1
    )
    run_id = finished[0].info.run_id if finished else _start_run(client, experiment_id, cfg, key)
    stride = max(1, cfg.warmstart.steps // 200)  # ~200 points draw the curve; thousands only slow the UI
    try:
        train_seconds = 0.0
        if not cached:
            progress, on_step = _progress(quiet, cfg.warmstart.steps)

            def on_step_logged(step: int, loss: float, lr: float) -> None:
                on_step(step, loss, lr)
                if step % stride == 0 or step == cfg.warmstart.steps - 1:  # live: the curve grows while it trains
                    client.log_batch(run_id, metrics=[Metric("warmstart/loss", loss, int(time.time() * 1000), step),
                                                      Metric("warmstart/lr", lr, int(time.time() * 1000), step)])

            start = time.perf_counter()
            with progress:
                train_base(cfg.model_dump(mode="json"), str(path), on_step=on_step_logged)
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
        if not finished:
            _finish_run(client, run_id, record, path, logged_live=not cached, stride=stride)
    except BaseException:
        if not finished:
            client.set_terminated(run_id, status="FAILED")
        raise
    return {"model_path": str(path), "cached": cached, "heldout": record["heldout"], "mlflow_run_id": run_id}
