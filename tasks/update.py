"""Update phase: one epoch of clipped PPO over the training batch's root-to-leaf paths."""

from __future__ import annotations

from dataclasses import asdict

from tasks.phase import phase_task
from tasks.results import BranchResult, UpdateResult
from tasks.session import TrainSession


@phase_task("update")
def update(s: TrainSession, iteration: int, plan: BranchResult) -> UpdateResult:
    """Mutates the policy, so a retry first restores the weights + optimizer of attempt one."""
    samples = plan.batch.samples if plan.batch is not None else []
    if not samples:  # the pipeline is priming, or every prompt's leaves agreed
        s.faults.maybe_fail("update", iteration)
        return UpdateResult({"actor/updated": 0.0})
    # the ranks restore the weights + optimizer of before attempt one on a retry, and every
    # rank's engine samples the next batch from the new weights (tasks/ranks.py)
    stats = s.ranks.update(samples, s.seed(iteration, "update"), iteration)
    s.faults.maybe_fail("update", iteration)  # after the weights moved: the retry must undo this attempt
    out = {f"actor/{k}": float(v) for k, v in asdict(stats).items()}
    out["actor/updated"] = 1.0
    return UpdateResult(out)
