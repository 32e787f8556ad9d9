"""The `attnrl` command.

    attnrl warmstart [--config F] [--set k=v ...]     build (or reuse) the tiny base policy
    attnrl train     [--config F] [--set k=v ...]     warm start + training + evaluation
    attnrl resume    RUN                              continue a run from its last checkpoint
    attnrl eval      --model PATH --benchmark B ...   avg@K / pass@K on benchmarks
    attnrl config    [--config F] [--set k=v ...]     every field: resolved value and meaning
    attnrl ui                                         the MLflow UI on 127.0.0.1

A problem with the input (config field, data file and line, model path, tracking store) prints
one paragraph and exits with code 2; nothing already written is touched.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import flows  # noqa: F401  (sets offline/quiet environment defaults before the stack is imported)
import typer
from rich.console import Console
from rich.table import Table

from attnrl_core.config import describe_fields, flatten, load_config
from attnrl_core.errors import AttnRLError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="AttnRL: attention-guided tree RL for reasoning models.")
out = Console()
err = Console(stderr=True)

DEFAULT_CONFIG = "experiments/tiny.yaml"
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML (see experiments/).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field, e.g. --set branch.rho=0.3 (repeatable; `attnrl config` lists fields)."),
]
UriOpt = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or runs/mlflow.db).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def user_errors(fn):
    """Turn AttnRLError into one paragraph on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AttnRLError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _config(path: Path, overrides: list[str] | None):
    return load_config(path, overrides or [])


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _heldout_table(title: str, columns: dict[str, dict]) -> Table:
    """Accuracy by level, one column per policy (e.g. base / trained)."""
    table = Table(title=title)
    table.add_column("level")
    for name in columns:
        table.add_column(name, justify="right")
    keys = sorted({k for col in columns.values() for k in col if k != "avg"}, key=int) + ["avg"]
    for key in keys:
        label = "mean" if key == "avg" else key
        table.add_row(label, *(f"{100 * col[key]:.1f}%" if key in col else "-" for col in columns.values()))
    return table


@app.command()
@user_errors
def warmstart(config: ConfigOpt = Path(DEFAULT_CONFIG), set: SetOpt = None, tracking_uri: UriOpt = None, quiet: QuietOpt = False):
    """Train (or reuse from cache) the tiny base policy on synthetic demonstrations; log it to MLflow."""
    cfg = _config(config, set)
    _quiet_libraries()
    from flows.warmstart import warmstart_flow

    result = warmstart_flow(str(config), set or [], tracking_uri=tracking_uri, quiet=quiet)
    out.print(_heldout_table("held-out greedy accuracy of the base policy", {"base": result["heldout"]}))
    out.print(f"base policy: {result['model_path']}" + (" (cached)" if result["cached"] else ""))


def _train_report(result: dict) -> None:
    columns = {}
    if result.get("base_eval"):
        columns["before"] = result["base_eval"]
    if result.get("final_eval"):
        columns["after"] = result["final_eval"]
    if columns:
        out.print(_heldout_table("held-out accuracy by difficulty level", columns))
    out.print(
        f"MLflow run {result['run_id']}\ncheckpoints: {result['checkpoint_dir']}\nfinal policy: {result['final_policy']}\n"
        "open the results: make ui  (MLflow on http://127.0.0.1:5000)"
    )


@app.command()
@user_errors
def train(
    config: ConfigOpt = Path(DEFAULT_CONFIG),
    set: SetOpt = None,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name (default: method-criterion-seed-hash).")] = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """Warm start (cached), train with the configured method, evaluate; one MLflow run."""
    cfg = _config(config, set)
    _quiet_libraries()
    from flows.train import train_flow

    _train_report(train_flow(str(config), set or [], run_name=run_name, tracking_uri=tracking_uri, quiet=quiet))


@app.command()
@user_errors
def resume(
    run: Annotated[str, typer.Argument(help="MLflow run id or run name of the training run to continue.")],
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """Continue a training run from its last complete checkpoint, in the same MLflow run."""
    _quiet_libraries()
    from flows.train import train_flow

    _train_report(train_flow(None, tracking_uri=tracking_uri, resume=run, quiet=quiet))


@app.command(name="eval")
@user_errors
def eval_(
    model: Annotated[Optional[Path], typer.Option(help="Policy folder (save_pretrained). Default: the cached tiny base policy.")] = None,
    benchmark: Annotated[
        Optional[list[str]], typer.Option(help="'heldout' (synthetic held-out set) or a JSONL/Parquet file with problem, answer. Repeatable.")
    ] = None,
    samples: Annotated[Optional[int], typer.Option(min=1, help="K samples per problem (avg@K, pass@K). Default: eval.samples.")] = None,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="Sampling temperature (0 = greedy). Default: eval.temperature.")] = None,
    config: ConfigOpt = Path(DEFAULT_CONFIG),
    set: SetOpt = None,
    tracking_uri: UriOpt = None,
):
    """avg@K and pass@K of a policy per benchmark; prints the table and logs it to MLflow."""
    overrides = list(set or [])
    if samples is not None:
        overrides.append(f"eval.samples={samples}")
    if temperature is not None:
        overrides.append(f"eval.temperature={temperature}")
    cfg = _config(config, overrides)
    _quiet_libraries()
    from flows.evaluate import evaluate_flow
    from flows.warmstart import base_path

    model_path = model if model is not None else base_path(cfg)
    if model is None and not (model_path / "config.json").is_file():
        raise AttnRLError(f"No --model given and no cached base policy at {model_path}: run `attnrl warmstart` first or pass --model.")
    result = evaluate_flow(str(model_path), benchmark or ["heldout"], str(config), overrides, tracking_uri=tracking_uri)
    table = Table(title=f"evaluation of {model_path}")
    for col in result["rows"][0]:
        table.add_column(col, justify="right" if col not in ("benchmark", "level") else "left")
    for row in result["rows"]:
        table.add_row(*(f"{100 * v:.1f}%" if isinstance(v, float) else str(v) for v in row.values()))
    out.print(table)
    out.print(f"MLflow run: {result['mlflow_run_id']}")


@app.command(name="config")
@user_errors
def config_(config: ConfigOpt = Path(DEFAULT_CONFIG), set: SetOpt = None):
    """Print every config field: its resolved value, type/range and meaning."""
    cfg = _config(config, set)
    values = flatten(cfg)
    table = Table(title=f"config {config} (hash {cfg.hash()})", show_lines=False)
    for col in ("field", "value", "type", "meaning"):
        table.add_column(col, overflow="fold")
    for name, kind, doc in describe_fields():
        table.add_row(name, str(values.get(name)), kind, doc)
    out.print(table)


@app.command()
@user_errors
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000, tracking_uri: UriOpt = None):
    """Serve the MLflow UI for the project's store on http://127.0.0.1:PORT (Ctrl-C stops it)."""
    from flows import tracking

    uri = tracking.resolve_uri(tracking_uri)
    tracking.preflight(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.artifact_root()]
    out.print(f"MLflow UI on http://127.0.0.1:{port}  (store {uri})")
    raise typer.Exit(subprocess.call(cmd))


if __name__ == "__main__":
    app()
