"""Branch planning: which responses of each prompt group to branch and where (docs/method.md §3, §5).

Exploration (difficulty-aware filter and expansion) picks the responses; the configured branch
criterion picks the points in each; the points are stored on the responses.

    >>> from attnrl_core.prompt_groups import PromptGroup, Response
    >>> resp = Response(token_ids=[5, 3, 6, 3, 7, 3], behaviour_logprobs=[0.0] * 6, reward=0.0,
    ...                 step_spans=[[0, 2], [2, 4], [4, 6]], step_fci=[0.0, 0.0, 0.9, 0.1],
    ...                 token_entropy=[1.0] * 6, token_logprobs=[-0.5] * 6)
    >>> group = PromptGroup("p0", "1+1", "2", 1, [1, 2], [resp])
    >>> _ = plan_branches([group], FCIRunningMean(), BranchConfig(min_token_offset=0, min_token_gap=0),
    ...                   ExpansionConfig(), torch.Generator().manual_seed(0))
    >>> resp.branch_points   # steps 2 and 3 start at tokens 2 and 4
    [2, 4]
"""

from __future__ import annotations

from typing import Sequence

import torch

from attnrl_core.branching import ResponseView, criterion_params, get_criterion
from attnrl_core.config import BranchConfig, ExpansionConfig
from attnrl_core.exploration import ExplorationCounts, FCIRunningMean, PromptRollouts, plan_exploration, prompt_mean_fci
from attnrl_core.prompt_groups import PromptGroup


def plan_branches(
    groups: Sequence[PromptGroup],
    running_mean: FCIRunningMean,
    branch: BranchConfig,
    expansion: ExpansionConfig,
    generator: torch.Generator,
    vocab_texts: Sequence[str] = (),
    max_response_tokens: int | None = None,
) -> tuple[FCIRunningMean, ExplorationCounts]:
    """Difficulty-aware exploration (which responses, docs/method.md §5, config section
    `expansion`) + the criterion (where, §3, section `branch`).

    Sets `branch_points` on every response of `groups` (empty = not branched) and returns the
    updated running mean (the caller stores it) and the exploration counters.
    """
    rollouts = [
        PromptRollouts(tuple(int(r.reward) for r in g.responses), mf=prompt_mean_fci([r.step_fci[1:] for r in g.responses]))
        for g in groups
    ]
    plan = plan_exploration(rollouts, running_mean, generator, expansion)
    criterion = get_criterion(branch.criterion)
    params = criterion_params(criterion, branch)
    for group, chosen in zip(groups, plan.branch):
        for resp in group.responses:
            resp.branch_points = []
        for r in chosen:
            resp = group.responses[r]
            view = ResponseView(
                prompt_len=len(group.prompt_ids),
                step_spans=[tuple(s) for s in resp.step_spans],
                step_scores=torch.tensor(resp.step_fci, dtype=torch.float32),
                token_entropies=torch.tensor(resp.token_entropy, dtype=torch.float32),
                token_logprobs=torch.tensor(resp.token_logprobs, dtype=torch.float32),
                token_texts=[vocab_texts[t] if t < len(vocab_texts) else "" for t in resp.token_ids] if vocab_texts else None,
                max_length=max_response_tokens,
            )
            resp.branch_points = list(criterion(view, generator=generator, **params))
    return plan.running_mean, plan.counts
