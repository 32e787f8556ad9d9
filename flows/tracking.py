"""MLflow wiring: where runs are stored, an up-front reachability check, experiments.

Default store: SQLite at runs/mlflow.db with artifacts under runs/mlartifacts (what `make ui`
serves). Any tracking server works through `MLFLOW_TRACKING_URI` or `--tracking-uri`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR

if TYPE_CHECKING:  # mlflow is imported where it is used: `attnrl ui` and the CLI's checks need none of it
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


# MLflow 3's UI opens an experiment on its GenAI overview (traces, latency) unless it is marked as a
# model-training experiment; this is the UI's own tag and value for that.
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def resolve_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RUNS_DIR / 'mlflow.db'}"


def artifact_root() -> str:
    return (RUNS_DIR / "mlartifacts").as_uri()


def preflight(uri: str) -> None:
    """Fail now, with a clear message, if the store cannot be used — not after an hour of training."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(path).close()
        except (OSError, sqlite3.Error) as exc:
            raise AttnRLError(f"MLflow tracking store {uri} cannot be opened ({exc}). Fix the path or pass --tracking-uri.") from None
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError) as exc:
            raise AttnRLError(
                f"MLflow tracking server {uri} is unreachable ({exc}). Start it (mlflow server --host 127.0.0.1) "
                "or pass another --tracking-uri."
            ) from None
    elif uri.startswith("file:") or "://" not in uri:
        raise AttnRLError(
            f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///path/mlflow.db or an http(s) server."
        )


def setup(uri: str | None, experiment: str) -> str:
    """Point MLflow at the store, check it, and return the experiment id (created if needed)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(uri)
    preflight(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = artifact_root() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location, tags={EXPERIMENT_KIND: TRAINING_KIND})
    else:
        experiment_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:  # made by an older version, or by hand
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
    return experiment_id


def find_run(client: MlflowClient, experiment_ids: list[str], ref: str) -> Run:
    """An MLflow run by id, else by run name (the newest of that name)."""
    try:
        return client.get_run(ref)
    except Exception:  # noqa: BLE001 - not an id: try it as a name
        pass
    runs = client.search_runs(experiment_ids, filter_string=f"attributes.run_name = '{ref}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise AttnRLError(f"No MLflow run with id or name {ref!r} in the tracking store; `attnrl runs` lists them (or pass --tracking-uri).")
    return runs[0]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"
