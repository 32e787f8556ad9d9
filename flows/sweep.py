"""Sweeps: an Optuna study over any config fields, one nested MLflow training run per trial.

    attnrl sweep --config experiments/sweeps/branching.yaml [--trials N] [--workers K] [--storage URL]

A sweep file names a base config (plus fixed overrides), the objective (an eval metric, its final
or best value, and the direction), a sampler, a pruner and the search space: dotted config field
-> distribution. Every trial is one `train_flow` call with the trial's values as `--set`
overrides; its MLflow run is a child of the sweep's parent run (one parent per study, found
again by its `optuna_study` tag), tagged with the trial number and its values.

Counting: `n_trials` is the study's TOTAL target, counted as COMPLETE + PRUNED trials across every
run of the sweep and every worker. Re-running the same sweep continues the study where it stopped
(no trial is repeated); `--trials 30` on a study that holds 20 runs 10 more. A trial stopped by
Ctrl-C is re-queued, and the next run resumes its MLflow run from the last checkpoint. Failed
trials do not count: they are visible as FAIL in Optuna and FAILED in MLflow, and the sweep stops
once `max_failed_trials` of them pile up.

Workers: `--workers K` starts K worker processes against one storage; each runs trials until the
study's total reaches n_trials. A worker that dies mid-trial stops beating its heartbeat; after
`heartbeat.grace_s` another worker marks that trial FAIL, re-queues it with the same values
(`RetryHeartbeatStaleTrialCallback`, optuna 5's name for RetryFailedTrialCallback) and the retry
resumes the dead worker's MLflow run from its last checkpoint. The same command on several
machines against one PostgreSQL storage and one MLflow server scales the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import optuna
import yaml
from mlflow.tracking import MlflowClient
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attnrl_core.config import describe_fields, load_config, read_yaml_mapping, spec_error
from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR, tracking

# Fields a trial must not change: the experiment name decides where the trial's run is filed,
# and the parent run (found in that experiment) must hold every child.
FIXED_FIELDS = ("name",)
DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Spec):
    """One search dimension, e.g. {type: float, low: 0.05, high: 0.5} or {type: categorical, choices: [exp, uniform]}."""

    type: Literal["float", "int", "categorical"] = Field(description="Distribution: float, int or categorical.")
    low: float | None = Field(None, description="Lower bound (float, int).")
    high: float | None = Field(None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(False, description="Sample on a log scale (float, int; needs low > 0).")
    step: float | None = Field(None, gt=0, description="Grid step between low and high (float, int).")
    choices: list[Any] | None = Field(None, min_length=1, description="The values of a categorical dimension.")

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if self.choices is None or self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical dimension takes `choices` only (no low/high/log/step)")
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension takes `low` and `high` (no choices)")
        if not self.low <= self.high:
            raise ValueError(f"need low <= high (got low={self.low}, high={self.high})")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` cannot be combined")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale dimension needs low > 0 (got {self.low})")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int dimension needs integer low, high and step")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound this dimension: every choice, or low and high."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


class ObjectiveSpec(_Spec):
    metric: str = Field("eval/heldout/avg_at_1", min_length=1, description="MLflow metric of the trial's run that the study optimises.")
    reduce: Literal["final", "best"] = Field("final", description="Its value at the last iteration, or its best value over the run's evaluations.")


class SamplerSpec(_Spec):
    name: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler.")
    seed: int | None = Field(None, description="Sampler seed, mixed with machine, worker index and trials so far; null = fresh entropy.")
    n_startup_trials: int = Field(10, ge=0, description="TPE: random trials before the model-based search starts.")


class PrunerSpec(_Spec):
    name: Literal["none", "median", "percentile", "hyperband"] = Field("median", description="Optuna pruner stopping weak trials at an evaluation.")
    n_startup_trials: int = Field(5, ge=0, description="median/percentile: trials that finish before any pruning.")
    n_warmup_steps: int = Field(0, ge=0, description="median/percentile: iterations of a trial before it may be pruned.")
    interval_steps: int = Field(1, ge=1, description="median/percentile: prune-check interval in iterations.")
    percentile: float = Field(25.0, ge=0.0, le=100.0, description="percentile: prune when worse than this percentile of earlier trials.")
    min_resource: int = Field(1, ge=1, description="hyperband: smallest budget (iterations) of a trial.")
    max_resource: int | Literal["auto"] = Field("auto", description="hyperband: largest budget; auto = the longest trial seen.")
    reduction_factor: int = Field(3, ge=2, description="hyperband: the factor between successive halving rungs.")


class HeartbeatSpec(_Spec):
    interval_s: int = Field(60, ge=1, description="Seconds between a running trial's heartbeats in the storage.")
    grace_s: int = Field(120, ge=1, description="A running trial without a heartbeat for this long is a dead worker's: failed and re-queued.")
    max_retry: int = Field(3, ge=0, description="How often one trial is re-queued after its worker died.")

    @model_validator(mode="after")
    def _grace_covers_beats(self) -> HeartbeatSpec:
        if self.grace_s <= self.interval_s:
            raise ValueError(f"grace_s must exceed interval_s, or live trials look dead (got grace_s={self.grace_s}, interval_s={self.interval_s})")
        return self


class SweepSpec(_Spec):
    base_config: str = Field(description="Experiment YAML every trial starts from (relative to the working directory, else to this file).")
    overrides: list[str] = Field(default_factory=list, description="Fixed --set overrides applied to every trial before its own values.")
    study_name: str = Field(min_length=1, description="Optuna study name; re-running a sweep with this name continues it.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Whether the objective is maximised or minimised.")
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec, description="What a trial returns to the study.")
    n_trials: int = Field(ge=1, description="The study's TOTAL target of COMPLETE + PRUNED trials (over every run of the sweep).")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="How trial values are drawn.")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec, description="How weak trials are stopped early.")
    search_space: dict[str, ParamSpec] = Field(min_length=1, description="Dotted config field -> distribution.")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="Trials to run first, e.g. the paper's defaults (field -> value).")
    heartbeat: HeartbeatSpec = Field(default_factory=HeartbeatSpec, description="Dead-worker detection.")
    max_failed_trials: int = Field(3, ge=1, description="Stop the sweep once the study holds this many failed (not re-queued) trials.")
    poll_s: float = Field(5.0, gt=0, description="Seconds an idle worker waits while others finish the last trials.")


def format_value(value: Any) -> str:
    """A value as the YAML text of a --set override, exact for floats.

    >>> format_value(1e-5), format_value("uniform"), format_value(True)
    ('1.0e-05', 'uniform', 'true')
    """
    # str(1e-05) is '1e-05', which YAML reads back as a string; safe_dump writes '1.0e-05'.
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """{'branch.rho': 0.3} -> ['branch.rho=0.3']: a trial's values as --set overrides."""
    return [f"{k}={format_value(v)}" for k, v in params.items()]


