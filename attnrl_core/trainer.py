"""The policy update: PPO over root-to-leaf paths (SPEC §8), with the torch backend.

A `PolicySample` is one training sequence: prompt + response tokens, the advantage of every
response token, and the behaviour log-probs known from sampling time. For a path that leaves
an initial response at branch point p, the first p response tokens keep the log-probs stored by
the scoring pass (they were sampled by that policy) and the continuation's are recomputed with
the current policy before the first optimizer step (SPEC §7: "prefix kept").

    sample = PolicySample(prompt_ids=[5, 6], response_ids=[7, 8, 9], advantages=[0.3, 0.3, -1.3],
                          stored_logprobs=[-0.2])        # response token 7 stored, 8 and 9 recomputed
    stats = trainer.update([sample], generator)          # one epoch, mini-batches, clipped PPO
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from attnrl_core.errors import AttnRLError
from attnrl_core.loss import ppo_loss


@dataclass
class PolicySample:
    prompt_ids: list[int]
    response_ids: list[int]
    advantages: list[float]
    stored_logprobs: list[float] = field(default_factory=list)  # behaviour log-probs of a response prefix


@dataclass
class UpdateStats:
    pg_loss: float
    kl: float
    entropy: float
    clip_frac_high: float
    clip_frac_low: float
    dual_clip_frac: float
    approx_kl: float
    grad_norm: float
    lr: float
    minibatches: int
    tokens: int


class NonFiniteLoss(AttnRLError):
    """The loss, gradient norm or weights became NaN/Inf: the run stops, the last checkpoint stays good."""


def response_logprobs(
    model: torch.nn.Module, samples: Sequence[PolicySample], pad_token_id: int, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-prob (and optionally entropy) of every response token under `model`.

    Returns logp (B, R), mask (B, R) and entropy (B, R) or None, R = longest response; rows are
    right-padded so positions need no shifting.
    """
    device = next(model.parameters()).device
    seqs = [s.prompt_ids + s.response_ids for s in samples]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, L)
    for b, seq in enumerate(seqs):
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (B, L, V)
    r_max = max(len(s.response_ids) for s in samples)
    prompt_len = torch.tensor([len(s.prompt_ids) for s in samples], device=device)  # (B,)
    resp_len = torch.tensor([len(s.response_ids) for s in samples], device=device)  # (B,)
    offsets = torch.arange(r_max, device=device)  # (R,)
    mask = offsets[None, :] < resp_len[:, None]  # (B, R)
    # logits at position t predict token t+1: response token i sits at prompt_len + i
    pred_pos = (prompt_len[:, None] - 1 + offsets[None, :]).clamp(max=width - 2)  # (B, R)
    token_pos = (pred_pos + 1).clamp(max=width - 1)  # (B, R)
    pred_logits = logits.gather(1, pred_pos[..., None].expand(-1, -1, logits.shape[-1]))  # (B, R, V)
    logp_all = torch.log_softmax(pred_logits, dim=-1)  # (B, R, V)
    targets = input_ids.gather(1, token_pos)  # (B, R)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]  # (B, R)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None  # (B, R)
    return logp, mask, entropy


