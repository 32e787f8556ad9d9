"""Difficulty-aware exploration: which prompts get continuations, and from how many responses.

docs/method.md §5. Per prompt, from its G initial samples:

    acc = (# correct) / G
    mf  = mean over the G responses of the mean FCI over that response's steps

- acc == 1 ("easy"): branched only if mf > running mean of mf over every all-correct prompt seen
  so far (the release compares strictly; the paper writes >=). Otherwise the prompt gets no
  continuations and so contributes no training sample (an unbranched response is a path of
  length 1, never trained on).
- n = ceil(G * exp(-acc)) responses are branched (release; the paper rounds instead).
  acc == 0: all G. Mixed: if acc >= 0.5 all incorrect ones filled up with random correct ones,
  else all correct ones filled up with random incorrect ones. acc == 1: the first n.

Everything here is pure: inputs are never mutated, randomness comes from the torch.Generator
passed in, and the updated running mean is returned rather than written back. A retried task
that starts again from the same checkpoint therefore reaches the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from attnrl_core.config import ExpansionConfig
from attnrl_core.errors import AttnRLError

ROUNDINGS = ("ceil", "round")
MODES = ("exp", "uniform")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise AttnRLError(
            f"exploration option {name}={value!r} is not one of {', '.join(map(repr, allowed))}; "
            f"set {name} to one of them in the experiment config."
        )


def response_mean_fci(step_fci: Sequence[float] | torch.Tensor) -> float:
    """Mean FCI over one response's steps 1..T (zeroed steps included, prompt step excluded).

    The release slices the prompt step off before averaging (`attn_scores[:, 1:]`), so step 0
    is not part of this mean; the zeroed first response step and answer summary are. A response
    with no steps has no influential step at all: 0.0 (the release would produce NaN, which
    would poison the cumulative running mean forever).

    >>> response_mean_fci([0.0, 0.5, 0.25, 0.25])
    0.25
    >>> response_mean_fci([])
    0.0
    """
    scores = torch.as_tensor(step_fci, dtype=torch.float64).reshape(-1).tolist()  # (T,)
    if not scores:
        return 0.0
    # fsum: the mean must not depend on the reduction order of whatever device made the scores.
    return math.fsum(scores) / len(scores)


def prompt_mean_fci(step_fci_per_response: Sequence[Sequence[float] | torch.Tensor]) -> float:
    """mf of one prompt: the mean over its G responses of each response's mean step FCI.

    Responses have different step counts, so this is a mean of means, not a mean over all steps.

    >>> prompt_mean_fci([[0.0, 0.5], [0.0, 0.125, 0.25, 0.125]])  # (0.25 + 0.125) / 2
    0.1875
    """
    if len(step_fci_per_response) == 0:
        raise ValueError("prompt_mean_fci needs the step FCI of at least one response")
    per_response = [response_mean_fci(s) for s in step_fci_per_response]
    return math.fsum(per_response) / len(per_response)


def expansion_count(acc: float, group_size: int, rounding: str = "ceil", mode: str = "exp") -> int:
    """n, the number of a prompt's responses to branch: G * exp(-acc), rounded.

    rounding "ceil" is the release, "round" the paper. For "round" this uses round-half-up
    (floor(x + 1/2)), the reading of the paper's notation, not Python's round() (half-to-even).
    The two can never disagree here: acc = k/G is rational, so for k > 0 exp(-acc) is
    transcendental and G * exp(-acc) is never exactly a half-integer (k = 0 gives exactly G).
    Choosing half-up explicitly keeps the rule the same as adaptive_batch's paper rule, where
    exact halves do occur. mode "uniform" (ablation) branches all G whatever acc is.

    >>> [expansion_count(k / 6, 6) for k in range(7)]
    [6, 6, 5, 4, 4, 3, 3]
    >>> [expansion_count(k / 6, 6, rounding="round") for k in range(7)]
    [6, 5, 4, 4, 3, 3, 2]
    """
    _check_choice("expansion.rounding", rounding, ROUNDINGS)
    _check_choice("expansion.mode", mode, MODES)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"acc must lie in [0, 1], got {acc}")
    if mode == "uniform":
        return group_size
    expected = group_size * math.exp(-acc)
    n = math.ceil(expected) if rounding == "ceil" else math.floor(expected + 0.5)
    return min(n, group_size)


def choose_responses(rewards: Sequence[int], n: int, generator: torch.Generator) -> list[int]:
    """Indices (ascending) of the n responses of one prompt to branch from.

    All correct: the first n. Otherwise (acc = mean reward) the rarer outcome is always kept:
    acc >= 0.5 takes every incorrect response and fills up with correct ones drawn uniformly
    without replacement; acc < 0.5 takes every correct one and fills up with incorrect ones.
    acc == 0 therefore takes everything when n == G. The generator is only consumed when a
    random fill is needed.

    >>> choose_responses([1, 1, 1, 1, 1, 1], 3, torch.Generator().manual_seed(0))
    [0, 1, 2]
    >>> len(choose_responses([1, 1, 1, 1, 0, 0], 4, torch.Generator().manual_seed(0)))
    4
    """
    group_size = len(rewards)
    if not 0 <= n <= group_size:
        raise ValueError(f"n must lie in [0, {group_size}], got {n}")
    correct = [i for i, r in enumerate(rewards) if r == 1]
    incorrect = [i for i, r in enumerate(rewards) if r == 0]
    if len(correct) == group_size:
        return list(range(n))
    # The minority outcome is what makes a tree informative: keep it whole, sample the rest.
    if len(correct) * 2 >= group_size:
        kept, pool = incorrect, correct
    else:
        kept, pool = correct, incorrect
    fill = min(max(n - len(kept), 0), len(pool))
    picks = torch.randperm(len(pool), generator=generator)[:fill].tolist()  # (fill,)
    return sorted(kept + [pool[p] for p in picks])


class FCIRunningMean:
    """Cumulative, count-weighted mean of mf over every all-correct prompt since training began.

    Kept as a sum and a count so that the mean is exactly `total / count` and the state is two
    plain JSON numbers (a float's JSON text round-trips exactly). Empty at the start: `mean` is
    None until the first all-correct prompt is seen. The filter never reads an empty mean,
    because a batch's all-correct prompts are added before any of them is judged.

    >>> m = FCIRunningMean()
    >>> m.update([0.25, 0.5]).update([0.75]).mean
    0.5
    >>> FCIRunningMean.from_state_dict(m.state_dict()).mean
    0.5
    """

    def __init__(self, total: float = 0.0, count: int = 0) -> None:
        if count < 0 or (count == 0 and total != 0.0) or not math.isfinite(total):
            raise ValueError(f"invalid running-mean state total={total!r}, count={count!r}")
        self.total = float(total)
        self.count = int(count)

    @property
    def mean(self) -> float | None:
        return None if self.count == 0 else self.total / self.count

    def update(self, mf_values: Sequence[float]) -> "FCIRunningMean":
        """Add this batch's all-correct prompts' mf values; returns self for chaining."""
        values = [float(v) for v in mf_values]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"mf values must be finite, got {values}")
        self.total += math.fsum(values)
        self.count += len(values)
        return self

    def copy(self) -> "FCIRunningMean":
        return FCIRunningMean(self.total, self.count)

    def state_dict(self) -> dict[str, float | int]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        try:
            total, count = state["total"], state["count"]
        except (KeyError, TypeError):
            raise AttnRLError(
                "the FCI running mean in the checkpoint is malformed: expected a mapping with "
                f"'total' (float) and 'count' (int >= 0), got {state!r}. The checkpoint is damaged "
                "or from another version; resume from an earlier checkpoint."
            ) from None
        ok_types = isinstance(count, int) and not isinstance(count, bool) and isinstance(total, (int, float))
        if not ok_types or count < 0 or (count == 0 and total != 0) or not math.isfinite(total):
            raise AttnRLError(
                f"the FCI running mean in the checkpoint is invalid (total={total!r}, count={count!r}): "
                "count must be an int >= 0, total a finite number, and total 0 when count is 0. "
                "The checkpoint is damaged; resume from an earlier checkpoint."
            )
        self.total, self.count = float(total), int(count)

    @classmethod
    def from_state_dict(cls, state: dict) -> "FCIRunningMean":
        running = cls()
        running.load_state_dict(state)
        return running

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FCIRunningMean) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        return f"FCIRunningMean(total={self.total!r}, count={self.count!r})"


@dataclass(frozen=True)
class PromptRollouts:
    """One prompt's initial samples: their 0/1 outcomes (G of them) and the prompt's mf."""

    rewards: tuple[int, ...]
    mf: float

    def __post_init__(self) -> None:
        if len(self.rewards) == 0:
            raise ValueError("a prompt needs at least one initial sample")
        if any(float(r) not in (0.0, 1.0) for r in self.rewards):
            raise ValueError(f"rewards must be 0/1 outcomes, got {self.rewards!r}")
        rewards = tuple(int(r) for r in self.rewards)
        if not math.isfinite(self.mf):
            raise ValueError(f"mf must be finite, got {self.mf!r}")
        object.__setattr__(self, "rewards", rewards)

    @property
    def num_correct(self) -> int:
        return sum(self.rewards)

    @property
    def acc(self) -> float:
        return self.num_correct / len(self.rewards)

    @property
    def all_correct(self) -> bool:
        # Counting, not comparing a float to 1.0, so G = 3 with acc 0.999... can't slip through.
        return self.num_correct == len(self.rewards)


@dataclass(frozen=True)
class ExplorationCounts:
    """What the plan did, for logging (tree/ and fci/ metrics)."""

    prompts: int
    easy_prompts: int  # acc == 1
    easy_dropped: int  # acc == 1 and mf not above the running mean: no continuations
    hard_prompts: int  # acc == 0
    mixed_prompts: int  # 0 < acc < 1
    branched_responses: int  # sum over prompts of len(branch)
    fci_running_mean: float | None  # after this batch's update
    fci_running_count: int


@dataclass(frozen=True)
class ExplorationPlan:
    """Per prompt, the response indices to branch (ascending; empty = no continuations)."""

    branch: list[list[int]]
    running_mean: FCIRunningMean  # the updated state: store it, it belongs in the checkpoint
    counts: ExplorationCounts


def plan_exploration(
    prompts: Sequence[PromptRollouts],
    running_mean: FCIRunningMean,
    generator: torch.Generator,
    cfg: ExpansionConfig | None = None,
) -> ExplorationPlan:
    """Decide, for a batch of prompts, which responses to branch from (docs/method.md §5), with
    the expansion config section `cfg` (its defaults when None).

    Order of work, as in the release: (1) add the mf of this batch's all-correct prompts to a
    copy of the running mean; (2) an all-correct prompt is kept only if its mf > that mean
    (>= with cfg.strict=False, the paper's wording); `cfg.fci_filter=False` keeps every
    all-correct prompt (ablation "w/o FCI filter"), while the mean is still updated so the
    checkpointed state does not depend on the switch; (3) n = expansion_count(acc) responses
    are chosen by choose_responses. Because of (1), a lone all-correct prompt in the very first
    batch equals the mean and is dropped under the strict rule.

    Worked example (G = 6, running mean so far 0.25 over 2 prompts):

    >>> plan = plan_exploration(
    ...     [PromptRollouts((1, 1, 1, 1, 1, 1), mf=0.40),   # easy, above the mean -> first 3
    ...      PromptRollouts((1, 1, 1, 1, 1, 1), mf=0.10),   # easy, below the mean -> dropped
    ...      PromptRollouts((0, 0, 0, 0, 0, 0), mf=0.05),   # hard -> all 6
    ...      PromptRollouts((1, 0, 0, 0, 0, 0), mf=0.30)],  # acc 1/6 -> 6: everything
    ...     FCIRunningMean(total=0.5, count=2), torch.Generator().manual_seed(0))
    >>> plan.branch
    [[0, 1, 2], [], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    >>> plan.running_mean.mean  # (0.5 + 0.4 + 0.1) / 4
    0.25
    >>> plan.counts.easy_dropped, plan.counts.branched_responses
    (1, 15)
    """
    cfg = cfg or ExpansionConfig()
    fci_filter, filter_strict, rounding, mode = cfg.fci_filter, cfg.strict, cfg.rounding, cfg.mode
    _check_choice("expansion.rounding", rounding, ROUNDINGS)
    _check_choice("expansion.mode", mode, MODES)
    updated = running_mean.copy().update([p.mf for p in prompts if p.all_correct])
    threshold = updated.mean

    branch: list[list[int]] = []
    easy = easy_dropped = hard = 0
    for prompt in prompts:
        if prompt.all_correct:
            easy += 1
            # threshold is not None here: this prompt's own mf was just added.
            keep = not fci_filter or (prompt.mf > threshold if filter_strict else prompt.mf >= threshold)
            if not keep:
                easy_dropped += 1
                branch.append([])
                continue
        elif prompt.num_correct == 0:
            hard += 1
        n = expansion_count(prompt.acc, len(prompt.rewards), rounding=rounding, mode=mode)
        branch.append(choose_responses(prompt.rewards, n, generator))

    counts = ExplorationCounts(
        prompts=len(prompts),
        easy_prompts=easy,
        easy_dropped=easy_dropped,
        hard_prompts=hard,
        mixed_prompts=len(prompts) - easy - hard,
        branched_responses=sum(len(b) for b in branch),
        fci_running_mean=updated.mean,
        fci_running_count=updated.count,
    )
    return ExplorationPlan(branch=branch, running_mean=updated, counts=counts)
