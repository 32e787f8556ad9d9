"""Rollout phase: sample, verify, and (one-step pipeline) continue the pending batch in one call.

one_step_off (docs/method.md §7): a single engine call holds the G initial samples of the NEXT batch and
the T continuations of every branch point of the pending batch; the pending batch becomes this
iteration's training batch. on_policy: only the initial samples here; the branch phase makes a
second call for the continuations.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from attnrl_core import data
from attnrl_core.policy import encode_prompt
from attnrl_core.rollout import SamplingParams
from attnrl_core.tree_sampling import (
    PromptGroup,
    Response,
    attach_continuations,
    continuation_requests,
    continuation_targets,
    response_from_generation,
)
from attnrl_core.verify import verify_batch
from tasks import session as sessions


def sampling_params(cfg) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(n=1, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=cfg.data.max_response_tokens)


def next_problems(s: sessions.TrainSession, cursor: int, count: int) -> tuple[list[data.Problem], int]:
    """`count` training problems from the stream position `cursor`; returns them and the new cursor.

    Synthetic: problem i is a function of (data.seed, i). A file: epoch e is a permutation of
    the file seeded by (data.seed, e); prompts longer than data.max_prompt_tokens are skipped.
    """
    cfg = s.cfg
    out: list[data.Problem] = []
    while len(out) < count:
        if cfg.data.train == "synthetic":
            problem = data.problem_at(cursor, seed=cfg.data.seed, levels=cfg.data.levels)
        else:
            pool = s.train_problems
            epoch, index = divmod(cursor, len(pool))
            order = np.random.default_rng([cfg.data.seed, epoch]).permutation(len(pool))
            problem = pool[int(order[index])]
        cursor += 1
        if len(encode_prompt(s.tokenizer, data.format_prompt(problem.problem))) <= cfg.data.max_prompt_tokens:
            out.append(problem)
    return out, cursor


def verify_rewards(s: sessions.TrainSession, groups: list[PromptGroup], continuations: list[tuple[Response, list[int], str]]) -> None:
    """Verify the initial responses of `groups` and the given continuations (each with its full
    response ids = original prefix + continuation, and its answer); store 0/1 rewards."""
    targets = [(r, r.token_ids, g.answer) for g in groups for r in g.responses] + list(continuations)
    texts = [s.tokenizer.decode(ids, skip_special_tokens=True) for _, ids, _ in targets]
    verdicts = verify_batch(texts, [answer for _, _, answer in targets], timeout_s=s.cfg.verify.timeout_s)
    for (target, _, _), ok in zip(targets, verdicts):
        target.reward = 1.0 if ok else 0.0


@sessions.phase_task("rollout")
def rollout(handle: str, iteration: int) -> dict:
    s = sessions.get(handle)
    cfg = s.cfg
    start = time.perf_counter()
    problems, cursor = next_problems(s, s.state.cursor, s.prompt_batch_size)
    prompts = [encode_prompt(s.tokenizer, data.format_prompt(p.problem)) for p in problems]
    one_step = cfg.pipeline == "one_step_off"
    current = copy.deepcopy(s.pending) if one_step else []
    requests = continuation_requests(current, cfg.data.max_response_tokens) if one_step else []
    G, T = cfg.rollout.group_size, cfg.branch.continuations
    generations = s.engine.generate(
        prompts + [r.prefix_ids for r in requests],
        sampling_params(cfg),
        seed=s.seed(iteration, "rollout"),
        max_new_tokens=[cfg.data.max_response_tokens] * len(prompts) + [r.budget for r in requests],
        n=[G] * len(prompts) + [T] * len(requests),
    )
    new_groups = [
        PromptGroup(p.id, p.problem, p.answer, p.level, ids, [response_from_generation(g) for g in gens])
        for p, ids, gens in zip(problems, prompts, generations[: len(prompts)])
    ]
    flat = attach_continuations(current, requests, generations[len(prompts) :])
    verify_rewards(s, new_groups, continuation_targets(current, requests))
    s.maybe_fail("rollout", iteration)

    new_tokens = sum(len(r.token_ids) for g in new_groups for r in g.responses) + sum(len(c.token_ids) for c in flat)
    s.staged.cursor = cursor
    s.staged.generated_tokens = new_tokens
    if one_step:
        s.staged.current, s.staged.next_pending = current, new_groups
    else:
        s.staged.current, s.staged.next_pending = new_groups, []
    initial = [r for g in new_groups for r in g.responses]
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
    return metrics