def resolve_base(spec: SweepSpec, sweep_path: Path) -> Path:
    path = Path(spec.base_config)
    if path.is_absolute() or path.is_file():
        return path
    beside = sweep_path.parent / path
    return beside if beside.is_file() else path


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[SweepSpec, Path, list[str]]:
    """Read and check a sweep file up front; returns (spec, base config path, fixed overrides).

    Every search dimension's bounds (or each choice) and every enqueued trial is resolved into a
    full config, so a value the config would refuse fails now, naming the dimension, not after
    an hour of trials. `overrides` are extra fixed base-config overrides (after the file's).
    """
    path = Path(path)
    raw = read_yaml_mapping(path, what="Sweep file")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise spec_error(exc, "sweep file", str(path), "experiments/sweeps/branching.yaml") from None
    base = resolve_base(spec, path)
    if not base.is_file():
        raise AttnRLError(
            f"Sweep file {path}: base_config {spec.base_config} exists neither under the working directory ({Path.cwd()}) "
            f"nor beside the sweep file; run from the project folder or give an absolute path."
        )
    fixed = list(spec.overrides) + list(overrides)
    load_config(base, fixed)  # the base itself must be valid (raises naming its field)
    leaves = {name for name, _, _ in describe_fields()}
    for field, dim in spec.search_space.items():
        if field not in leaves:
            raise AttnRLError(f"Sweep file {path}: search_space.{field} is not a config field; `attnrl config` lists them (e.g. branch.rho).")
        if field in FIXED_FIELDS:
            raise AttnRLError(f"Sweep file {path}: search_space.{field} cannot be swept (every trial must land in the same MLflow experiment).")
        for value in dim.extremes():
            try:
                load_config(base, fixed + trial_overrides({field: value}))
            except AttnRLError as exc:
                raise AttnRLError(f"Sweep file {path}: search_space.{field} reaches {value!r}, which the config refuses. {exc}") from None
    for i, point in enumerate(spec.enqueue):
        unknown = sorted(set(point) - set(spec.search_space))
        if unknown:
            raise AttnRLError(f"Sweep file {path}: enqueue[{i}] sets {unknown}, which are not in search_space.")
        for field, value in point.items():
            if not spec.search_space[field].contains(value):
                raise AttnRLError(f"Sweep file {path}: enqueue[{i}].{field} = {value!r} lies outside its search_space dimension.")
    return spec, base, fixed


