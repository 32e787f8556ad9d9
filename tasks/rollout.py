"""Rollout phase: sample, verify, and (one-step pipeline) continue the pending batch in one call.

one_step_off (docs/method.md §7): a single engine call holds the G initial samples of the NEXT
batch and the T continuations of every branch point of the pending batch; the pending batch
becomes this iteration's training batch. on_policy: only the initial samples here; the branch
phase makes a second call for the continuations.
"""

from __future__ import annotations

import copy
import time

from attnrl_core import data
from attnrl_core.policy import encode_prompt
from attnrl_core.prompt_groups import PromptGroup, attach_continuations, continuation_requests, continuation_targets, response_from_generation
from attnrl_core.rewards import assign_rewards
from attnrl_core.rollout import SamplingParams
from tasks.phase import phase_task
from tasks.results import RolloutResult
from tasks.session import TrainSession


@phase_task("rollout")
def rollout(s: TrainSession, iteration: int) -> RolloutResult:
    cfg = s.cfg
    start = time.perf_counter()
    problems, cursor = s.problems.read(s.prompt_batch_size)
    prompts = [encode_prompt(s.tokenizer, data.format_prompt(p.problem)) for p in problems]
    one_step = cfg.pipeline == "one_step_off"
    # a copy: the pending batch stays as committed, so a retry continues the same batch
    current = copy.deepcopy(s.pending) if one_step else []
    requests = continuation_requests(current, cfg.data.max_response_tokens) if one_step else []
    G, T = cfg.rollout.group_size, cfg.branch.continuations
    generations = s.ranks.generate(
        prompts + [r.prefix_ids for r in requests],
        SamplingParams.for_rollout(cfg.rollout, cfg.data.max_response_tokens),
        seed=s.seed(iteration, "rollout"),
        max_new_tokens=[cfg.data.max_response_tokens] * len(prompts) + [r.budget for r in requests],
        n=[G] * len(prompts) + [T] * len(requests),
        phase="rollout",
        iteration=iteration,
    )
    fresh = [
        PromptGroup(p.id, p.problem, p.answer, p.level, ids, [response_from_generation(g) for g in gens])
        for p, ids, gens in zip(problems, prompts, generations[: len(prompts)])
    ]
    flat = attach_continuations(current, requests, generations[len(prompts) :])
    assign_rewards(s.tokenizer, fresh, continuation_targets(current, requests), timeout_s=cfg.verify.timeout_s)
    s.faults.maybe_fail("rollout", iteration)

    new_tokens = sum(len(r.token_ids) for g in fresh for r in g.responses) + sum(len(c.token_ids) for c in flat)
    initial = [r for g in fresh for r in g.responses]
    seconds = time.perf_counter() - start
    metrics = {
        "train/initial_accuracy": sum(r.reward for r in initial) / max(len(initial), 1),
        "train/response_length": sum(len(r.token_ids) for r in initial) / max(len(initial), 1),
        "batch/prompts": float(len(problems)),
        "throughput/generated_tokens": float(new_tokens),
        "throughput/tokens_per_s": new_tokens / max(seconds, 1e-9),
    }
    if flat:
        metrics["train/mc_accuracy"] = sum(c.reward for c in flat) / len(flat)
    if one_step:
        return RolloutResult(current=current, next_pending=fresh, to_plan=fresh, cursor=cursor, generated_tokens=new_tokens, metrics=metrics)
    return RolloutResult(current=fresh, next_pending=[], to_plan=fresh, cursor=cursor, generated_tokens=new_tokens, metrics=metrics)
