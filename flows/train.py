"""The training flow: one Prefect flow run and one MLflow run per training run.

    attnrl train --config experiments/tiny.yaml [--set k=v ...] [--run-name NAME]
    attnrl resume NAME_OR_RUN_ID

Each iteration is a chain of retryable phase tasks — rollout, score, branch, update, then
evaluate (every train.eval_every) and checkpoint (every train.checkpoint_every) — over one
long-lived `TrainSession` (policy, reference, optimizer, engine). The iteration's outputs are
committed only when its phases succeeded; its metrics are logged as ONE MLflow batch at step =
iteration, after its checkpoint when it has one. A resumed run restarts after its last complete
checkpoint and skips logging the steps MLflow already holds (on CPU they are recomputed
bit-identically), so no metric step is ever logged twice.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import mlflow
import torch
from mlflow.tracking import MlflowClient
from prefect import flow
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnrl_core import data
from attnrl_core.config import Config, flatten, load_config
from attnrl_core.errors import AttnRLError
from attnrl_core.policy import load_policy
from attnrl_core.render import render_trees_html
from attnrl_core.rollout import make_engine
from attnrl_core.trainer import TRAINERS
from flows import RUNS_DIR, tracking
from flows.evaluate import log_reports
from tasks import checkpoint as ckpt
from tasks import session as sessions
from tasks.branch import branch
from tasks.evaluate import HELDOUT, evaluate_policy
from tasks.rollout import rollout
from tasks.score import score
from tasks.update import update

# Called after each evaluation with (iteration, the eval/ metrics); True stops the run there as
# pruned. A sweep passes one per trial to report to Optuna.
EvaluationHook = Callable[[int, dict[str, float]], bool]


class RunPruned(Exception):
    """Raised by the flow when its evaluation hook asks to stop (a pruned sweep trial)."""


PHASE_TASKS = {"rollout": rollout, "score": score, "branch": branch, "update": update}
SENTINEL = "progress/iteration"  # logged in every iteration's batch: its history says what MLflow holds


def default_run_name(cfg: Config) -> str:
    crit = "grpo" if cfg.advantage == "grpo" else cfg.branch.criterion
    return f"{cfg.method}-{crit}-s{cfg.seed}-{cfg.hash()[:6]}"


def find_run(client: MlflowClient, experiment_ids: list[str], ref: str):
    """An MLflow run by id, else by run name (the newest of that name)."""
    try:
        return client.get_run(ref)
    except Exception:  # noqa: BLE001 - not an id: try it as a name
        pass
    runs = client.search_runs(experiment_ids, filter_string=f"attributes.run_name = '{ref}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise AttnRLError(f"No MLflow run with id or name {ref!r} in the tracking store; `attnrl runs` lists them (or pass --tracking-uri).")
    return runs[0]


def _base_policy(cfg: Config, tracking_uri: str | None, quiet: bool) -> str:
    if cfg.model.path:
        return cfg.model.path
    from flows.warmstart import warmstart_flow

    return warmstart_flow(cfg_json=cfg.model_dump(mode="json"), tracking_uri=tracking_uri, quiet=quiet)["model_path"]


def build_session(cfg: Config, base: str, state: sessions.TrainState, policy_state=None, optim_state=None) -> sessions.TrainSession:
    """Policy (from the base, or a checkpoint's weights), frozen reference, engine, trainer."""
    torch.manual_seed(cfg.seed)
    policy, tokenizer = load_policy(base, cfg.model)
    if policy_state is not None:
        policy.load_state_dict(policy_state)
    reference = None
    if cfg.optim.kl_coef > 0:
        reference, _ = load_policy(base, cfg.model)
        reference.eval().requires_grad_(False)
    policy.eval()
    if cfg.rollout.engine == "hf":
        # the engine samples with the trainer's own model object: always current, no weight sync
        engine = make_engine("hf", model=policy, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_batch_size=cfg.rollout.max_batch_size)
    else:
        engine = make_engine("vllm", model_path=base)
        if policy_state is not None:  # resuming: the server starts from the base, not the checkpoint
            engine.update_weights(policy)
    o = cfg.optim
    backend = {"zero_stage": cfg.train.zero_stage, "bf16": cfg.train.bf16} if cfg.train.backend == "deepspeed" else {}
    trainer = TRAINERS[cfg.train.backend](
        policy, reference, tokenizer.pad_token_id, lr=o.lr, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
        minibatch_sequences=o.minibatch_sequences, clip_low=o.clip_low, clip_high=o.clip_high, dual_clip=o.dual_clip,
        kl_coef=o.kl_coef, entropy_coef=o.entropy_coef, micro_batch_tokens=o.micro_batch_tokens, **backend,
    )
    if optim_state is not None:
        trainer.load_state_dict(optim_state)
    s = sessions.TrainSession(cfg, policy, reference, tokenizer, engine, trainer, state)
    if cfg.data.train != "synthetic":
        s.train_problems = data.load_problems(cfg.data.train)
    return s


def _progress(quiet: bool, total: int, start: int):
    progress = Progress(
        TextColumn("[bold]iter"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[phase]:<10} reward {task.fields[reward]} valid-tok {task.fields[valid]} eval {task.fields[acc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        console=Console(stderr=True),
    )
    tid = progress.add_task("train", total=total, completed=start, phase="", reward="-", valid="-", acc="-")
    return progress, tid


def _heldout_by_level(client: MlflowClient, run_id: str, k: int, step: int) -> dict | None:
    """The held-out accuracy (mean and per level) logged at `step`, or None if not logged."""
    run = client.get_run(run_id)
    out = {}
    for key in run.data.metrics:
        if key.startswith(f"eval/{HELDOUT}/") and key.endswith(f"avg_at_{k}"):
            values = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
            if values:
                level = key.split("/")[2]
                out["avg" if level == f"avg_at_{k}" else level.removeprefix("level_")] = values[0]
    return out or None


def _logged_steps(client: MlflowClient, run_id: str) -> int:
    history = client.get_metric_history(run_id, SENTINEL)
    return max((int(m.step) for m in history), default=0)


@flow(name="train")
def train_flow(
    config_path: str | None = "experiments/tiny.yaml",
    overrides: list[str] | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    resume: str | None = None,
    quiet: bool = False,
    parent_run_id: str | None = None,
    extra_tags: dict | None = None,
    on_evaluation: EvaluationHook | None = None,
) -> dict:
    """Train the config at `config_path` with `overrides` ('branch.rho=0.3', ...), or `resume`
    a run by MLflow id or name (then the config comes from its checkpoint). Returns the run id,
    the base and final held-out accuracy by level, the best checkpoint and the final policy.

    `on_evaluation(iteration, eval_metrics)` is called after each evaluation; if it returns True
    the run stops there, is marked KILLED with tag pruned=true, and the result has pruned=True.
    """
    uri = tracking.resolve_uri(tracking_uri)
    client = MlflowClient(uri)
    if resume is not None:
        tracking.preflight(uri)
        mlflow.set_tracking_uri(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        run = find_run(client, exps, resume)
        run_id = run.info.run_id
        run_dir = Path(run.data.tags.get("checkpoint_dir", RUNS_DIR / "checkpoints" / run_id))
        done = ckpt.complete_checkpoints(run_dir)
        if done:
            policy_state, optim_state, state, cfg_saved = ckpt.load(done[-1])
            cfg = Config.model_validate(cfg_saved)
        else:  # killed before its first checkpoint: start over inside the same MLflow run
            cfg = Config.model_validate(json.loads(run.data.tags["config_json"])) if "config_json" in run.data.tags else None
            if cfg is None:
                raise AttnRLError(f"Run {resume!r} has no complete checkpoint and no saved config to restart from.")
            policy_state = optim_state = None
            state = sessions.TrainState(mlflow_run_id=run_id, config_hash=cfg.hash())
        experiment_id = run.info.experiment_id
        base = run.data.tags["base_policy"]
    else:
        cfg = load_config(config_path, overrides or [])
        experiment_id = tracking.setup(uri, cfg.name)
        base = _base_policy(cfg, uri, quiet)
        tags = {
            "method": cfg.method,
            "criterion": "none" if cfg.advantage == "grpo" else cfg.branch.criterion,
            "advantage": cfg.advantage,
            "pipeline": cfg.pipeline,
            "seed": str(cfg.seed),
            "config_hash": cfg.hash(),
            "git_commit": tracking.git_commit(),
            "kind": "train",
            "base_policy": str(base),
            **(extra_tags or {}),
        }
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name or default_run_name(cfg), tags=tags)
        run_id = run.info.run_id
        run_dir = RUNS_DIR / "checkpoints" / run_id
        client.set_tag(run_id, "checkpoint_dir", str(run_dir))
        cfg_text = json.dumps(cfg.model_dump(mode="json"))
        if len(cfg_text) < 5000:  # MLflow tag values are limited; the artifact has the full config anyway
            client.set_tag(run_id, "config_json", cfg_text)
        params = flatten(cfg)
        items = list(params.items())
        for i in range(0, len(items), 100):
            mlflow.set_tracking_uri(uri)
            client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in items[i : i + 100]])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
            client.log_artifacts(run_id, tmp, artifact_path="config")
        policy_state = optim_state = None
        state = sessions.TrainState(mlflow_run_id=run_id, config_hash=cfg.hash())

    run_dir.mkdir(parents=True, exist_ok=True)
    s = build_session(cfg, base, state, policy_state, optim_state)
    handle = sessions.register(s)
    tasks = {name: t.with_options(retries=cfg.train.retries, retry_delay_seconds=cfg.train.retry_delay_s) for name, t in PHASE_TASKS.items()}
    checkpoint_task = ckpt.checkpoint.with_options(retries=cfg.train.retries, retry_delay_seconds=cfg.train.retry_delay_s)
    already_logged = _logged_steps(client, run_id)
    if resume:
        client.update_run(run_id, status="RUNNING")
    benchmarks = [HELDOUT] + list(cfg.data.benchmarks)
    last_eval: dict[str, float] = {}
    progress, tid = _progress(quiet, cfg.train.iterations, s.state.iteration)
    base_eval = _heldout_by_level(client, run_id, cfg.eval.samples, step=0)
    if cfg.train.eval_before and base_eval is None:
        # step 0 = the policy before any update: every curve in the UI starts at the base
        reports = evaluate_policy(s.policy, s.tokenizer, cfg.model_dump(mode="json"), benchmarks, seed=sessions.phase_seed(cfg.seed, 0, "evaluate"))
        log_reports(client, run_id, reports, step=0)
        base_eval = {"avg": reports[HELDOUT].avg, **{str(k): v.avg for k, v in reports[HELDOUT].by_level.items()}}
    try:
        with progress:
            for it in range(s.state.iteration + 1, cfg.train.iterations + 1):
                t0 = time.perf_counter()
                s.begin_iteration()
                metrics: dict[str, float] = {"batch/prompt_batch_size": float(s.prompt_batch_size)}
                for name, t in tasks.items():
                    progress.update(tid, phase=name)
                    metrics.update(t(handle, it))
                final = it == cfg.train.iterations
                new_best = False
                pruned_at = None
                if it % cfg.train.eval_every == 0 or final:
                    progress.update(tid, phase="evaluate")
                    e0 = time.perf_counter()
                    reports = evaluate_policy.with_options(retries=cfg.train.retries)(
                        s.policy, s.tokenizer, cfg.model_dump(mode="json"), benchmarks, seed=sessions.phase_seed(cfg.seed, it, "evaluate")
                    )
                    metrics["time/evaluate"] = time.perf_counter() - e0
                    for name, rep in reports.items():
                        metrics.update(rep.metrics(f"eval/{name}"))
                    score_now = reports[HELDOUT].avg
                    last_eval = {"avg": score_now, **{str(k): v.avg for k, v in reports[HELDOUT].by_level.items()}}
                    new_best = not s.state.best or score_now > s.state.best["score"]
                    if new_best:  # checkpointed below, so "best" always names a checkpoint
                        s.state.best = {"iteration": it, "score": score_now, "name": f"iter_{it:06d}"}
                    if it > already_logged:  # metrics go in the iteration's batch below
                        log_reports(client, run_id, reports, step=it, metrics=False)
                        html = render_trees_html(s.staged.current[:4], lambda ids: s.tokenizer.decode(ids, skip_special_tokens=True), title=f"{run_id} iteration {it}")
                        client.log_text(run_id, html, f"trees/iter_{it:05d}.html")
                    progress.update(tid, acc=f"{100 * score_now:.1f}%")
                    if on_evaluation is not None and on_evaluation(it, {k: v for k, v in metrics.items() if k.startswith("eval/")}):
                        pruned_at = it
                s.commit_iteration(it)
                wall = time.perf_counter() - t0
                phases = sum(v for k, v in metrics.items() if k.startswith("time/"))
                metrics.update(
                    {
                        "time/iteration": wall,
                        "time/orchestration_overhead": max(0.0, wall - phases),
                        "time/overhead_ratio": max(0.0, wall - phases) / wall,
                        "progress/generated_tokens": float(s.state.generated_tokens),
                        "progress/wall_s": s.state.wall_seconds,
                        SENTINEL: float(it),
                    }
                )
                # log BEFORE the checkpoint: a crash in between re-runs this iteration from the
                # previous checkpoint and finds its step already logged (same values on CPU)
                fresh = it > already_logged
                if fresh:
                    stamp = int(time.time() * 1000)
                    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), stamp, it) for k, v in metrics.items()])
                if it % cfg.train.checkpoint_every == 0 or final or new_best:
                    progress.update(tid, phase="checkpoint")
                    info = checkpoint_task(handle, it, str(run_dir))
                    client.log_dict(run_id, {"iteration": it, "path": info["path"], "sha256": info["sha256"]}, f"checkpoints/iter_{it:06d}.json")
                    if fresh:
                        client.log_metric(run_id, "time/checkpoint", info["time/checkpoint"], step=it)
                if pruned_at is not None:
                    raise RunPruned(pruned_at)
                progress.update(
                    tid,
                    completed=it,
                    phase="",
                    reward=f"{metrics.get('train/reward', float('nan')):.2f}",
                    valid=f"{metrics.get('batch/valid_token_ratio', float('nan')):.2f}",
                )
    except RunPruned as stop:
        client.set_tag(run_id, "pruned", "true")
        client.set_terminated(run_id, status="KILLED")
        return {"run_id": run_id, "pruned": True, "pruned_at": stop.args[0], "base_eval": base_eval, "final_eval": last_eval,
                "best": dict(s.state.best), "checkpoint_dir": str(run_dir)}
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    finally:
        sessions.SESSIONS.pop(handle, None)

    final_dir = run_dir / "final_policy"
    tmp = run_dir / "final_policy.tmp"
    s.policy.save_pretrained(tmp)
    s.tokenizer.save_pretrained(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    tmp.rename(final_dir)
    client.log_artifacts(run_id, str(final_dir), artifact_path="final_policy")
    client.set_terminated(run_id, status="FINISHED")
    return {"run_id": run_id, "pruned": False, "base_eval": base_eval, "final_eval": last_eval, "best": dict(s.state.best), "final_policy": str(final_dir), "checkpoint_dir": str(run_dir)}