class TorchTrainer:
    """AdamW + clipped PPO on a transformers causal LM (CPU or one GPU).

    The reference policy is the frozen initial policy (k3 KL, SPEC §8); it is only run when
    kl_coef > 0.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ref_model: torch.nn.Module | None,
        pad_token_id: int,
        lr: float,
        weight_decay: float = 0.01,
        grad_clip: float = 1.0,
        minibatch_sequences: int = 192,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        dual_clip: float = 3.0,
        kl_coef: float = 0.001,
        entropy_coef: float = 0.0,
    ) -> None:
        self.model, self.ref_model, self.pad_token_id = model, ref_model, pad_token_id
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.lr, self.grad_clip, self.minibatch_sequences = lr, grad_clip, minibatch_sequences
        self.loss_args = dict(clip_low=clip_low, clip_high=clip_high, dual_clip_c=dual_clip, kl_coef=kl_coef, entropy_coef=entropy_coef)
        if kl_coef > 0 and ref_model is None:
            raise ValueError("kl_coef > 0 needs a reference model")

    def _old_and_ref(self, samples: Sequence[PolicySample]) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Behaviour log-probs (stored prefix + current policy for the rest) and reference log-probs."""
        olds, refs = [], []
        with torch.no_grad():
            for start in range(0, len(samples), self.minibatch_sequences):
                chunk = samples[start : start + self.minibatch_sequences]
                current, _, _ = response_logprobs(self.model, chunk, self.pad_token_id)  # (b, R)
                ref = None
                if self.loss_args["kl_coef"] > 0:
                    ref, _, _ = response_logprobs(self.ref_model, chunk, self.pad_token_id)  # (b, R)
                for b, s in enumerate(chunk):
                    n = len(s.response_ids)
                    old = current[b, :n].clone()
                    k = len(s.stored_logprobs)
                    if k:
                        old[:k] = torch.tensor(s.stored_logprobs, dtype=old.dtype, device=old.device)
                    olds.append(old)
                    refs.append(None if ref is None else ref[b, :n].clone())
        return olds, refs

    def update(self, samples: Sequence[PolicySample], generator: torch.Generator) -> UpdateStats:
        """One epoch over `samples` in seeded random order, `minibatch_sequences` per step."""
        if not samples:
            raise ValueError("update needs at least one sample")
        self.model.train()
        olds, refs = self._old_and_ref(samples)
        order = torch.randperm(len(samples), generator=generator).tolist()
        totals: dict[str, float] = {}
        tokens = minibatches = 0
        grad_norms = []
        for start in range(0, len(order), self.minibatch_sequences):
            idx = order[start : start + self.minibatch_sequences]
            batch = [samples[i] for i in idx]
            logp, mask, entropy = response_logprobs(self.model, batch, self.pad_token_id, with_entropy=True)  # (b, R)
            r_max = logp.shape[1]

            def padded(rows: list[torch.Tensor]) -> torch.Tensor:
                out = torch.zeros((len(rows), r_max), dtype=logp.dtype, device=logp.device)  # (b, R)
                for b, row in enumerate(rows):
                    out[b, : len(row)] = row
                return out

            old = padded([olds[i] for i in idx])
            adv = padded([torch.tensor(samples[i].advantages, dtype=logp.dtype) for i in idx])
            ref = padded([refs[i] for i in idx]) if self.loss_args["kl_coef"] > 0 else None
            loss, stats = ppo_loss(logp, old, adv, mask, ref_logp=ref, entropy=entropy, **self.loss_args)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"The policy loss became {loss.item()} in mini-batch {minibatches} of this update; the run stops "
                    "here and keeps its last good checkpoint. Lower optim.lr or check the data for degenerate samples."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if not torch.isfinite(norm):
                raise NonFiniteLoss(f"The gradient norm became {norm.item()}; the run stops and keeps its last good checkpoint.")
            self.optimizer.step()
            grad_norms.append(norm.item())
            for name in ("pg_loss", "kl", "entropy", "clip_frac_high", "clip_frac_low", "dual_clip_frac", "approx_kl"):
                totals[name] = totals.get(name, 0.0) + float(getattr(stats, name)) * stats.tokens
            tokens += stats.tokens
            minibatches += 1
        self.model.eval()
        # a finite loss can still take a step that overflows the weights (a huge lr): stop here,
        # before this update is committed or checkpointed
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLoss(
                "The policy weights became non-finite (NaN/Inf) in this update; the run stops here and keeps its "
                "last good checkpoint. Lower optim.lr or optim.grad_clip."
            )
        means = {k: v / max(tokens, 1) for k, v in totals.items()}
        return UpdateStats(
            **means,
            grad_norm=math.fsum(grad_norms) / len(grad_norms),
            lr=self.lr,
            minibatches=minibatches,
            tokens=tokens,
        )

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
