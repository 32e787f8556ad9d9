"""The policy loss: token-level PPO with clip-higher and dual clip, plus a k3 KL to the reference.

docs/method.md §8, written to match verl's `compute_policy_loss_vanilla` + `kl_penalty(low_var_kl)` +
`agg_loss(token-mean)`, which the release runs. Per valid token, with r = pi / pi_old:

    ratio = exp(clamp(logp - logp_old, -20, 20))
    pg    = max(-A * ratio, -A * clip(ratio, 1 - 0.2, 1 + 0.28))
    pg    = min(pg, -A * c)                  for A < 0 only (dual clip, c = 3)
    k3    = exp(ref - logp) - (ref - logp) - 1, with ref - logp clamped to [-20, 20] and k3 to
            [-10, 10] (verl clamps both; copied, so a token whose k3 exceeds 10 stops pulling)
    loss  = token_mean(pg) + kl_coef * token_mean(k3) - entropy_coef * token_mean(entropy)

token_mean = sum over every valid token of the mini-batch / their count (verl's "token-mean"):
long responses weigh more than short ones, each token counts once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnrl_core.errors import AttnRLError


@dataclass(frozen=True)
class LossStats:
    """Detached diagnostics of one ppo_loss call, as floats, averaged over its valid tokens."""

    pg_loss: float  # the clipped policy-gradient term
    kl: float  # token-mean k3 to the reference (0.0 without a reference)
    entropy: float  # token-mean entropy (0.0 when none is given)
    clip_frac_high: float  # A > 0 and ratio > 1 + clip_high: the upper clip binds
    clip_frac_low: float  # A < 0 and ratio < 1 - clip_low: the lower clip binds
    dual_clip_frac: float  # A < 0 and ratio > c: the dual clip binds
    approx_kl: float  # 0.5 * mean((logp - logp_old)^2), the k2 estimate of KL(pi_old || pi)
    tokens: int  # valid tokens in this call


def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, log_ratio_clamp: float = 20.0, kl_clamp: float = 10.0
) -> torch.Tensor:
    """Per-token k3 ("low_var_kl") estimate of KL(pi || pi_ref), clamped as verl does.

    k3 = exp(d) - d - 1 with d = ref_logp - logp; it is >= 0 and has low variance.

    >>> k3_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))  # d = 0 and d = 1: e - 2
    tensor([0.0000, 0.7183])
    """
    d = (ref_logp - logp).clamp(-log_ratio_clamp, log_ratio_clamp)  # (B, L)
    return (torch.exp(d) - d - 1).clamp(-kl_clamp, kl_clamp)  # (B, L)


def _check_settings(
    clip_low: float, clip_high: float, dual_clip_c: float, kl_coef: float, entropy_coef: float
) -> None:
    problems = []
    if not 0.0 <= clip_low < 1.0:
        problems.append(f"clip_low={clip_low!r} must lie in [0, 1)")
    if not clip_high >= 0.0:
        problems.append(f"clip_high={clip_high!r} must be >= 0")
    if not dual_clip_c > 1.0:
        problems.append(
            f"dual_clip_c={dual_clip_c!r} must be > 1 (it caps the loss of a negative-advantage token at c*|A|)"
        )
    if not kl_coef >= 0.0:
        problems.append(f"kl_coef={kl_coef!r} must be >= 0")
    if not entropy_coef >= 0.0:
        problems.append(f"entropy_coef={entropy_coef!r} must be >= 0")
    if problems:
        raise AttnRLError(
            "loss settings are invalid: " + "; ".join(problems) + ". Fix them in the experiment config."
        )


def ppo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip_c: float = 3.0,
    kl_coef: float = 0.001,
    entropy_coef: float = 0.0,
    log_ratio_clamp: float = 20.0,
    num_tokens: int | float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Token-mean PPO loss of one (micro-)batch; gradients reach `logp` (and `entropy` if its
    coefficient is non-zero) only: logp_old, advantages and ref_logp are constants.

    All tensors are (B, L) over response tokens; `mask` (bool or 0/1) marks the valid ones.
    Values under the mask are never read, so padding may hold anything, even inf or NaN.
    `ref_logp=None` is only allowed with kl_coef == 0, so a forgotten reference can't silently
    switch the KL penalty off. `num_tokens`: the divisor of the token mean; leave it None for
    the count of valid tokens here, or pass the mini-batch's count when it is split into
    micro-batches whose gradients are summed, so that their sum equals the mini-batch loss.

    Worked example (one sequence, four tokens, A = +1, +1, -1, -1):

    >>> logp_old = torch.zeros(1, 4)
    >>> logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 4.0]]))  # ratios
    >>> adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    >>> loss, stats = ppo_loss(logp, logp_old, adv, torch.ones(1, 4), kl_coef=0.0)
    >>> # -1.28 (upper clip), -0.5 (A > 0 is not clipped below), 0.8 (lower clip), 3 (dual clip)
    >>> round(loss.item(), 4), stats.clip_frac_high, stats.clip_frac_low, stats.dual_clip_frac
    (0.505, 0.25, 0.25, 0.25)
    """
    _check_settings(clip_low, clip_high, dual_clip_c, kl_coef, entropy_coef)
    named = {
        "logp_old": logp_old, "advantages": advantages, "mask": mask, "ref_logp": ref_logp, "entropy": entropy
    }
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but logp has {tuple(logp.shape)}")
    if ref_logp is None and kl_coef != 0.0:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp; pass kl_coef=0.0 to train without a KL penalty")

    if num_tokens is not None and not num_tokens > 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")

    valid = mask.bool()  # (B, L)
    count = valid.sum()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if num_tokens is None:
        denom = count.clamp(min=1)
    else:
        denom = torch.as_tensor(num_tokens, dtype=logp.dtype, device=logp.device)

    # Padding is replaced by zeros before any arithmetic, so every padded entry of every term
    # below is exactly 0 (ratio 1, A 0, k3 0). A NaN or inf left there would otherwise come
    # back as a NaN gradient (0 * NaN) into the model through the padded logits.
    logp_v = torch.where(valid, logp, zero)  # (B, L)
    old_v = torch.where(valid, logp_old.detach(), zero)  # (B, L)
    adv = torch.where(valid, advantages.detach(), zero)  # (B, L)

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return x.sum() / denom  # padded entries are exactly 0

    log_ratio = logp_v - old_v  # (B, L)
    ratio = torch.exp(log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))  # (B, L)
    pg_unclipped = -adv * ratio  # (B, L)
    pg_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # (B, L)
    pg_ppo = torch.maximum(pg_unclipped, pg_clipped)  # (B, L) the pessimistic (larger) loss
    pg_dual = torch.minimum(pg_ppo, -adv * dual_clip_c)  # (B, L) bounds how hard A < 0 pushes down
    pg = torch.where(adv < 0, pg_dual, pg_ppo)  # (B, L)
    pg_loss = token_mean(pg)
    loss = pg_loss

    kl_loss = zero
    if ref_logp is not None:
        ref_v = torch.where(valid, ref_logp.detach(), zero)  # (B, L)
        kl_loss = token_mean(k3_kl(logp_v, ref_v))
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl_loss

    entropy_mean = zero
    if entropy is not None:
        entropy_mean = token_mean(torch.where(valid, entropy, zero))
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * entropy_mean

    with torch.no_grad():
        n = count.clamp(min=1)
        positive, negative = adv > 0, adv < 0
        upper = (positive & (ratio > 1.0 + clip_high) & valid).sum() / n
        lower = (negative & (ratio < 1.0 - clip_low) & valid).sum() / n
        dual = (negative & (ratio > dual_clip_c) & valid).sum() / n
        approx_kl = 0.5 * (log_ratio**2).sum() / n  # log_ratio is 0 on padding
        # The stats use this call's own token count, whatever num_tokens is.
        scale = denom / n
        values = torch.stack(
            [pg_loss * scale, kl_loss * scale, entropy_mean * scale, upper, lower, dual, approx_kl]
        ).tolist()  # one device sync for all of them
    stats = LossStats(*values, tokens=int(count))
    return loss, stats
