"""The training flow: one Prefect flow run and one MLflow run per training run.

    attnrl train --config experiments/tiny.yaml [--set k=v ...] [--run-name NAME]
    attnrl resume NAME_OR_RUN_ID

Each iteration is a chain of retryable phase tasks — rollout, score, branch, update, then
evaluate (every train.eval_every) and checkpoint (every train.checkpoint_every) — over one
long-lived `TrainSession` (policy, reference, optimizer, engine). Each phase hands its typed
result to the next; the session commits the iteration only when its phases all succeeded. The
MLflow side (create or resume, logging each step once) is flows/run_tracking.py.
"""

from __future__ import annotations

import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import flow
from prefect.utilities.annotations import quote

from attnrl_core.config import Config, check_inputs, load_config
from attnrl_core.evaluation import EvalReport, objective_value
from attnrl_core.render import render_trees_html
from flows import tracking
from flows.progress import TrainProgress
from flows.reaper import Preempted
from flows.run_tracking import SENTINEL, TrainingRun
from tasks import checkpoint as ckpt
from tasks.branch import branch
from tasks.evaluate import evaluate_policy
from tasks.phase import PHASES, phase_seed
from tasks.ranks import ray_cluster
from tasks.rollout import rollout
from tasks.score import score
from tasks.session import TrainSession
from tasks.update import update

# Called after each evaluation with (iteration, the eval/ metrics); True stops the run there as
# pruned. A sweep passes one per trial to report to Optuna.
EvaluationHook = Callable[[int, dict[str, float]], bool]


