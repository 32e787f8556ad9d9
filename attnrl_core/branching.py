"""Where to branch a response (docs/method.md §3): FCI zeroing rules and branch criteria by name.

A branch criterion looks at ONE response and returns the token positions (relative to the
response) where continuations start: the continuation prompt is prompt + response[:p], so the
token at p and everything after it is re-sampled. Every criterion has the same signature,

    criterion(view: ResponseView, *, num_points: int, generator=None, **its_params) -> list[int]

and returns at most num_points positions, sorted, unique, with 0 < p < len(response). Position
0 is never a point: a fork there is just another independent sample of the prompt, not a
branch, and would give the tree an empty first segment.

Criteria that pick STEP STARTS (fci, random, earliest) never pick the first response step
(its start is 0), so "step 1, 2, ..." below counts the eligible steps from the second
response step on; in the numbering of docs/method.md §1 (prompt = 0, response steps 1..T) these are steps 2, 3, ...
This is how the release indexes them too (its fill loop is `arange(1, step_nums)` over
response steps counted from 0).

    >>> view = ResponseView(prompt_len=5, step_spans=[(0, 10), (10, 20), (20, 30), (30, 40)],
    ...                     step_scores=torch.tensor([0.0, 0.0, 0.9, 0.1, 0.9]))
    >>> CRITERIA["fci"](view, num_points=2, rho=0.2, min_token_offset=0, min_token_gap=0)
    [10, 30]
    >>> CRITERIA["earliest"](view, num_points=2)
    [10, 20]

A criterion's parameters are fields of the `branch` config section of the same name: the
caller passes them with `criterion_params` (so a new criterion is one decorated function, and
a new parameter one BranchConfig field), never with defaults of its own.

    >>> from attnrl_core.config import BranchConfig
    >>> criterion_params(CRITERIA["fci"], BranchConfig(rho=0.3))
    {'num_points': 2, 'rho': 0.3, 'min_token_offset': 16, 'min_token_gap': 8}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attnrl_core.errors import AttnRLError

if TYPE_CHECKING:
    from attnrl_core.config import BranchConfig


def zero_fci_scores(
    step_scores: torch.Tensor,
    answer_step: int | None = None,
    *,
    zero_prompt: bool = True,
    zero_first_step: bool = True,
    zero_answer_summary: bool = True,
) -> torch.Tensor:
    """Apply docs/method.md §2's zeroing rules to one response's raw FCI; returns a new tensor.

    step_scores: (S,) raw FCI per step, index 0 = the prompt, 1..S-1 = response steps.
    answer_step: index (docs/method.md §1) of the step holding the last "</think>" (steps.answer_summary_step),
    or None when the response has none. The defaults are the release's (all three on): the
    prompt is not a branchable step, the first response step attends only to the prompt
    (its FCI mostly measures the question), and the answer summary restates earlier work.

    Example: raw [3., 2., 1., 5., 4.], answer_step=3 -> [0., 0., 1., 0., 0.];
    with zero_answer_summary=False -> [0., 0., 1., 5., 4.].
    """
    scores = step_scores.clone()  # (S,)
    if zero_prompt:
        scores[:1] = 0.0
    if zero_first_step:
        scores[1:2] = 0.0
    if zero_answer_summary and answer_step is not None:
        scores[answer_step:] = 0.0
    return scores


@dataclass(frozen=True)
class ResponseView:
    """Everything a branch criterion may look at for one response; fields a criterion does
    not use may be None.

    prompt_len: tokens of the prompt (chat template included, no padding).
    step_spans: response steps 1..T as [start, end) relative to the response (steps.split_steps);
        they tile the response, so its length is step_spans[-1][1].
    step_scores: (T+1,) FCI per step, index 0 = prompt, already zeroed (zero_fci_scores).
    token_entropies: (L,) full-distribution entropy of the policy at each response token.
    token_logprobs: (L,) log-prob of each sampled response token.
    token_texts: L decoded token texts (for EPTree's "answer"/"conclusion" mask).
    """

    prompt_len: int
    step_spans: Sequence[tuple[int, int]]
    step_scores: torch.Tensor | None = None
    token_entropies: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None
    token_texts: Sequence[str] | None = None
    max_length: int | None = None  # the response's token limit (data.max_response_tokens), None = none

    def __post_init__(self) -> None:
        spans = [tuple(span) for span in self.step_spans]
        expected_start = 0
        for start, end in spans:
            if start != expected_start or end <= start:
                raise ValueError(f"step_spans must tile the response with non-empty steps: {spans}")
            expected_start = end
        object.__setattr__(self, "step_spans", tuple(spans))
        length = self.length
        if self.step_scores is not None and self.step_scores.shape != (len(spans) + 1,):
            raise ValueError(
                f"step_scores has shape {tuple(self.step_scores.shape)}, expected ({len(spans) + 1},)"
                " (prompt + one per response step)"
            )
        for name in ("token_entropies", "token_logprobs", "token_texts"):
            value = getattr(self, name)
            if value is not None and len(value) != length:
                raise ValueError(f"{name} has {len(value)} entries for a response of {length} tokens")

    @property
    def length(self) -> int:
        return self.step_spans[-1][1] if self.step_spans else 0

    @property
    def branchable_step_starts(self) -> list[int]:
        """Starts of response steps 2..T (the first response step starts at 0: never a point)."""
        return [start for start, _ in self.step_spans[1:]]


BranchCriterion = Callable[..., list[int]]
CRITERIA: dict[str, BranchCriterion] = {}


def register_criterion(name: str) -> Callable[[BranchCriterion], BranchCriterion]:
    """Decorator: make a branch criterion available as `branch.criterion: <name>`."""

    def register(fn: BranchCriterion) -> BranchCriterion:
        if name in CRITERIA:
            raise ValueError(f"branch criterion {name!r} is already registered")
        CRITERIA[name] = fn
        return fn

    return register


def get_criterion(name: str) -> BranchCriterion:
    """The criterion registered as `name`; an unknown name is a config error for people."""
    if name not in CRITERIA:
        raise AttnRLError(
            f"branch.criterion is {name!r}, which is not a known branch criterion; "
            f"choose one of {sorted(CRITERIA)}."
        )
    return CRITERIA[name]


def criterion_params(criterion: BranchCriterion, cfg: "BranchConfig") -> dict:
    """The keyword arguments `criterion` takes from the branch config section: every keyword
    parameter named like a BranchConfig field (num_points always)."""
    names = inspect.signature(criterion).parameters
    return {name: getattr(cfg, name) for name in names if name in type(cfg).model_fields}


@register_criterion("fci")
def fci_points(
    view: ResponseView,
    *,
    num_points: int,
    generator: torch.Generator | None = None,
    rho: float,
    min_token_offset: int,
    min_token_gap: int,
) -> list[int]:
    """Attention-based tree branching (ATB): starts of the earliest high-FCI steps.

    threshold = quantile(s[1..T], 1 - rho) (linear interpolation); if it is 0 while some score
    is positive, the smallest positive score. Candidates = response steps 2..T with score >=
    threshold, in step order; take them earliest first while the step start is at least
    min_token_offset tokens into prompt+response and at least min_token_gap tokens from every
    point already taken (docs/method.md §3: distance between points). Too few: fill with the earliest
    steps 2, 3, ... not taken yet, WITHOUT the offset and gap rules (as the release fills).
    A response with fewer eligible steps than num_points gets fewer points (the release
    repeats points instead; a repeated point would only double its continuations).

    Differences from the release, kept on purpose: the release measures the gap from the END
    of the earlier chosen step to the start of the later one, and its offset counts left
    padding of the prompt too; the method (§3) measures point to point and from the real prompt start.

    Example (prompt_len 5, steps of 10 tokens starting 0,10,..,50, zeroed scores
    [0 | 0, .9, .1, .8, .2, .7]): threshold = quantile([0,.9,.1,.8,.2,.7], 0.8) = 0.8,
    candidates = steps 2 (start 10) and 4 (start 30) ->
      offset 0, gap 0   -> [10, 30]
      gap 25            -> 30 is 20 from 10: dropped; fill with step 3 -> [10, 20]
      offset 20         -> step 2 starts at 5+10 < 20: dropped; -> [30], fill -> [10, 30]
    """
    if view.step_scores is None:
        raise ValueError("the fci criterion needs view.step_scores")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho}")
    scores = view.step_scores[1:].double()  # (T,) response steps only
    chosen: list[int] = []
    if scores.numel() > 0:
        threshold = torch.quantile(scores, 1.0 - rho, interpolation="linear")
        if threshold == 0 and bool((scores > 0).any()):
            threshold = scores[scores > 0].min()
        for step_index in range(1, scores.numel()):  # 0-based over response steps; skips step 1
            if len(chosen) == num_points:
                break
            if scores[step_index] < threshold:
                continue
            start = view.step_spans[step_index][0]
            if view.prompt_len + start < min_token_offset:
                continue
            if any(abs(start - point) < min_token_gap for point in chosen):
                continue
            chosen.append(start)
    for start in view.branchable_step_starts:
        if len(chosen) >= num_points:
            break
        if start not in chosen:
            chosen.append(start)
    return sorted(chosen)


def _top_tokens(values: torch.Tensor, eligible: torch.Tensor, num_points: int) -> list[int]:
    """Positions of the num_points largest `values` among `eligible` ones, ties to the earliest."""
    positions = torch.nonzero(eligible).reshape(-1)  # (K,)
    order = torch.sort(values[positions], descending=True, stable=True).indices  # (K,)
    return sorted(positions[order[:num_points]].tolist())


@register_criterion("entropy")
def entropy_points(
    view: ResponseView, *, num_points: int, generator: torch.Generator | None = None
) -> list[int]:
    """TreeRL as the paper ran it: the num_points tokens of highest full-distribution entropy.

    Positions 1..L-2 are eligible: the release's top-k runs over all but the last token (a
    fork there would re-sample only the end); position 0 is excluded as for every criterion
    (the release's top-k could pick it).

    Example: entropies [9, 1, 5, 3, 5, 8] -> eligible 1..4 -> [2, 4] (the tie at 5 keeps both).
    """
    if view.token_entropies is None:
        raise ValueError("the entropy criterion needs view.token_entropies")
    eligible = torch.zeros(view.length, dtype=torch.bool)  # (L,)
    eligible[1 : view.length - 1] = True
    return _top_tokens(view.token_entropies, eligible, num_points)


@register_criterion("neglogp")
def neglogp_points(
    view: ResponseView,
    *,
    num_points: int,
    generator: torch.Generator | None = None,
    stop_words: Sequence[str] = ("answer", "conclusion"),
) -> list[int]:
    """TreeRL's EPTree: the num_points tokens with the largest -log p of the sampled token.

    EPTree's masks: no fork on a branch's first token (here: position 0); none AFTER the first
    token whose lower-cased text contains one of stop_words (that token itself stays
    eligible, as in EPTree); none at or past view.max_length (None: no limit), where no
    room is left to generate.

    Example: logprobs [-9, -1, -4, -2, -7, -8], texts ["a","b","c","The answer","d","e"]
    -> eligible 1..3 -> -log p = [1, 4, 2] -> [2, 3].
    """
    if view.token_logprobs is None:
        raise ValueError("the neglogp criterion needs view.token_logprobs")
    eligible = torch.ones(view.length, dtype=torch.bool)  # (L,)
    eligible[:1] = False
    if stop_words:
        if view.token_texts is None:
            raise ValueError("the neglogp criterion needs view.token_texts to apply its stop words")
        for position, text in enumerate(view.token_texts):
            if any(word in text.lower() for word in stop_words):
                eligible[position + 1 :] = False
                break
    if view.max_length is not None:
        eligible[view.max_length :] = False
    return _top_tokens(-view.token_logprobs, eligible, num_points)


@register_criterion("random")
def random_points(
    view: ResponseView, *, num_points: int, generator: torch.Generator | None = None
) -> list[int]:
    """num_points distinct step starts drawn uniformly from steps 2..T with `generator`.

    Example: 5 steps starting at 0, 10, 20, 30, 40 -> two of [10, 20, 30, 40], sorted.
    """
    if generator is None:
        raise ValueError("the random criterion needs a seeded torch.Generator")
    starts = view.branchable_step_starts
    picks = torch.randperm(len(starts), generator=generator)[:num_points]  # (<=N,)
    return sorted(starts[i] for i in picks.tolist())


@register_criterion("earliest")
def earliest_points(
    view: ResponseView, *, num_points: int, generator: torch.Generator | None = None
) -> list[int]:
    """The first num_points branchable step starts (no FCI): docs/method.md §3's "steps 1 and 2".

    Example: steps starting at 0, 10, 20, 30 -> [10, 20].
    """
    return view.branchable_step_starts[:num_points]
