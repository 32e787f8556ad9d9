"""Ablation suites: the suite file (configs x seeds), what MLflow already holds for each config x
seed (skip, resume or train), the entry point of a training child, and the runner that builds
missing base policies, then trains or resumes the rest in child processes, K at a time."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attnrl_core.config import load_config, read_yaml_mapping, spec_error
from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR
from flows.compare.children import ChildTask, cpu_count, run_pool
from flows.compare.report import slug


# ------------------------------------------------------------------------ the suite ----


class SuiteSpec(BaseModel):
    """An ablation suite: configs x seeds, e.g. experiments/ablations/suite.yaml."""

    model_config = ConfigDict(extra="forbid")
    configs: list[str] = Field(min_length=1, description="Config files (relative to the suite file); the file stem names the ablation.")
    seeds: list[int] = Field(min_length=1, description="Seeds to run each config with.")
    overrides: list[str] = Field(default_factory=list, description="--set overrides applied to every run.")
    metric: str = Field("eval/heldout/avg_at_1", min_length=1, description="The metric the comparison reports.")


def load_suite(path: str | Path, seeds: list[int] | None = None, overrides: list[str] | None = None) -> tuple[SuiteSpec, list[tuple[str, Path]], str]:
    """(spec, [(ablation name, config path)], experiment); every config is checked up front and
    all must share one experiment name, so the comparison sees every run."""
    path = Path(path)
    if not path.is_file():
        raise AttnRLError(f"Suite file {path} does not exist (see experiments/ablations/suite.yaml).")
    try:
        spec = SuiteSpec.model_validate(read_yaml_mapping(path, what="Suite file"))
    except ValidationError as exc:
        raise spec_error(exc, "suite file", str(path), "experiments/ablations/suite.yaml") from None
    if seeds:
        spec.seeds = list(seeds)
    spec.overrides = spec.overrides + list(overrides or [])
    entries = [(Path(c).stem, path.parent / c) for c in spec.configs]
    names = {name: load_config(cfg, spec.overrides).name for name, cfg in entries}
    if len(set(names.values())) != 1:
        raise AttnRLError(f"Suite file {path}: its configs must share one experiment `name` to be compared; they have {names}.")
    return spec, entries, next(iter(names.values()))


@dataclass
class SuiteJob:
    """One config x seed of a suite and the run MLflow holds for it: `run_id` with `status`
    FINISHED (skip it), RUNNING / FAILED / KILLED (resume it), or None (train it)."""

    ablation: str
    seed: int
    config: Path
    overrides: list[str]
    config_hash: str
    run_id: str | None = None
    status: str | None = None

    @property
    def name(self) -> str:
        return f"{self.ablation}-s{self.seed}"

    @property
    def action(self) -> Literal["skip", "resume", "train"]:
        return "skip" if self.status == "FINISHED" else "resume" if self.run_id else "train"

    def runs_filter(self, with_hash: bool = True) -> str:
        found = f"tags.kind = 'train' and tags.ablation = '{self.ablation}' and tags.seed = '{self.seed}'"
        return found + (f" and tags.config_hash = '{self.config_hash}'" if with_hash else "")


def plan_suite(client: MlflowClient, experiment_id: str, spec: SuiteSpec, entries: list[tuple[str, Path]]) -> list[SuiteJob]:
    """Every config x seed with what to do: a run with its tags (ablation, seed, config hash)
    that FINISHED means skip; else the newest unfinished one is resumed; else train."""
    jobs = []
    for name, cfg_path in entries:
        for seed in spec.seeds:
            sets = spec.overrides + [f"seed={seed}"]
            job = SuiteJob(name, seed, cfg_path, sets, load_config(cfg_path, sets).hash())
            found = client.search_runs([experiment_id], filter_string=job.runs_filter(), order_by=["attributes.start_time DESC"], max_results=100)
            done = [r for r in found if r.info.status == "FINISHED"]
            pick = done[0] if done else (found[0] if found else None)
            if pick is not None:
                job.run_id, job.status = pick.info.run_id, pick.info.status
            jobs.append(job)
    return jobs


def train_child(argv: list[str]) -> int:
    """Entry point of a suite's training child: train_flow(**the JSON file argv[0]), quiet,
    tagged with its ablation and suite; a user error is one line on stderr and exit code 2.
    (`attnrl train` has no option for tags; a resumed run goes through `attnrl resume`.)"""
    args = json.loads(Path(argv[0]).read_text())
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        from flows.train import train_flow

        result = train_flow(
            args["config"], args["overrides"], run_name=args["run_name"], tracking_uri=args["tracking_uri"], quiet=True, extra_tags=args["extra_tags"]
        )
    except AttnRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args["result"]).write_text(json.dumps({"run_id": result["run_id"]}))
    print(f"run {result['run_id']} finished")
    return 0


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_suite_jobs(client: MlflowClient, experiment_id: str, jobs: list[SuiteJob], uri: str, workers: int, suite: str, quiet: bool = False) -> tuple[list[dict], list[dict]]:
    """Skip the finished jobs; build the base policies the rest need and the cache lacks
    (`attnrl warmstart`, once per base, before any training: two children must not build one
    base at once); then train (train_child) or resume (`attnrl resume <run id>`) the rest,
    `workers` at a time with cores // workers threads each. Returns (runs, failed)."""
    home = RUNS_DIR / "suites" / slug(suite)
    threads = max(1, cpu_count() // workers)
    say: Callable[[str], None] = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results: dict[str, dict] = {}
    failed: list[dict] = []
    todo = []
    for job in jobs:
        if job.action == "skip":
            results[job.name] = {"ablation": job.ablation, "seed": job.seed, "run_id": job.run_id, "status": "skipped (finished before)"}
        else:
            todo.append(job)

    def fail(job: SuiteJob, error: str, log: Path) -> None:
        tail = _log_tail(log)
        failed.append({"ablation": job.ablation, "seed": job.seed, "error": error + (f": {tail}" if tail else "") + f" (log {log})"})

    # 1. base policies: one warm start per missing cache entry
    bases: dict[Path, list[SuiteJob]] = {}
    for job in todo:
        if job.action == "train":
            cfg = load_config(job.config, job.overrides)
            if not cfg.model.path:
                from flows.warmstart import base_path  # imports the training stack: only when a base may be missing

                if not (base_path(cfg) / "warmstart.json").is_file():
                    bases.setdefault(base_path(cfg), []).append(job)
    blocked: set[str] = set()

    def base_done(path: Path, waiting: list[SuiteJob], name: str):
        def on_exit(code: int, seconds: float) -> None:
            say(f"suite: {name} {'done' if code == 0 else f'FAILED (exit code {code})'} after {seconds:.0f} s")
            if code != 0:
                for job in waiting:
                    blocked.add(job.name)
                    fail(job, f"the warm start of its base policy failed (exit code {code})", home / "logs" / f"{name}.log")

        return on_exit

    warm = []
    for path, waiting in bases.items():
        first, name = waiting[0], f"warmstart-{path.name}"
        cmd = [sys.executable, "-m", "flows.cli", "warmstart", "--config", str(first.config), *[a for s in first.overrides for a in ("--set", s)]]
        warm.append(ChildTask(name, "warm start", cmd + ["--quiet", "--tracking-uri", uri], base_done(path, waiting, name)))
    run_pool(warm, workers, threads, home, say)

    # 2. the training runs
    def job_done(job: SuiteJob, result: Path):
        def on_exit(code: int, seconds: float) -> None:
            log = home / "logs" / f"{job.name}.log"
            started_ms = int((time.time() - seconds) * 1000)
            if job.action == "resume":
                run_id = job.run_id
            elif result.is_file():  # the child says which run it trained
                run_id = json.loads(result.read_text())["run_id"]
            else:  # it died: its run, if it got as far as creating one
                found = client.search_runs(
                    [experiment_id], filter_string=f"attributes.run_name = '{job.name}' and {job.runs_filter(with_hash=False)} and attributes.start_time >= {started_ms - 60_000}",
                    order_by=["attributes.start_time DESC"], max_results=1,
                )
                run_id = found[0].info.run_id if found else None
            status = client.get_run(run_id).info.status if run_id else None
            ok = code == 0 and status == "FINISHED"
            say(f"suite: {job.name} {'done' if ok else f'FAILED (exit code {code}, run {status})'} after {seconds:.0f} s")
            if ok:
                results[job.name] = {"ablation": job.ablation, "seed": job.seed, "run_id": run_id, "status": "resumed" if job.action == "resume" else "trained"}
            else:
                fail(job, f"exit code {code}, MLflow run {run_id} {status or 'not created'}", log)

        return on_exit

    tasks = []
    for job in todo:
        if job.name in blocked:
            continue
        result = home / "args" / f"{job.name}.result.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
        if job.action == "resume":
            cmd = [sys.executable, "-m", "flows.cli", "resume", str(job.run_id), "--quiet", "--tracking-uri", uri]
        else:
            args = {
                "config": str(job.config.resolve()), "overrides": job.overrides, "run_name": job.name, "tracking_uri": uri,
                "extra_tags": {"ablation": job.ablation, "suite": suite}, "result": str(result),
            }
            args_path = home / "args" / f"{job.name}.json"
            args_path.write_text(json.dumps(args, indent=1))
            cmd = [sys.executable, "-c", "import sys; from flows.compare import train_child; sys.exit(train_child(sys.argv[1:]))", str(args_path)]
        tasks.append(ChildTask(job.name, f"resume {job.run_id}" if job.action == "resume" else "train", cmd, job_done(job, result)))
    run_pool(tasks, workers, threads, home, say)
    return [results[j.name] for j in jobs if j.name in results], failed
