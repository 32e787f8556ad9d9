"""The MLflow side of a sweep: a trial's run, the study's one parent run, a trial's objective
value read back from its run, and what a sweep leaves behind (its trial table, the best config)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from attnrl_core.config import load_config
from attnrl_core.errors import AttnRLError
from flows import tracking
from flows.sweep.spec import SweepSpec, trial_overrides
from flows.sweep.study import public_url

if TYPE_CHECKING:
    import optuna


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


def objective_value(client: MlflowClient, run_id: str, spec: SweepSpec) -> float:
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