@contextmanager
def sigterm_stops_at_safe_points() -> Iterator[Callable[[], None]]:
    """While active, SIGTERM only sets a flag; the yielded `safe_point()` raises Preempted once it
    is set: the run stops at the next phase boundary, is marked KILLED, and `attnrl resume`
    continues it from its last complete checkpoint. (Prefect's own handler would raise inside whichever task runs, where a retry picks
    the run up again.) Outside the main thread signals cannot be handled: SIGTERM stays as it was."""
    received: list[int] = []

    def safe_point() -> None:
        if received:
            raise Preempted(f"stopped by signal {received[0]} (SIGTERM)")

    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread
        previous = None
    try:
        yield safe_point
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
    the base and final evaluation ({benchmark: {"k", "avg", "pass", "levels"}} plus the
    objective under "objective"), the best checkpoint, the final policy and how often a lost
    trainer rank had its worker group rebuilt (rank_rebuilds).

    `on_evaluation(iteration, eval_metrics)` is called after each evaluation; if it returns True
    the run stops there, is marked KILLED with tag pruned=true, and the result has pruned=True.
    """
    uri = tracking.resolve_uri(tracking_uri)
    if resume is not None:  # `overrides` may only move the run (train.ranks, ray: PLACEMENT)
        run = TrainingRun.resume(uri, resume, overrides or [])
        cfg = run.cfg
    else:
        cfg = load_config(config_path, overrides or [])
        check_inputs(cfg)  # a missing data file, benchmark file or model folder fails now, naming its field
        experiment_id = tracking.setup(uri, cfg.name)  # an unusable store fails before any work
    with ray_cluster(cfg):  # train.ranks > 1: an unreachable cluster or too few CPUs/GPUs fail now
        if resume is None:
            run = TrainingRun.create(uri, experiment_id, cfg, base_policy(cfg, uri, quiet), run_name, parent_run_id, extra_tags)
        return _train(run, quiet, on_evaluation)


def _train(run: TrainingRun, quiet: bool, on_evaluation: EvaluationHook | None) -> dict:
    cfg, phases = run.cfg, Phases(run.cfg)
    run.mark_running()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    result = {"run_id": run.run_id, "pruned": False, "checkpoint_dir": str(run.run_dir), "base_eval": run.evaluation_at(step=0), "final_eval": {}}
    result["objective_metric"] = cfg.eval.objective_metric()
    s = None
    try:
        with sigterm_stops_at_safe_points() as safe_point:
            s = TrainSession(cfg, run.base, run.run_id, run.checkpoint)
            progress = TrainProgress(quiet, cfg.train.iterations, s.iteration, safe_point)
            with progress:
                if cfg.train.eval_before and result["base_eval"] is None:
                    # step 0 = the policy before any update: every curve in the UI starts at the base
                    progress.phase("evaluate")
                    reports, metrics = evaluate(s, 0, phases, progress)
                    run.log_evaluation(0, reports, extra_metrics={k: v for k, v in metrics.items() if k.startswith("eval/mean/")})
                    result["base_eval"] = evaluation_summary(cfg, reports)
                    progress.evaluated(result["base_eval"]["objective"]["value"])
                for it in range(s.iteration + 1, cfg.train.iterations + 1):
                    outcome = run_iteration(s, it, phases, run, progress, on_evaluation)
                    result["final_eval"] = outcome.evaluation or result["final_eval"]
                    if outcome.pruned:
                        run.finish("KILLED", pruned=True)
                        return {**result, "pruned": True, "pruned_at": it, "best": dict(s.best)}
        result["final_policy"] = str(save_final_policy(s, run))
    except Preempted:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    finally:
        if s is not None:
            result["rank_rebuilds"] = s.ranks.rebuilds
            if s.ranks.rebuilds:  # the run lost trainer ranks and went on: its page says so
                run.client.set_tag(run.run_id, "rank_rebuilds", str(s.ranks.rebuilds))
            s.close()
    run.finish("FINISHED")
    return {**result, "best": dict(s.best)}


def base_policy(cfg: Config, tracking_uri: str | None, quiet: bool) -> str:
    """model.path, or the built-in tiny policy from the (cached) warm-start flow."""
    if cfg.model.path:
        return cfg.model.path
    from flows.warmstart import warmstart_flow

    return warmstart_flow(cfg_json=cfg.model_dump(mode="json"), tracking_uri=tracking_uri, quiet=quiet)["model_path"]


class Phases:
    """The phase tasks with the run's retry settings. A phase result handed to the next task is
    wrapped in `quote`: Prefect would otherwise walk every prompt group and token list of it
    looking for futures (0.46 s per call for a 64-prompt batch, measured) before the task runs."""

    def __init__(self, cfg: Config) -> None:
        opts = dict(retries=cfg.train.retries, retry_delay_seconds=cfg.train.retry_delay_s)
        self.rollout, self.score, self.branch, self.update = (t.with_options(**opts) for t in (rollout, score, branch, update))
        self.evaluate = evaluate_policy.with_options(retries=cfg.train.retries)
        self.checkpoint = ckpt.checkpoint.with_options(**opts)


@dataclass
class IterationOutcome:
    evaluation: dict | None  # evaluation_summary when this iteration evaluated
    pruned: bool


def run_iteration(s: TrainSession, it: int, phases: Phases, run: TrainingRun, progress: "TrainProgress", on_evaluation: EvaluationHook | None) -> IterationOutcome:
    """Iteration `it`: the four phases, evaluation when due, commit, one MLflow batch, checkpoint when due."""
    cfg = s.cfg
    t0 = time.perf_counter()
    s.begin_iteration()
    metrics: dict[str, float] = {"batch/prompt_batch_size": float(s.prompt_batch_size)}
    progress.phase("rollout")
    rolled = phases.rollout(s, it)
    progress.phase("score")
    scored = phases.score(s, it, quote(rolled))
    progress.phase("branch")
    plan = phases.branch(s, it, quote(rolled))
    progress.phase("update")
    updated = phases.update(s, it, quote(plan))
    for phase_result in (rolled, scored, plan, updated):
        metrics.update(phase_result.metrics)

    final = it == cfg.train.iterations
    evaluation, new_best, pruned = None, False, False
    if it % cfg.train.eval_every == 0 or final:
        progress.phase("evaluate")
        reports, eval_metrics = evaluate(s, it, phases, progress)
        metrics.update(eval_metrics)
        evaluation = evaluation_summary(cfg, reports)
        score = evaluation["objective"]["value"]  # eval.objective decides which checkpoint is the best
        new_best = not s.best or score > s.best["score"]
        if new_best:  # checkpointed below, so "best" always names a checkpoint
            s.best = {"iteration": it, "score": score, "name": f"iter_{it:06d}"}
        if run.fresh(it):  # the metrics go in the iteration's batch below
            html = render_trees_html(rolled.current[:4], lambda ids: s.tokenizer.decode(ids, skip_special_tokens=True), title=f"{run.run_id} iteration {it}")
            run.log_evaluation(it, reports, html, metrics=False)
        progress.evaluated(score)
        pruned = on_evaluation is not None and on_evaluation(it, {k: v for k, v in metrics.items() if k.startswith("eval/")})
    s.commit(it, rolled, plan)

    metrics.update(s.ranks.timing())  # a worker group: its compute vs dispatch + communication (within the phases' times)
    wall = time.perf_counter() - t0
    overhead = max(0.0, wall - sum(metrics.get(f"time/{phase}", 0.0) for phase in PHASES))
    metrics.update(
        {
            "time/iteration": wall,
            "time/orchestration_overhead": overhead,
            "time/overhead_ratio": overhead / wall,
            "progress/generated_tokens": float(s.generated_tokens),
            "progress/wall_s": s.wall_seconds,
            SENTINEL: float(it),
        }
    )
    run.log_iteration(it, metrics)  # before the checkpoint: see flows/run_tracking.py
    if it % cfg.train.checkpoint_every == 0 or final or new_best:
        progress.phase("checkpoint")
        saved = phases.checkpoint(s, it, str(run.run_dir))
        run.log_checkpoint(it, saved.path, saved.sha256, saved.metrics["time/checkpoint"])
    if not pruned:
        progress.done(it, metrics)
    progress.safe_point()
    return IterationOutcome(evaluation, pruned)


def evaluate(s: TrainSession, it: int, phases: Phases, progress: "TrainProgress | None" = None) -> tuple[dict[str, EvalReport], dict[str, float]]:
    """Every benchmark set of eval.benchmarks on the current policy (step `it`; 0 = the base),
    on the run's own engine (rollout.engine): reports and metrics (eval/<set>/..., and
    eval/mean/<metric> when the objective is a mean over several sets)."""
    start = time.perf_counter()
    hook = None if progress is None else progress.evaluating
    reports = phases.evaluate(s.ranks, s.tokenizer, s.cfg.model_dump(mode="json"), seed=phase_seed(s.cfg.seed, it, "evaluate"), progress=hook)
    metrics = {"time/evaluate": time.perf_counter() - start}
    for name, rep in reports.items():
        metrics.update(rep.metrics(f"eval/{name}"))
    objective = s.cfg.eval.objective_metric()
    if objective not in metrics:  # a mean over several sets: logged under its own name
        metrics[objective] = objective_value(s.cfg.eval, reports)
    return reports, metrics


def evaluation_summary(cfg: Config, reports: dict[str, EvalReport]) -> dict:
    """{set: {"k", "avg", "pass", "levels": {level: avg}}, ..., "objective": {"metric", "value"}}:
    what the final table shows (levels only where a set has them)."""
    out: dict = {
        name: {"k": rep.k, "avg": rep.avg, "pass": rep.pass_k, "levels": {str(level): r.avg for level, r in rep.by_level.items()}}
        for name, rep in reports.items()
    }
    out["objective"] = {"metric": cfg.eval.objective_metric(), "value": objective_value(cfg.eval, reports)}
    return out


def save_final_policy(s: TrainSession, run: TrainingRun) -> Path:
    """The trained policy as a from_pretrained folder (written aside, then renamed into place)."""
    final_dir, tmp = run.run_dir / "final_policy", run.run_dir / "final_policy.tmp"
    s.save_policy(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    tmp.rename(final_dir)
    run.log_final_policy(final_dir)
    return final_dir
