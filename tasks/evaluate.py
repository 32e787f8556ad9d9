"""Evaluation task: avg@K / pass@K of a policy on the held-out synthetic set and benchmark files."""

from __future__ import annotations

import functools
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from attnrl_core import data
from attnrl_core.config import Config
from attnrl_core.evaluation import EvalReport, evaluate
from attnrl_core.rollout import make_engine
from attnrl_core.verify import verify_batch

HELDOUT = "heldout"


def benchmark_problems(cfg: Config, name: str) -> list:
    """'heldout' = the fixed synthetic held-out set; anything else is a benchmark file path."""
    if name == HELDOUT:
        return data.synthetic_heldout(cfg.data)  # the held-out set of data.world
    return data.load_benchmark(name)


def benchmark_key(name: str) -> str:
    """Metric-safe benchmark name: 'heldout' or the file's stem ('tests/data/aime.jsonl' -> 'aime')."""
    return name if name == HELDOUT else Path(name).stem


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_policy(model, tokenizer, cfg_json: dict, benchmarks: list[str], seed: int) -> dict[str, EvalReport]:
    """Evaluate `model` on each benchmark with the config's eval sampling (greedy by default).

    The model is the in-memory policy (a handle from the flow's long-lived state), never sent
    through Prefect's result store; the reports are small dataclasses.
    """
    cfg = Config.model_validate(cfg_json)
    engine = make_engine("hf", model=model, eos_token_id=tokenizer.eos_token_id, max_batch_size=cfg.rollout.max_batch_size)
    reports = {}
    for name in benchmarks:
        problems = benchmark_problems(cfg, name)
        reports[benchmark_key(name)] = evaluate(
            engine,
            tokenizer,
            problems,
            samples=cfg.eval.samples,
            temperature=cfg.eval.temperature,
            max_new_tokens=cfg.eval.max_new_tokens,
            seed=seed,
            verify_batch=functools.partial(verify_batch, timeout_s=cfg.verify.timeout_s),
            format_prompt=data.format_prompt,
        )
    return reports
