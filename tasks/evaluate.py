"""Evaluation task: avg@K / pass@K of a policy on the run's benchmark sets (eval.benchmarks).

Each set is the synthetic held-out set ('heldout') or a benchmark file, sampled with its own
samples / temperature / top_p / max_new_tokens (the eval section's where it sets none). The
policy is evaluated on the engine it is given: the training run's own (rollout.engine: the hf
engine over the live policy, or the vLLM server that holds its current weights), so evaluation
runs where rollouts run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from attnrl_core import data
from attnrl_core.config import HELDOUT, BenchmarkSet, Config
from attnrl_core.evaluation import EvalReport, evaluate
from attnrl_core.rollout import make_engine
from attnrl_core.verify import verify_batch

__all__ = ["HELDOUT", "EvalProgressHook", "benchmark_key", "benchmark_problems", "evaluate_policy"]

# called after each engine call with (benchmark name, problems done, problems in the set, tokens generated)
EvalProgressHook = Callable[[str, int, int, int], None]


def benchmark_problems(cfg: Config, bench: BenchmarkSet | str) -> list:
    """'heldout' = the fixed synthetic held-out set; anything else is a benchmark file path."""
    source = bench.source if isinstance(bench, BenchmarkSet) else bench
    if source == HELDOUT:
        return data.synthetic_heldout(cfg.data)  # the held-out set of data.world
    return data.load_benchmark(source)


def benchmark_key(name: str) -> str:
    """Metric-safe benchmark name: 'heldout' or the file's stem ('tests/data/aime.jsonl' -> 'aime')."""
    return name if name == HELDOUT else Path(name).stem


def _sets(cfg: Config, benchmarks: Sequence[Any] | None) -> list[BenchmarkSet]:
    if benchmarks is None:
        return cfg.eval.sets()
    return [(b if isinstance(b, BenchmarkSet) else BenchmarkSet.model_validate(b)).resolved(cfg.eval) for b in benchmarks]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_policy(
    engine, tokenizer, cfg_json: dict, benchmarks: Sequence[Any] | None = None, seed: int = 0, progress: EvalProgressHook | None = None
) -> dict[str, EvalReport]:
    """Evaluate on each benchmark set; returns {set name: report}.

    `engine`: a rollout engine (the run's own), or a model, which is wrapped in an hf engine.
    `benchmarks`: sets (BenchmarkSet, a source string or a dict); None = the config's
    eval.benchmarks. The model is the in-memory policy (a handle from the flow's long-lived
    state), never sent through Prefect's result store; the reports are small dataclasses.
    """
    cfg = Config.model_validate(cfg_json)
    if isinstance(engine, torch.nn.Module):
        engine = make_engine("hf", model=engine, eos_token_id=tokenizer.eos_token_id, max_batch_size=cfg.rollout.max_batch_size)
    reports = {}
    for bench in _sets(cfg, benchmarks):
        problems = benchmark_problems(cfg, bench)
        hook = None if progress is None else functools.partial(progress, bench.key)
        reports[bench.key] = evaluate(
            engine,
            tokenizer,
            problems,
            samples=bench.samples,
            temperature=bench.temperature,
            top_p=bench.top_p,
            max_new_tokens=bench.max_new_tokens,
            seed=seed,
            verify_batch=functools.partial(verify_batch, timeout_s=cfg.verify.timeout_s),
            format_prompt=data.format_prompt,
            rows_per_call=cfg.eval.progress_rows,
            on_progress=hook,
        )
    return reports
