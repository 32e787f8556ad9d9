"""The sweep file: its schema (SweepSpec and its parts), reading and checking it up front
(load_sweep), and a trial's values as --set overrides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attnrl_core.config import describe_fields, load_config, objective_metric, read_yaml_mapping, spec_error
from attnrl_core.errors import AttnRLError

if TYPE_CHECKING:
    import optuna


# Fields a trial must not change: the experiment name decides where the trial's run is filed,
# and the parent run (found in that experiment) must hold every child.
FIXED_FIELDS = ("name",)


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
    metric: str | None = Field(
        None, min_length=1, description="MLflow metric of the trial's run that the study optimises; null = the base config's eval.objective "
        "(eval/heldout/avg_at_1 for the tiny default)."
    )
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
    base_cfg = load_config(base, fixed)  # the base itself must be valid (raises naming its field)
    if spec.objective.metric is None:  # the objective follows the base config's eval.objective
        spec.objective.metric = objective_metric(base_cfg)
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
