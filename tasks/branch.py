"""Branch phase: plan branch points (exploration + criterion), continue them when on-policy, and
turn the training batch's trees into PPO samples. In a world that knows its pivotal steps
(data.world: pivot) it also logs how often the planned points hit them (attnrl_core/pivots.py)."""

from __future__ import annotations

from attnrl_core.branch_plan import plan_branches
from attnrl_core.pivots import pivot_hit_rates
from attnrl_core.ppo_samples import batch_statistics, policy_samples
from attnrl_core.prompt_groups import attach_continuations, continuation_requests, continuation_targets
from attnrl_core.rewards import assign_rewards
from attnrl_core.rollout import SamplingParams
from attnrl_core.worlds import world_for
from tasks.phase import phase_task
from tasks.results import BranchResult, RolloutResult
from tasks.session import TrainSession


@phase_task("branch")
def branch(s: TrainSession, iteration: int, rolled: RolloutResult) -> BranchResult:
    cfg = s.cfg
    metrics: dict[str, float] = {}
    running_mean = None
    if rolled.to_plan and cfg.branches:
        running_mean, counts = plan_branches(
            rolled.to_plan, s.running_mean, cfg.branch, cfg.expansion, s.generator(iteration, "branch"), s.vocab_texts,
            max_response_tokens=cfg.data.max_response_tokens,
        )
        metrics.update(
            {
                "batch/dropped_easy_prompts": float(counts.easy_dropped),
                "tree/branched_responses": float(counts.branched_responses),
                "tree/branch_points": float(sum(len(r.branch_points) for g in rolled.to_plan for r in g.responses)),
                "fci/running_mean": float(running_mean.mean or 0.0),
            }
        )
        world = world_for(cfg.data)
        if world.step_kinds is not None and cfg.data.train == "synthetic":  # a world that knows its pivotal steps
            metrics.update(pivot_hit_rates(rolled.to_plan, world.step_kinds, world.pivotal_kinds, s.vocab_texts))
    generated = 0
    if cfg.pipeline == "on_policy" and rolled.current and cfg.branches:
        requests = continuation_requests(rolled.current, cfg.data.max_response_tokens)
        generations = s.ranks.generate(
            [r.prefix_ids for r in requests],
            SamplingParams.for_rollout(cfg.rollout, cfg.data.max_response_tokens),
            seed=s.seed(iteration, "branch"),
            max_new_tokens=[r.budget for r in requests],
            n=[cfg.branch.continuations] * len(requests),
            phase="branch",
            iteration=iteration,
        )
        flat = attach_continuations(rolled.current, requests, generations)
        assign_rewards(s.tokenizer, [], continuation_targets(rolled.current, requests), timeout_s=cfg.verify.timeout_s)
        generated = sum(len(c.token_ids) for c in flat)
        if flat:
            metrics["train/mc_accuracy"] = sum(c.reward for c in flat) / len(flat)

    batch = valid = None
    if rolled.current:
        batch = policy_samples(rolled.current, cfg.advantage)
        metrics.update(batch_statistics(rolled.current, batch))
        valid = int(metrics["batch/valid_sequences"])
    s.faults.maybe_fail("branch", iteration)
    return BranchResult(running_mean=running_mean, batch=batch, valid_sequences=valid, generated_tokens=generated, metrics=metrics)