def make_sampler(spec: SamplerSpec, worker: int = 0, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of one worker. Its seed mixes the file's seed with the machine and worker index
    (K workers seeded alike would propose the same values) and the study's trial count when it
    starts (a resumed study would otherwise replay the first run's random draws); the same
    command on the same machine draws the same values."""
    if spec.seed is None:
        seed = None
    else:
        machine = zlib.crc32(socket.gethostname().encode())
        seed = int(np.random.SeedSequence([spec.seed, machine, worker, resumed_at]).generate_state(1)[0])
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials)


def make_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    if spec.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps, interval_steps=spec.interval_steps)
    if spec.name == "percentile":
        return optuna.pruners.PercentilePruner(
            spec.percentile, n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps, interval_steps=spec.interval_steps
        )
    return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource, max_resource=spec.max_resource, reduction_factor=spec.reduction_factor)


def default_storage() -> str:
    return f"sqlite:///{RUNS_DIR / 'optuna.db'}"


def public_url(url: str) -> str:
    """The storage URL with any password masked (it goes into MLflow tags)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: it will fail to open with its own message
        return url


def open_storage(url: str, heartbeat: HeartbeatSpec, on_stale=None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; `on_stale(study, trial)` runs for a dead worker's trial."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # several worker processes share one file: wait for its lock instead of failing at once
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in optuna 5 and are what re-queues a dead worker's trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat.interval_s, grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot use this storage"
        raise AttnRLError(
            f"Optuna storage {public_url(url)} cannot be opened ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Pass --storage sqlite:///path/optuna.db or a reachable postgresql://user@host/db."
        ) from None


def open_study(spec: SweepSpec, storage: optuna.storages.RDBStorage, worker: int = 0) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=spec.study_name, direction=spec.direction, load_if_exists=True, pruner=make_pruner(spec.pruner)
    )
    study.sampler = make_sampler(spec.sampler, worker, resumed_at=len(study.get_trials(deepcopy=False)))
    return study


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; 'failed' leaves out dead workers' trials that were re-queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} | {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    states = optuna.trial.TrialState
    return {
        "complete": sum(t.state == states.COMPLETE for t in trials),
        "pruned": sum(t.state == states.PRUNED for t in trials),
        "running": sum(t.state == states.RUNNING for t in trials),
        "waiting": sum(t.state == states.WAITING for t in trials),
        "failed": sum(t.state == states.FAIL and t.number not in retried for t in trials),
    }


def trial_run(client: MlflowClient, experiment_id: str, study_name: str, number: int):
    """The MLflow run of trial `number` of a study, or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.sweep = '{study_name}' and tags.optuna_trial = '{number}'", max_results=1
    )
    return runs[0] if runs else None


def ensure_parent_run(client: MlflowClient, experiment_id: str, study: optuna.Study, spec: SweepSpec, sweep_path: str, storage_url: str) -> str:
    """The study's one parent MLflow run: found by tag (a re-run continues it) or created."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.optuna_study = '{spec.study_name}' and tags.kind = 'sweep'",
        order_by=["attributes.start_time ASC"], max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {
            "kind": "sweep", "optuna_study": spec.study_name, "sweep": spec.study_name, "sweep_file": str(sweep_path),
            "storage": public_url(storage_url), "objective": f"{spec.objective.reduce} {spec.objective.metric}",
            "direction": spec.direction, "git_commit": tracking.git_commit(),
        }
        run_id = client.create_run(experiment_id, run_name=f"sweep-{spec.study_name}", tags=tags).info.run_id
        params = {
            "base_config": spec.base_config, "n_trials": spec.n_trials, "sampler": spec.sampler.name, "pruner": spec.pruner.name,
            "fixed_overrides": json.dumps(spec.overrides)[:6000],
            **{f"space.{k}": json.dumps(v.model_dump(exclude_none=True))[:6000] for k, v in spec.search_space.items()},
        }
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
            client.log_artifacts(run_id, tmp, artifact_path="sweep")
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


class TrialFailed(Exception):
    """A trial's training run raised: the trial is FAIL and the sweep goes on with the next one."""


def _objective_value(client: MlflowClient, run_id: str, spec: SweepSpec) -> float:
    history = [m for m in client.get_metric_history(run_id, spec.objective.metric) if m.step > 0]
    if not history:
        logged = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("eval/"))
        raise AttnRLError(
            f"The sweep's objective metric {spec.objective.metric!r} was not logged by run {run_id} "
            f"(its eval metrics: {', '.join(logged[:12]) or 'none'}). Fix objective.metric in the sweep file."
        )
    if spec.objective.reduce == "final":
        return max(history, key=lambda m: m.step).value
    values = [m.value for m in history]
    return max(values) if spec.direction == "maximize" else min(values)


def retry_callback(max_retry: int) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Queues a copy of a trial (same values, same reported evaluations) that knows which trial
    it retries: Optuna's own mechanism for a dead worker's trial, used for Ctrl-C as well."""
    with warnings.catch_warnings():  # experimental in optuna 5 (as RetryFailedTrialCallback was)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)


def make_objective(spec: SweepSpec, base: Path, fixed: list[str], tracking_uri: str, experiment_id: str, parent_run_id: str, quiet: bool):
    """The function Optuna calls per trial: one `train_flow` run with the trial's values."""
    from flows.train import train_flow

    client = MlflowClient(tracking_uri)
    requeue = retry_callback(spec.heartbeat.max_retry)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        params = {field: dim.suggest(trial, field) for field, dim in spec.search_space.items()}
        trial.set_user_attr("worker", worker)

        def report(iteration: int, eval_metrics: dict[str, float]) -> bool:
            if spec.objective.metric not in eval_metrics:
                return False
            trial.report(eval_metrics[spec.objective.metric], step=iteration)
            return trial.should_prune()

        # A re-queued trial of a dead worker continues that worker's run from its last checkpoint.
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        history = frozen.system_attrs.get("retry_history", [])
        previous = trial_run(client, experiment_id, spec.study_name, history[-1]) if history else None
        try:
            if previous is not None:
                client.set_tag(previous.info.run_id, "optuna_trial", str(trial.number))
                client.set_tag(previous.info.run_id, "optuna_retry_of", ",".join(map(str, history)))
                if "error" in previous.data.tags:  # set when its worker was found dead; the run lives on
                    client.delete_tag(previous.info.run_id, "error")
                result = train_flow(None, tracking_uri=tracking_uri, resume=previous.info.run_id, quiet=quiet, on_evaluation=report)
            else:
                tags = {"sweep": spec.study_name, "optuna_trial": str(trial.number), **{f"trial.{k}": format_value(v) for k, v in params.items()}}
                result = train_flow(
                    str(base), fixed + trial_overrides(params), run_name=f"{spec.study_name}-trial-{trial.number:03d}",
                    tracking_uri=tracking_uri, quiet=quiet, parent_run_id=parent_run_id, extra_tags=tags, on_evaluation=report,
                )
        except KeyboardInterrupt:
            # Ctrl-C mid-trial: queue the trial again, so the next run of the sweep resumes its
            # MLflow run from the last checkpoint instead of counting it as a failure
            requeue(trial.study, next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
            raise
        except Exception as exc:
            run = trial_run(client, experiment_id, spec.study_name, trial.number)
            if run is not None:
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                if run.info.status == "RUNNING":  # failed before train_flow's own handler could mark it
                    client.set_terminated(run.info.run_id, status="FAILED")
                client.set_tag(run.info.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise TrialFailed(f"trial {trial.number} failed: {type(exc).__name__}: {exc}") from exc
        trial.set_user_attr("mlflow_run_id", result["run_id"])
        if result["pruned"]:
            raise optuna.TrialPruned(f"pruned at iteration {result['pruned_at']}")
        return _objective_value(client, result["run_id"], spec)

    return objective


def requeue_stale_trial(tracking_uri: str, experiment_id: str, study_name: str, max_retry: int):
    """Heartbeat callback for a dead worker's trial: re-queue it with the same values (and the
    evaluations it reported) and mark its MLflow run FAILED; the retry resumes that run and sets
    it RUNNING again."""
    retry = retry_callback(max_retry)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry(study, trial)
        client = MlflowClient(tracking_uri)
        run = trial_run(client, experiment_id, study_name, trial.number)
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="FAILED")
            client.set_tag(run.info.run_id, "error", "its worker stopped beating (killed or lost); the trial was re-queued")

    return on_stale


def run_worker(spec_json: dict, base: str, fixed: list[str], storage_url: str, tracking_uri: str, n_trials: int, worker: int = 0, quiet: bool = True) -> None:
    """Run trials until the study holds n_trials COMPLETE + PRUNED trials (one worker's loop).

    Before each trial it fails and re-queues the trials of dead workers (stale heartbeats). When
    every remaining trial is running elsewhere it waits (poll_s) rather than overshoot the target,
    since one of those may still die and come back as a re-queued trial.
    """
    spec = SweepSpec.model_validate(spec_json)
    experiment_id = tracking.setup(tracking_uri, load_config(base, fixed).name)
    on_stale = requeue_stale_trial(tracking_uri, experiment_id, spec.study_name, spec.heartbeat.max_retry)
    storage = open_storage(storage_url, spec.heartbeat, on_stale=on_stale)
    study = open_study(spec, storage, worker)
    parent_run_id = study.user_attrs["mlflow_parent_run_id"]
    objective = make_objective(spec, Path(base), fixed, tracking_uri, experiment_id, parent_run_id, quiet)
    while True:
        with warnings.catch_warnings():  # experimental in optuna 5, and the documented way to do this
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counts = study_counts(study)
        if counts["complete"] + counts["pruned"] >= n_trials:
            return
        if counts["failed"] >= spec.max_failed_trials:
            errors = [t.user_attrs.get("error", "?") for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))]
            raise AttnRLError(
                f"Sweep {spec.study_name} stopped: {counts['failed']} trials failed (max_failed_trials = {spec.max_failed_trials}). "
                f"Last error: {errors[-1] if errors else '?'}"
            )
        if counts["waiting"] == 0 and counts["complete"] + counts["pruned"] + counts["running"] >= n_trials:
            time.sleep(spec.poll_s)
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed,))


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker process: run_worker(**the JSON file argv[0]); a user error becomes
    one paragraph on stderr and exit code 2."""
    try:
        run_worker(**json.loads(Path(argv[0]).read_text()))
    except AttnRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def start_worker(kwargs: dict, log_path: Path) -> subprocess.Popen:
    """One worker as a plain interpreter (`python -c`), not a multiprocessing child: its exit runs
    the normal atexit hooks (which stop helper pools), and the spawned helpers it starts do not
    re-import a heavy main module."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args_path = log_path.with_suffix(".json")
    args_path.write_text(json.dumps(kwargs, indent=1))
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "import sys; from flows.sweep import worker_main; sys.exit(worker_main(sys.argv[1:]))", str(args_path)],
            env=env, stdout=log, stderr=log,
        )


