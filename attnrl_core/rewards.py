"""Outcome rewards: every sampled response and continuation verified against its answer (0/1).

A continuation is verified as the full response it completes: the original response's prefix
up to the branch point followed by the continuation's new tokens.
"""

from __future__ import annotations

from typing import Sequence

from attnrl_core.prompt_groups import PromptGroup, Response
from attnrl_core.verify import verify_batch


def assign_rewards(
    tokenizer, groups: Sequence[PromptGroup], continuations: Sequence[tuple[Response, list[int], str]], timeout_s: float
) -> None:
    """Set `reward` on the initial responses of `groups` and on the given continuations (each
    with its full response ids and its answer, as prompt_groups.continuation_targets gives them)."""
    targets = [(r, r.token_ids, g.answer) for g in groups for r in g.responses] + list(continuations)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for _, ids, _ in targets]
    verdicts = verify_batch(texts, [answer for _, _, answer in targets], timeout_s=timeout_s)
    for (target, _, _), ok in zip(targets, verdicts):
        target.reward = 1.0 if ok else 0.0
