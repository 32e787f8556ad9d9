"""Score phase: one policy pass over the freshly sampled responses (log-probs, entropies, FCI)."""

from __future__ import annotations

import math

from attnrl_core.scoring import score_groups
from attnrl_core.trainer import NonFiniteLoss
from tasks import session as sessions


@sessions.phase_task("score")
def score(handle: str, iteration: int) -> dict:
    s = sessions.get(handle)
    cfg = s.cfg
    # one_step_off scores the batch it just sampled (trained on next iteration); on_policy, this one
    groups = s.staged.next_pending if cfg.pipeline == "one_step_off" else s.staged.current
    if groups:
        score_groups(
            s.policy,
            groups,
            s.sep_mask,
            s.vocab_texts,
            pad_token_id=s.tokenizer.pad_token_id,
            delta=cfg.fci.delta,
            aggregate=cfg.fci.aggregate,
            chunk_size=cfg.fci.chunk_size,
            zero_prompt=cfg.fci.zero_prompt,
            zero_first_step=cfg.fci.zero_first_step,
            zero_answer_summary=cfg.fci.zero_answer_summary,
            micro_batch=cfg.rollout.max_batch_size,
        )
    if any(not math.isfinite(x) for g in groups for r in g.responses for x in (*r.token_logprobs, *r.step_fci)):
        raise NonFiniteLoss(
            f"The policy's log-probs or FCI became non-finite (NaN/Inf) at iteration {iteration}: its weights diverged. "
            "The run stops here and keeps its last good checkpoint; lower optim.lr."
        )
    s.maybe_fail("score", iteration)
    scores = [x for g in groups for r in g.responses for x in r.step_fci[1:]]
    if not scores:
        return {}
    return {"fci/mean": sum(scores) / len(scores), "fci/max": max(scores)}
