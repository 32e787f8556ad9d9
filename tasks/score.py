"""Score phase: one policy pass over the freshly sampled responses (log-probs, entropies, FCI:
attnrl_core/scoring.py `score_groups`, on every rank's share)."""

from __future__ import annotations

import math

from attnrl_core.trainer import NonFiniteLoss
from tasks.phase import phase_task
from tasks.results import RolloutResult, ScoreResult
from tasks.session import TrainSession


@phase_task("score")
def score(s: TrainSession, iteration: int, rolled: RolloutResult) -> ScoreResult:
    # one_step_off scores the batch it just sampled (trained on next iteration); on_policy, this one
    groups = rolled.to_plan
    if groups:
        s.ranks.score(groups, iteration=iteration)  # each rank its share of the groups (tasks/ranks.py)
    if any(not math.isfinite(x) for g in groups for r in g.responses for x in (*r.token_logprobs, *r.step_fci)):
        raise NonFiniteLoss(
            f"The policy's log-probs or FCI became non-finite (NaN/Inf) at iteration {iteration}: its weights diverged. "
            "The run stops here and keeps its last good checkpoint; lower optim.lr."
        )
    s.faults.maybe_fail("score", iteration)
    scores = [x for g in groups for r in g.responses for x in r.step_fci[1:]]
    if not scores:
        return ScoreResult()
    return ScoreResult({"fci/mean": sum(scores) / len(scores), "fci/max": max(scores)})