@contextlib.contextmanager
def prefect_api_for_children():
    """Let worker processes report their trial flow runs to this process's Prefect API (the
    temporary local one, unless PREFECT_API_URL already names a server): one place to see them,
    and no temporary API server started per worker."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.client.orchestration import get_client

    os.environ["PREFECT_API_URL"] = str(get_client(sync_client=True).api_url).rstrip("/")
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def trial_rows(study: optuna.Study) -> list[dict]:
    """One row per trial: number, state, value, values, MLflow run."""
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            "retry_of": t.system_attrs.get("failed_trial"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def write_best(study: optuna.Study, base: Path, fixed: list[str], out_dir: Path, spec: SweepSpec) -> tuple[Path, dict] | None:
    """The best trial's full config as YAML (ready for `attnrl train --config`), or None."""
    try:
        best = study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None
    cfg = load_config(base, fixed + trial_overrides(best.params))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "best.yaml"
    header = (
        f"# Best trial {best.number} of sweep {spec.study_name}: {spec.objective.reduce} {spec.objective.metric} = {best.value:.6g}\n"
        f"# values: {json.dumps(best.params)}\n# Train it: attnrl train --config {path}\n"
    )
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tmp.replace(path)
    return path, {"number": best.number, "value": best.value, "params": best.params, "mlflow_run_id": best.user_attrs.get("mlflow_run_id")}


