"""Adaptive prompt batch size: keep the number of useful training sequences near its target.

docs/method.md §6. B_1 is the initial prompt batch. After step m-1, with B' the target number of training
sequences and B'' the number that survived zero-advantage filtering, lambda = 0.9:

    release: B_m = ceil( lambda*B_{m-1} + (1-lambda) * floor(B_{m-1} * B' / B'') )
    paper:   B_m = round( lambda*B_{m-1} + (1-lambda) * (B'/B'') * B_{m-1} )

Arithmetic is exact (fractions.Fraction, with lambda read as the decimal that was written, so
0.9 is 9/10). The release evaluates the same formula in floats, where a batch already on target
can creep up by one: 0.1*62.0 + (1 - 0.1)*62 == 62.00000000000001, whose ceil is 63 (47 of the
sizes 1..299 creep). That artefact is deliberately not reproduced. "round" is round-half-up
(floor(x + 1/2)), the usual meaning of the paper's notation; Python's round() sends 2.5 to 2.

B'' = 0 (nothing trainable last step) would divide by zero: the batch then grows by
`max_growth` (rounded like the rule). Every result is clamped to [min_prompts, max_prompts].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from attnrl_core.config import BatchConfig
from attnrl_core.errors import AttnRLError

RULES = ("release", "paper")


def _exact(x: float | int | Fraction) -> Fraction:
    # repr() of a float is the shortest decimal that round-trips: 0.9 -> "0.9" -> 9/10.
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def _check_settings(
    target_sequences: int, lam: float, rule: str, min_prompts: int, max_prompts: int, max_growth: float
) -> None:
    problems = []
    if rule not in RULES:
        problems.append(f"rule={rule!r} is not one of {RULES}")
    if not 0.0 <= lam <= 1.0:
        problems.append(f"lambda={lam!r} must lie in [0, 1]")
    if target_sequences < 1:
        problems.append(f"target_sequences={target_sequences!r} must be >= 1")
    if min_prompts < 1 or max_prompts < min_prompts:
        problems.append(
            f"the clamp [min_prompts={min_prompts!r}, max_prompts={max_prompts!r}] must satisfy 1 <= min <= max"
        )
    if not (math.isfinite(max_growth) and max_growth >= 1.0):
        problems.append(f"max_growth={max_growth!r} must be a finite number >= 1")
    if problems:
        raise AttnRLError(
            "adaptive batch settings are invalid: " + "; ".join(problems)
            + ". Fix them in the experiment config."
        )


def next_prompt_batch_size(
    prev_prompts: int,
    valid_sequences: int,
    target_sequences: int = 1920,
    lam: float = 0.9,
    rule: str = "release",
    min_prompts: int = 1,
    max_prompts: int = 256,
    max_growth: float = 2.0,
) -> int:
    """B_m from B_{m-1} = prev_prompts and B'' = valid_sequences (docs/method.md §6).

    Defaults: the paper-scale target 64*6*5 = 1920 and lambda 0.9; the clamp's upper end
    (4x the paper's 64 prompts) and max_growth 2 bound the cost of one step after a bad one.

    >>> next_prompt_batch_size(64, 960)                # ceil(57.6 + 0.1 * floor(128)) = ceil(70.4)
    71
    >>> next_prompt_batch_size(64, 960, rule="paper")  # round(57.6 + 0.1 * 2 * 64)
    70
    >>> next_prompt_batch_size(64, 1920)               # on target: unchanged
    64
    >>> next_prompt_batch_size(64, 0)                  # nothing trainable: grow by max_growth
    128
    """
    _check_settings(target_sequences, lam, rule, min_prompts, max_prompts, max_growth)
    if prev_prompts < 1:
        raise ValueError(f"prev_prompts must be >= 1, got {prev_prompts}")
    if valid_sequences < 0:
        raise ValueError(f"valid_sequences must be >= 0, got {valid_sequences}")

    lam_x = _exact(lam)
    if valid_sequences == 0:
        value = prev_prompts * _exact(max_growth)
    elif rule == "release":
        value = lam_x * prev_prompts + (1 - lam_x) * ((prev_prompts * target_sequences) // valid_sequences)
    else:
        ratio = Fraction(target_sequences, valid_sequences)
        value = lam_x * prev_prompts + (1 - lam_x) * ratio * prev_prompts
    new = math.ceil(value) if rule == "release" else math.floor(value + Fraction(1, 2))
    return min(max(new, min_prompts), max_prompts)


@dataclass
class AdaptiveBatchSize:
    """The prompt batch size across steps: B_1 = initial_prompts, then `update` after each step.

    Its state (the current B) is part of the checkpoint.

    >>> batch = AdaptiveBatchSize(initial_prompts=64)
    >>> batch.prompts, batch.update(valid_sequences=960), batch.update(valid_sequences=1920)
    (64, 71, 71)
    >>> batch.state_dict()
    {'prompts': 71}
    """

    initial_prompts: int = 64
    target_sequences: int = 1920
    lam: float = 0.9
    rule: str = "release"
    min_prompts: int = 1
    max_prompts: int = 256
    max_growth: float = 2.0
    prompts: int = field(init=False)

    def __post_init__(self) -> None:
        _check_settings(
            self.target_sequences, self.lam, self.rule, self.min_prompts, self.max_prompts, self.max_growth
        )
        if not self.min_prompts <= self.initial_prompts <= self.max_prompts:
            raise AttnRLError(
                f"adaptive batch: initial_prompts={self.initial_prompts!r} lies outside the clamp "
                f"[{self.min_prompts}, {self.max_prompts}]; widen the clamp or change the initial batch "
                "size in the experiment config."
            )
        self.prompts = self.initial_prompts

    @classmethod
    def from_config(cls, cfg: BatchConfig) -> "AdaptiveBatchSize":
        """The adaptive batch size of the `batch` config section (B_1, B', lambda, rule, clamps)."""
        return cls(cfg.prompts, cfg.target_sequences, cfg.smoothing, cfg.formula, cfg.min_prompts, cfg.max_prompts, cfg.max_growth)

    def update(self, valid_sequences: int) -> int:
        """Record last step's B'' and return the next prompt batch size."""
        self.prompts = next_prompt_batch_size(
            self.prompts,
            valid_sequences,
            target_sequences=self.target_sequences,
            lam=self.lam,
            rule=self.rule,
            min_prompts=self.min_prompts,
            max_prompts=self.max_prompts,
            max_growth=self.max_growth,
        )
        return self.prompts

    def state_dict(self) -> dict[str, int]:
        return {"prompts": self.prompts}

    def load_state_dict(self, state: dict) -> None:
        prompts = state.get("prompts") if isinstance(state, dict) else None
        if not isinstance(prompts, int) or isinstance(prompts, bool) or prompts < 1:
            raise AttnRLError(
                f"the adaptive batch state in the checkpoint is invalid: expected {{'prompts': int >= 1}}, "
                f"got {state!r}. The checkpoint is damaged; resume from an earlier checkpoint."
            )
        self.prompts = prompts


def valid_token_ratio(advantages: torch.Tensor, mask: torch.Tensor) -> float:
    """Tokens of sequences with any non-zero advantage / all tokens (both under the mask).

    >>> adv = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, -1.3, 0.0]])
    >>> mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    >>> valid_token_ratio(adv, mask)  # sequences 0 and 2: (2 + 3) / 8
    0.625
    """
    if advantages.shape != mask.shape or advantages.dim() != 2:
        raise ValueError(
            f"advantages and mask must both be (B, L), got {tuple(advantages.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    valid_seq = ((advantages != 0) & mask).any(dim=-1)  # (B,)
    tokens = mask.sum(dim=-1)  # (B,)
    total = int(tokens.sum())
    if total == 0:
        return 0.0
    return int(tokens[valid_seq].sum()) / total
