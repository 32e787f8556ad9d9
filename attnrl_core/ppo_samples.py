"""From prompt groups to training: trees, TreeRL/GRPO advantages and PPO samples (docs/method.md §4).

    >>> from attnrl_core.prompt_groups import PromptGroup, Response
    >>> good = Response([4, 5], [-0.1, -0.2], reward=1.0, token_logprobs=[-0.1, -0.2])
    >>> bad = Response([6], [-0.3], reward=0.0, token_logprobs=[-0.3])
    >>> batch = policy_samples([PromptGroup("p0", "1+1", "2", 1, [1, 2], [good, bad])], "grpo")
    >>> [(s.response_ids, [round(a, 3) for a in s.advantages]) for s in batch.samples]  # (r - 0.5) / std
    [([4, 5], [0.707, 0.707]), ([6], [-0.707])]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from attnrl_core.advantages import get_advantage_estimator
from attnrl_core.prompt_groups import PromptGroup
from attnrl_core.trainer import PolicySample
from attnrl_core.tree import Continuation, InitialResponse, PromptTree


def tree_inputs(group: PromptGroup) -> list[InitialResponse]:
    """The group as the tree module's input (branched responses carry their continuations)."""
    return [
        InitialResponse(
            token_ids=resp.token_ids,
            reward=resp.reward,
            branch_points=resp.branch_points if resp.continuations else (),
            continuations=[[Continuation(c.token_ids, c.reward) for c in conts] for conts in resp.continuations],
        )
        for resp in group.responses
    ]


@dataclass
class BatchSamples:
    samples: list[PolicySample]
    trees: list[PromptTree | None]  # per group (None for estimators without a tree)
    dropped: list[bool]  # per group: every leaf agreed, nothing to learn


def policy_samples(groups: Sequence[PromptGroup], estimator: str) -> BatchSamples:
    """Advantages per group (tree or grpo) turned into PPO samples with their stored log-probs.

    A path that leaves response r at branch point p keeps the scoring pass's log-probs of
    r's first p tokens; the continuation's are recomputed by the trainer.
    """
    estimate = get_advantage_estimator(estimator)
    samples, trees, dropped = [], [], []
    for group in groups:
        result = estimate(tree_inputs(group))
        trees.append(result.tree)
        dropped.append(result.dropped)
        for ts in result.samples:
            resp = group.responses[ts.response_index]
            stored = resp.token_logprobs if ts.branch_point is None else resp.token_logprobs[: ts.branch_point]
            samples.append(
                PolicySample(
                    prompt_ids=group.prompt_ids,
                    response_ids=ts.token_ids.tolist(),
                    advantages=ts.advantages.tolist(),
                    stored_logprobs=list(stored),
                )
            )
    return BatchSamples(samples=samples, trees=trees, dropped=dropped)


def batch_statistics(groups: Sequence[PromptGroup], batch: BatchSamples) -> dict[str, float]:
    """The training batch's diagnostics (docs/method.md §5-6): leaf reward, the share of prompts
    all correct / all wrong before branching (solve_all / solve_none) and after it (every leaf
    of the tree: solve_all_after / solve_none_after), kept after the all-agree drop, sequences and
    valid sequences (any non-zero advantage), the valid-token ratio and the leaves per tree.

    >>> from attnrl_core.prompt_groups import Response
    >>> good, bad = Response([4, 5], [0.0, 0.0], reward=1.0), Response([6], [0.0], reward=0.0)
    >>> groups = [PromptGroup("p0", "1+1", "2", 1, [1], [good, bad])]
    >>> stats = batch_statistics(groups, policy_samples(groups, "grpo"))
    >>> stats["batch/valid_token_ratio"], stats["tree/solve_all_ratio"], stats["train/reward"]
    (1.0, 0.0, 0.5)
    """
    accs = [g.accuracy for g in groups]
    leaves = [t.num_leaves for t in batch.trees if t is not None]
    leaf_rewards = [n.reward for t in batch.trees if t is not None for n in t.nodes if n.reward is not None]
    valid = [x for x in batch.samples if any(a != 0.0 for a in x.advantages)]
    # tokens of every sequence the batch produced: its samples, plus the responses of dropped prompts
    all_tokens = sum(len(x.response_ids) for x in batch.samples) + sum(
        len(r.token_ids) for g, dropped in zip(groups, batch.dropped) if dropped for r in g.responses
    )
    stats = {
        "train/reward": (sum(leaf_rewards) / len(leaf_rewards)) if leaf_rewards else sum(accs) / len(groups),
        "tree/solve_all_ratio": sum(a == 1.0 for a in accs) / len(groups),
        "tree/solve_none_ratio": sum(a == 0.0 for a in accs) / len(groups),
        "tree/prompt_valid_ratio": sum(not d for d in batch.dropped) / len(groups),
        "batch/sequences": float(len(batch.samples)),
        "batch/valid_sequences": float(len(valid)),
        "batch/valid_token_ratio": sum(len(x.response_ids) for x in valid) / max(all_tokens, 1),
    }
    if leaves:
        stats["tree/leaves_per_prompt"] = sum(leaves) / len(leaves)
    # after branching: all leaves of a prompt (its initial responses and continuations) right / wrong
    outcomes = [
        [n.reward for n in tree.nodes if n.reward is not None] if tree is not None else [r.reward for r in g.responses]
        for g, tree in zip(groups, batch.trees)
    ]
    stats["tree/solve_all_after_ratio"] = sum(all(r == 1.0 for r in o) for o in outcomes) / len(groups)
    stats["tree/solve_none_after_ratio"] = sum(all(r == 0.0 for r in o) for o in outcomes) / len(groups)
    return stats