@flow(name="sweep")
def sweep_flow(
    sweep_path: str,
    overrides: list[str] | None = None,
    n_trials: int | None = None,
    workers: int = 1,
    storage: str | None = None,
    tracking_uri: str | None = None,
    quiet: bool = True,
) -> dict:
    """Run (or continue) the Optuna study of the sweep file; returns its trials and best config.

    `overrides` are extra fixed overrides of the base config (after the file's own);
    `n_trials` replaces the file's total target; `workers` > 1 runs that many worker
    processes against the storage (default sqlite:///runs/optuna.db).

    >>> r = sweep_flow("experiments/sweeps/smoke.yaml", n_trials=2)   # doctest: +SKIP
    >>> r["counts"], r["best"]["params"], r["best_config"]
    ({'complete': 2, ...}, {'branch.rho': 0.31}, 'runs/sweeps/smoke/best.yaml')
    """
    if workers < 1:
        raise AttnRLError(f"--workers must be at least 1 (got {workers}).")
    spec, base, fixed = load_sweep(sweep_path, overrides or [])
    target = n_trials if n_trials is not None else spec.n_trials
    if target < 1:
        raise AttnRLError(f"--trials must be at least 1 (got {target}).")
    uri = tracking.resolve_uri(tracking_uri)
    storage_url = storage or default_storage()
    experiment_id = tracking.setup(uri, load_config(base, fixed).name)
    study = open_study(spec, open_storage(storage_url, spec.heartbeat))
    for point in spec.enqueue:  # skip_if_exists: a re-run must not queue them again
        study.enqueue_trial(point, skip_if_exists=True)
    client = MlflowClient(uri)
    parent_run_id = ensure_parent_run(client, experiment_id, study, spec, sweep_path, storage_url)
    shared = {"spec_json": spec.model_dump(mode="json"), "base": str(base), "fixed": fixed, "storage_url": storage_url, "tracking_uri": uri, "n_trials": target}
    status = "FINISHED"
    try:
        if workers == 1:
            run_worker(**shared, worker=0, quiet=quiet)
        else:
            if load_config(base, fixed).model.path is None:
                # every trial starts from the tiny base policy: build it once, not once per worker at the same time
                from flows.warmstart import warmstart_flow

                warmstart_flow(str(base), fixed, tracking_uri=uri, quiet=quiet)
            logs = RUNS_DIR / "sweeps" / spec.study_name / "logs"
            with prefect_api_for_children():
                procs = [start_worker({**shared, "worker": i, "quiet": True}, logs / f"worker-{i}.log") for i in range(workers)]
            try:
                codes = [p.wait() for p in procs]
            except BaseException:  # interrupted or cancelled: do not leave workers running on
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                raise
            if any(codes):
                tails = []
                for i, code in enumerate(codes):
                    if code:
                        lines = (logs / f"worker-{i}.log").read_text(errors="replace").strip().splitlines()
                        tails.append(f"worker {i} (exit {code}): {lines[-1] if lines else 'no output'}")
                raise AttnRLError(f"Sweep {spec.study_name}: {sum(map(bool, codes))} of {workers} workers stopped early; " + " ".join(tails) + f" (logs in {logs})")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        counts = study_counts(study)
        best = write_best(study, base, fixed, RUNS_DIR / "sweeps" / spec.study_name, spec)
        rows = trial_rows(study)
        client.log_dict(parent_run_id, rows, "sweep/trials.json")
        stamp = int(time.time() * 1000)
        done = counts["complete"] + counts["pruned"]
        metrics = [mlflow.entities.Metric(f"sweep/trials_{k}", float(v), stamp, done) for k, v in counts.items()]
        if best is not None:
            metrics.append(mlflow.entities.Metric("sweep/best_value", float(best[1]["value"]), stamp, done))
            client.log_artifact(parent_run_id, str(best[0]), artifact_path="best")
            client.set_tag(parent_run_id, "best_trial", str(best[1]["number"]))
            client.set_tag(parent_run_id, "best_params", json.dumps(best[1]["params"])[:5000])
        client.log_batch(parent_run_id, metrics=metrics)
        client.set_terminated(parent_run_id, status=status)
    return {
        "study_name": spec.study_name,
        "storage": public_url(storage_url),
        "parent_run_id": parent_run_id,
        "n_trials": target,
        "counts": counts,
        "trials": rows,
        "best": best[1] if best else None,
        "best_config": str(best[0]) if best else None,
    }
