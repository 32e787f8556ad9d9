"""Warm-start task: supervised fine-tuning of the tiny policy on synthetic demonstrations."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from attnrl_core import data
from attnrl_core.config import Config
from attnrl_core.policy import build_tokenizer, count_parameters, init_tiny_policy
from attnrl_core.sft import train_sft
from attnrl_core.worlds import world_for


def demonstration_batches(cfg: Config):
    """Endless (prompts, demonstrations) batches of the config's world (data.world): problem i of
    the warm-start stream is fixed by (warmstart.seed, i), and the flaw draw by a generator seeded
    the same way."""
    ws = cfg.warmstart
    world = world_for(cfg.data)
    rng = np.random.default_rng(ws.seed)
    cursor = 0
    while True:
        problems = world.generate_problems(ws.batch_size, levels=cfg.data.levels, seed=ws.seed, split="train", start=cursor)
        cursor += ws.batch_size
        yield (
            [data.format_prompt(p.problem) for p in problems],
            [world.make_demonstration(p, ws.flaw, ws.flaw_levels, rng=rng) for p in problems],
        )


@task(name="warmstart-train", cache_policy=NO_CACHE)
def train_base(cfg_json: dict, out_dir: str, on_step: Callable[[int, float, float], None] | None = None) -> dict:
    """Train the base policy and save it (model + tokenizer + warmstart.json) atomically at out_dir.

    Writes into a sibling temporary folder and renames it into place, so an interrupted warm
    start never leaves a half-written cache entry behind.
    """
    cfg = Config.model_validate(cfg_json)
    ws = cfg.warmstart
    tokenizer = build_tokenizer(world_for(cfg.data).phrases)  # the world's phrases are single tokens
    model = init_tiny_policy(cfg.model.tiny, tokenizer, seed=ws.seed)
    losses = train_sft(
        model, tokenizer, demonstration_batches(cfg), ws.steps, ws.lr, ws.warmup_steps, ws.weight_decay, on_step=on_step,
        micro_batch_tokens=ws.micro_batch_tokens,
    )
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    summary = {"parameters": count_parameters(model), "steps": ws.steps, "final_loss": losses[-1] if losses else None}
    (tmp / "warmstart.json").write_text(json.dumps({"summary": summary, "losses": losses}))
    if out.exists():  # another process finished the same key first: keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return summary
