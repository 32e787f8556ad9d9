"""Advantage estimators by name (verl style): `advantage: tree | grpo` in the config.

Every estimator takes one prompt's group of initial responses (tree.InitialResponse, with
their branches when the method branches) and returns its PromptAdvantages: the training
samples (full token ids + one advantage per token) and whether the prompt was dropped.

    >>> group = [InitialResponse([1, 2], 1.0), InitialResponse([3], 0.0),
    ...          InitialResponse([4], 0.0), InitialResponse([5], 0.0)]
    >>> out = ADVANTAGE_ESTIMATORS["grpo"](group)
    >>> [round(s.advantages[0].item(), 4) for s in out.samples]     # (r - 0.25) / 0.5
    [1.5, -0.5, -0.5, -0.5]
    >>> ADVANTAGE_ESTIMATORS["grpo"].branches, ADVANTAGE_ESTIMATORS["tree"].branches
    (False, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from attnrl_core.errors import AttnRLError
from attnrl_core.tree import InitialResponse, PromptTree, TrainingSample, build_tree


@dataclass(frozen=True)
class PromptAdvantages:
    """One prompt's training samples; dropped = its outcomes all agree (no sample, no signal).
    tree is the prompt's tree for estimators that build one (for logging and rendering)."""

    samples: list[TrainingSample]
    dropped: bool
    tree: PromptTree | None = None


AdvantageEstimator = Callable[..., PromptAdvantages]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(name: str, *, branches: bool) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make an estimator available as `advantage: <name>`. `branches` says whether a
    method using it grows trees (branch points, continuations) or trains on its G samples alone."""

    def register(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        fn.branches = branches
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return register


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as `name`; an unknown name is a config error for people."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise AttnRLError(
            f"advantage is {name!r}, which is not a known advantage estimator; "
            f"choose one of {sorted(ADVANTAGE_ESTIMATORS)}."
        )
    return ADVANTAGE_ESTIMATORS[name]


@register_advantage_estimator("tree", branches=True)
def tree_advantages(responses: Sequence[InitialResponse]) -> PromptAdvantages:
    """TreeRL's tree advantages (docs/method.md §4, see tree.build_tree): one sample per root-to-leaf
    path of more than one node; unbranched responses count in V(root) only."""
    tree = build_tree(responses)
    return PromptAdvantages(samples=tree.samples, dropped=tree.dropped, tree=tree)


@register_advantage_estimator("grpo", branches=False)
def grpo_advantages(responses: Sequence[InitialResponse], *, eps: float = 1e-6) -> PromptAdvantages:
    """GRPO's group-normalised outcome advantage, (r - mean) / (std + eps), on every token.

    std is torch.std's UNBIASED estimate (divides by G - 1) and eps = 1e-6, as verl computes
    it. A group whose rewards all agree (G = 1 included) has zero advantage everywhere and is
    dropped, so it yields no samples. GRPO has no tree: branched responses are an error.

    Example: rewards [1, 0, 0, 1, 1, 0] -> mean 0.5, std sqrt(1.5 / 5) = 0.5477 ->
    advantages +-0.9129; rewards [1, 1, 1] -> dropped.
    """
    if any(response.branch_points for response in responses):
        raise ValueError("the grpo estimator takes unbranched responses only; use 'tree' for branches")
    rewards = torch.tensor([response.reward for response in responses], dtype=torch.float64)  # (G,)
    if rewards.unique().numel() <= 1:
        return PromptAdvantages(samples=[], dropped=True)
    advantages = (rewards - rewards.mean()) / (rewards.std() + eps)  # (G,)
    samples = [
        TrainingSample(
            token_ids=response.token_ids,
            advantages=torch.full((response.token_ids.numel(),), advantage, dtype=torch.float32),  # (L,)
            response_index=i,
        )
        for i, (response, advantage) in enumerate(zip(responses, advantages.tolist()))
    ]
    return PromptAdvantages(samples=samples, dropped=False)
