"""Branch phase: plan branch points (exploration + criterion), continue them when on-policy, and
turn the training batch's trees into PPO samples."""

from __future__ import annotations

from attnrl_core.tree_sampling import attach_continuations, continuation_requests, continuation_targets, plan_branches, policy_samples
from tasks import session as sessions
from tasks.rollout import sampling_params, verify_rewards


@sessions.phase_task("branch")
def branch(handle: str, iteration: int) -> dict:
    s = sessions.get(handle)
    cfg = s.cfg
    st = s.staged
    metrics: dict[str, float] = {}
    to_plan = st.next_pending if cfg.pipeline == "one_step_off" else st.current
    if to_plan and cfg.advantage != "grpo":
        running_mean, counts = plan_branches(to_plan, s.running_mean, s.branch_settings, s.generator(iteration, "branch"), s.vocab_texts)
        st.running_mean = running_mean
        points = [len(r.branch_points) for g in to_plan for r in g.responses]
        metrics.update(
            {
                "batch/dropped_easy_prompts": float(counts.easy_dropped),
                "tree/branched_responses": float(counts.branched_responses),
                "tree/branch_points": float(sum(points)),
                "fci/running_mean": float(running_mean.mean or 0.0),
            }
        )
    if cfg.pipeline == "on_policy" and st.current and cfg.advantage != "grpo":
        requests = continuation_requests(st.current, cfg.data.max_response_tokens)
        generations = s.engine.generate(
            [r.prefix_ids for r in requests],
            sampling_params(cfg),
            seed=s.seed(iteration, "branch"),
            max_new_tokens=[r.budget for r in requests],
            n=[cfg.branch.continuations] * len(requests),
        )
        flat = attach_continuations(st.current, requests, generations)
        verify_rewards(s, [], continuation_targets(st.current, requests))
        st.generated_tokens += sum(len(c.token_ids) for c in flat)
        if flat:
            metrics["train/mc_accuracy"] = sum(c.reward for c in flat) / len(flat)

    if st.current:
        batch = policy_samples(st.current, cfg.advantage)
        st.samples = batch.samples
        st.trees = batch.trees
        groups = len(st.current)
        accs = [g.accuracy for g in st.current]
        leaves = [t.num_leaves for t in batch.trees if t is not None]
        leaf_rewards = [n.reward for t in batch.trees if t is not None for n in t.nodes if n.reward is not None]
        valid = [x for x in batch.samples if any(a != 0.0 for a in x.advantages)]
        all_tokens = sum(len(x.response_ids) for x in batch.samples) + sum(
            len(r.token_ids) for g, dropped in zip(st.current, batch.dropped) if dropped for r in g.responses
        )
        st.valid_sequences = len(valid)
        metrics.update(
            {
                "train/reward": (sum(leaf_rewards) / len(leaf_rewards)) if leaf_rewards else sum(accs) / groups,
                "tree/solve_all_ratio": sum(a == 1.0 for a in accs) / groups,
                "tree/solve_none_ratio": sum(a == 0.0 for a in accs) / groups,
                "tree/prompt_valid_ratio": sum(not d for d in batch.dropped) / groups,
                "batch/sequences": float(len(batch.samples)),
                "batch/valid_sequences": float(len(valid)),
                "batch/valid_token_ratio": sum(len(x.response_ids) for x in valid) / max(all_tokens, 1),
            }
        )
        if leaves:
            metrics["tree/leaves_per_prompt"] = sum(leaves) / len(leaves)
    s.maybe_fail("branch", iteration)
    return metrics
