"""The MLflow side of one training run: create or resume it, its params and tags, per-iteration and
per-evaluation logging, and its end status.

A resumed run restarts after its last complete checkpoint and skips logging the steps MLflow
already holds (on CPU they are recomputed bit-identically), so no metric step is logged twice:
every iteration's batch carries the sentinel `progress/iteration`, whose history says what is
there. An iteration's metrics are logged as ONE batch at step = iteration, before its
checkpoint: a crash in between re-runs the iteration from the previous checkpoint and finds its
step already logged.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from attnrl_core.config import Config, flatten, with_placement
from attnrl_core.errors import AttnRLError
from attnrl_core.evaluation import EvalReport
from flows import RUNS_DIR, tracking
from flows.evaluate import log_reports
from tasks import checkpoint as ckpt

SENTINEL = "progress/iteration"  # logged in every iteration's batch: its history says what MLflow holds


def default_run_name(cfg: Config) -> str:
    return f"{cfg.method}-{cfg.criterion_tag}-s{cfg.seed}-{cfg.hash()[:6]}"


def describe(cfg: Config, tags: dict) -> str:
    """One paragraph a person reads on the run's page: method, where it branches, seed, base.

    >>> from attnrl_core.config import load_config
    >>> describe(load_config(None, ["method=treerl", "seed=3"]), {"base_policy": "runs/base", "ablation": "treerl"})
    'treerl: branch criterion entropy, tree advantages, one_step_off pipeline, 60 iterations of up to 16 prompts x 6; seed 3, from the base policy runs/base. Ablation treerl.'
    """
    text = (
        f"{cfg.method}: branch criterion {cfg.criterion_tag}, {cfg.advantage} advantages, {cfg.pipeline} pipeline, "
        f"{cfg.train.iterations} iterations of up to {cfg.batch.max_prompts if cfg.batch.adaptive else cfg.batch.prompts} prompts x "
        f"{cfg.rollout.group_size}; seed {cfg.seed}, from the base policy {tags.get('base_policy')}."
    )
    if "ablation" in tags:
        text += f" Ablation {tags['ablation']}."
    if "sweep" in tags:
        text += f" Trial {tags.get('optuna_trial')} of sweep {tags['sweep']}."
    return text


@dataclass
class TrainingRun:
    """One MLflow training run and where its checkpoints live."""

    client: MlflowClient
    run_id: str
    cfg: Config
    base: str  # the base policy: a folder or hub id
    run_dir: Path  # checkpoints
    checkpoint: tuple[dict, dict, dict] | None  # (policy, optimizer, session state) to resume from
    logged_through: int  # the last iteration MLflow holds metrics for

    @classmethod
    def create(
        cls, uri: str, experiment_id: str, cfg: Config, base: str, run_name: str | None, parent_run_id: str | None, extra_tags: dict | None
    ) -> "TrainingRun":
        """A new run in the experiment (tracking.setup), with its tags, params and config artifact."""
        client = MlflowClient(uri)
        tags = {
            "method": cfg.method,
            "criterion": cfg.criterion_tag,
            "advantage": cfg.advantage,
            "pipeline": cfg.pipeline,
            "seed": str(cfg.seed),
            "config_hash": cfg.hash(),
            "git_commit": tracking.git_commit(),
            "kind": "train",
            "base_policy": str(base),
            "objective_metric": cfg.eval.objective_metric(),  # what ranks this run (compare's and a sweep's default)
            **(extra_tags or {}),
        }
        tags["mlflow.note.content"] = describe(cfg, tags)  # the run page's description
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=run_name or default_run_name(cfg), tags=tags).info.run_id
        run_dir = RUNS_DIR / "checkpoints" / run_id
        client.set_tag(run_id, "checkpoint_dir", str(run_dir))
        cfg_text = json.dumps(cfg.model_dump(mode="json"))
        if len(cfg_text) < 5000:  # MLflow tag values are limited; the artifact has the full config anyway
            client.set_tag(run_id, "config_json", cfg_text)
        items = list(flatten(cfg).items())
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in items[i : i + 100]])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
            client.log_artifacts(run_id, tmp, artifact_path="config")
        return cls(client, run_id, cfg, str(base), run_dir, None, 0)

    @classmethod
    def resume(cls, uri: str, ref: str, placement: list[str] | None = None) -> "TrainingRun":
        """The run `ref` (id or name) from its last complete checkpoint, or from its start inside
        the same MLflow run when it was killed before its first one; `placement` may move it
        (`with_placement`: train.ranks, ray.*; a checkpoint does not depend on the world size).
        `mark_running` marks it running again once the run really starts."""
        tracking.preflight(uri)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        run = tracking.find_run(client, [e.experiment_id for e in client.search_experiments()], ref)
        run_id = run.info.run_id
        run_dir = Path(run.data.tags.get("checkpoint_dir", RUNS_DIR / "checkpoints" / run_id))
        done = ckpt.complete_checkpoints(run_dir)
        if done:
            policy_state, optim_state, state, cfg_saved = ckpt.load(done[-1])
            cfg, checkpoint = Config.model_validate(cfg_saved), (policy_state, optim_state, state)
        elif "config_json" in run.data.tags:
            cfg, checkpoint = Config.model_validate(json.loads(run.data.tags["config_json"])), None
        else:
            raise AttnRLError(f"Run {ref!r} has no complete checkpoint and no saved config to restart from.")
        cfg = with_placement(cfg, placement or [])
        history = client.get_metric_history(run_id, SENTINEL)
        return cls(client, run_id, cfg, run.data.tags["base_policy"], run_dir, checkpoint, max((int(m.step) for m in history), default=0))

    def mark_running(self) -> None:
        """The run is (again) running: what a resumed run's page shows from here on."""
        self.client.update_run(self.run_id, status="RUNNING")

    # -- logging ------------------------------------------------------------------------------
    def fresh(self, iteration: int) -> bool:
        """True unless MLflow already holds this iteration (a resumed run re-running it)."""
        return iteration > self.logged_through

    def log_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.fresh(iteration):
            stamp = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[mlflow.entities.Metric(k, float(v), stamp, iteration) for k, v in metrics.items()])

    def log_evaluation(
        self, iteration: int, reports: dict[str, EvalReport], trees_html: str | None = None, metrics: bool = True, extra_metrics: dict[str, float] | None = None
    ) -> None:
        """The evaluation tables and sample responses (and the metrics when `metrics`, with
        `extra_metrics` such as eval/mean/avg; otherwise they ride in the iteration's batch)
        plus the rendered sample trees."""
        log_reports(self.client, self.run_id, reports, step=iteration, metrics=metrics)
        if metrics:
            for key, value in (extra_metrics or {}).items():
                self.client.log_metric(self.run_id, key, value, step=iteration)
        if trees_html is not None:
            self.client.log_text(self.run_id, trees_html, f"trees/iter_{iteration:05d}.html")

    def log_checkpoint(self, iteration: int, path: str, sha256: str, seconds: float) -> None:
        self.client.log_dict(self.run_id, {"iteration": iteration, "path": path, "sha256": sha256}, f"checkpoints/iter_{iteration:06d}.json")
        if self.fresh(iteration):
            self.client.log_metric(self.run_id, "time/checkpoint", seconds, step=iteration)

    def evaluation_at(self, step: int) -> dict | None:
        """The evaluation logged at `step` in the shape of flows.train.evaluation_summary
        ({set: {"k", "avg", "pass", "levels"}, "objective": {"metric", "value"}}), or None if
        any configured set (or the objective) is missing there."""
        logged = self.client.get_run(self.run_id).data.metrics

        def at(key: str) -> float | None:
            if key not in logged:
                return None
            values = [m.value for m in self.client.get_metric_history(self.run_id, key) if m.step == step]
            return values[0] if values else None

        out: dict = {}
        for bench in self.cfg.eval.sets():
            prefix, k = f"eval/{bench.key}", bench.samples
            avg, pass_k = at(f"{prefix}/avg_at_{k}"), at(f"{prefix}/pass_at_{k}")
            if avg is None:
                return None
            levels = {}
            for key in logged:
                if key.startswith(f"{prefix}/level_") and key.endswith(f"/avg_at_{k}"):
                    value = at(key)
                    if value is not None:
                        levels[key[len(prefix) + len("/level_") :].split("/")[0]] = value
            out[bench.key] = {"k": k, "avg": avg, "pass": pass_k, "levels": dict(sorted(levels.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]))}
        metric = self.cfg.eval.objective_metric()
        value = at(metric)
        if value is None:
            return None
        out["objective"] = {"metric": metric, "value": value}
        return out

    # -- the end ------------------------------------------------------------------------------
    def finish(self, status: str, pruned: bool = False) -> None:
        """FINISHED, FAILED, or KILLED (a pruned sweep trial: tagged pruned=true)."""
        if pruned:
            self.client.set_tag(self.run_id, "pruned", "true")
        self.client.set_terminated(self.run_id, status=status)

    def log_final_policy(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path="final_policy")


# what runs that carry no objective_metric tag (trained before eval.objective) were ranked by
FORMER_OBJECTIVE = "eval/heldout/avg_at_1"


def objective_metric_of(runs) -> str:
    """The objective metric shared by these MLflow training runs (their `objective_metric` tag,
    set from eval.objective; older runs count as eval/heldout/avg_at_1): the default metric to
    compare them by. Runs that disagree fail with AttnRLError naming the metrics; no run gives
    the former default."""
    found = sorted({run.data.tags.get("objective_metric", FORMER_OBJECTIVE) for run in runs})
    if len(found) > 1:
        raise AttnRLError(
            f"These runs rank by different objectives ({', '.join(found)}): pick one with --metric, "
            "or compare runs whose configs share eval.objective."
        )
    return found[0] if found else FORMER_OBJECTIVE
