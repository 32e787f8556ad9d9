"""The score phase: one policy forward per response gives log-probs, entropies and step FCI.

For every initial response of a batch of prompt groups this fills `step_spans` (docs/method.md §1),
`token_logprobs` (the PPO behaviour log-probs of the original tokens, docs/method.md §0), `token_entropy`
(for the entropy criterion) and `step_fci` (docs/method.md §2, zeroing rules applied: index 0 = prompt).
Rows are packed left-padded into micro-batches of similar length.

Example: a group with prompt [7, 8] and response [3, 10, 9] where 10 is the "\\n\\n" token gets
step_spans [[0, 2], [2, 3]] and step_fci of length 3 (prompt, step 1, step 2), the first two
zeroed by default.
"""

from __future__ import annotations

from typing import Sequence

import torch

from attnrl_core import fci
from attnrl_core.batching import pad_token_rows
from attnrl_core.branching import zero_fci_scores
from attnrl_core.config import FCIConfig
from attnrl_core.steps import absolute_step_spans, answer_summary_step, split_steps
from attnrl_core.prompt_groups import PromptGroup


def score_groups(
    model: torch.nn.Module,
    groups: Sequence[PromptGroup],
    sep_mask: torch.Tensor,
    vocab_texts: Sequence[str],
    pad_token_id: int,
    cfg: FCIConfig,
    micro_batch: int,
    passes: int | None = None,
) -> None:
    """Fill the scoring fields of every response of `groups` in place (re-running is idempotent);
    `cfg` is the fci config section (Delta, aggregate, chunk size, zeroing rules). `passes`:
    run at least that many forward passes, the extra ones on one pad token (a ZeRO-3 rank runs
    as many as its peers, since every forward gathers the weights with them)."""
    device = next(model.parameters()).device
    rows = [(group, resp) for group in groups for resp in group.responses]
    with torch.no_grad():
        for _ in range((passes or 0) - score_passes(groups, micro_batch)):
            model(input_ids=torch.full((1, 1), pad_token_id, device=device))
    # longest first: rows of a micro-batch have similar lengths, so little compute goes to padding
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0].prompt_ids) + len(rows[i][1].token_ids)))
    for start in range(0, len(order), micro_batch):
        chunk = [rows[i] for i in order[start : start + micro_batch]]
        seqs = [group.prompt_ids + resp.token_ids for group, resp in chunk]
        input_ids, attention_mask = pad_token_rows(seqs, pad_token_id, side="left")  # (B, L) each
        width = input_ids.shape[1]
        spans, relative = [], []
        for b, (group, resp) in enumerate(chunk):
            offset = width - len(seqs[b])
            steps = split_steps(torch.tensor(resp.token_ids, dtype=torch.long), sep_mask)
            relative.append(steps)
            spans.append(absolute_step_spans(len(group.prompt_ids), steps, offset=offset))
        result = fci.score(
            model, input_ids.to(device), attention_mask.to(device), spans, delta=cfg.delta, aggregate=cfg.aggregate, chunk_size=cfg.chunk_size
        )
        for b, (group, resp) in enumerate(chunk):
            first = width - len(resp.token_ids)  # absolute position of the first response token
            resp.step_spans = [list(s) for s in relative[b]]
            resp.token_logprobs = result.token_logprobs[b, first:].tolist()
            resp.token_entropy = result.token_entropy[b, first:].tolist()
            answer_step = answer_summary_step([vocab_texts[t] for t in resp.token_ids], relative[b])
            resp.step_fci = zero_fci_scores(
                result.step_fci[b].float().cpu(),
                answer_step,
                zero_prompt=cfg.zero_prompt,
                zero_first_step=cfg.zero_first_step,
                zero_answer_summary=cfg.zero_answer_summary,
            ).tolist()


def score_passes(groups: Sequence[PromptGroup], micro_batch: int) -> int:
    """How many forward passes `score_groups` runs on `groups`: one per micro-batch of responses."""
    return -(-sum(len(group.responses) for group in groups) // micro_batch)
