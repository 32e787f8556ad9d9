"""Pivot hit rates: how often a criterion's branch points land on a step that matters.

A world that knows its pivotal steps by construction (attnrl_core/pivot_world.py) labels every
step of a response from the problem and the step's text (`step_kinds`). A branch point p
re-samples everything from token p on (docs/method.md §3), so it HITS the step whose text holds
token p, that step's separator excluded (re-sampling only the separator changes none of the
step). Per branched response (one that got at least one point):

    tree/pivot_hit_rate     share of branched responses with a point in a pivotal step
    tree/plan_hit_rate      share of branched responses with a point in a plan step
    tree/pivot_point_share  share of all branch points that are in a pivotal step
    tree/pivot_step_share   share of the branchable steps (2..T) that are pivotal: what uniform
                            random step starts would give per point (chance level)

Worked example: a 4-step response (token spans [0,3) [3,7) [7,9) [9,12), the separator "|" ending
each of the first three), steps 2 and 4 pivotal, points at 3 (the start of step 2) and 8 (the
separator of step 3: no hit) -> one of two points hits, the response counts as a hit:

    >>> texts = list("ab|cde|f|ghi")
    >>> hits = response_hits([3, 8], [(0, 3), (3, 7), (7, 9), (9, 12)], texts,
    ...                      ["open", "plan", "compute", "combine"], {"plan", "combine"}, separator="|")
    >>> hits
    ResponseHits(points=2, pivot_points=1, plan_points=1, pivot_steps=2, branchable_steps=3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Sequence

from attnrl_core.data import STEP_SEPARATOR


@dataclass(frozen=True)
class ResponseHits:
    points: int
    pivot_points: int  # points in a pivotal step
    plan_points: int  # points in a plan step
    pivot_steps: int  # pivotal steps among the branchable ones (2..T)
    branchable_steps: int


def _text_end(start: int, end: int, token_texts: Sequence[str], separator: str) -> int:
    """End of a step's own text: its span without the trailing separator token."""
    return end - 1 if end > start and separator in token_texts[end - 1] else end


def response_hits(
    points: Sequence[int],
    step_spans: Sequence[Sequence[int]],
    token_texts: Sequence[str],
    kinds: Sequence[str],
    pivotal_kinds: Collection[str],
    separator: str = STEP_SEPARATOR,
) -> ResponseHits:
    """Which of one response's branch points hit pivotal / plan steps (see the module example)."""
    pivot = plan = 0
    for p in points:
        for (start, end), kind in zip(step_spans, kinds):
            if start <= p < _text_end(start, end, token_texts, separator):
                pivot += kind in pivotal_kinds
                plan += kind == "plan"
                break
    branchable = kinds[1:]
    return ResponseHits(len(points), pivot, plan, sum(k in pivotal_kinds for k in branchable), len(branchable))


def step_texts(token_texts: Sequence[str], step_spans: Sequence[Sequence[int]], separator: str = STEP_SEPARATOR) -> list[str]:
    """Each step's text with its separator stripped (what a world's `step_kinds` reads).

    >>> step_texts(list("ab|cd"), [(0, 3), (3, 5)], separator="|")
    ['ab', 'cd']
    """
    out = []
    for start, end in step_spans:
        text = "".join(token_texts[start:end])
        out.append(text[: -len(separator)] if text.endswith(separator) else text)
    return out


def pivot_hit_rates(
    groups: Sequence,
    step_kinds: Callable[[str, Sequence[str]], list[str]],
    pivotal_kinds: Collection[str],
    vocab_texts: Sequence[str],
) -> dict[str, float]:
    """The tree/ metrics above over every response of `groups` (prompt_groups.PromptGroup, after
    planning: `branch_points` and the scoring pass's `step_spans` set) that has branch points;
    {} when none has. `step_kinds(problem text, step texts)` is the world's labeller.

    >>> from attnrl_core.prompt_groups import PromptGroup, Response
    >>> vocab = ["a", "b", "\\n\\n"]                 # token id -> text: "a\\n\\n" "b\\n\\n" "a"
    >>> resp = Response([0, 2, 1, 2, 0], [0.0] * 5, step_spans=[[0, 2], [2, 4], [4, 5]], branch_points=[2])
    >>> kinds = lambda problem, steps: ["plan" if s == "b" else "open" for s in steps]
    >>> pivot_hit_rates([PromptGroup("p", "x", "1", 1, [0], [resp])], kinds, {"plan"}, vocab)
    {'tree/pivot_hit_rate': 1.0, 'tree/plan_hit_rate': 1.0, 'tree/pivot_point_share': 1.0, 'tree/pivot_step_share': 0.5}
    """
    responses = hits = plan_hits = points = pivot_points = pivot_steps = branchable = 0
    for group in groups:
        for resp in group.responses:
            if not resp.branch_points:
                continue
            texts = [vocab_texts[t] if t < len(vocab_texts) else "" for t in resp.token_ids]
            kinds = step_kinds(group.problem, step_texts(texts, resp.step_spans))
            r = response_hits(resp.branch_points, resp.step_spans, texts, kinds, pivotal_kinds)
            responses += 1
            hits += r.pivot_points > 0
            plan_hits += r.plan_points > 0
            points += r.points
            pivot_points += r.pivot_points
            pivot_steps += r.pivot_steps
            branchable += r.branchable_steps
    if not responses:
        return {}
    return {
        "tree/pivot_hit_rate": hits / responses,
        "tree/plan_hit_rate": plan_hits / responses,
        "tree/pivot_point_share": pivot_points / max(points, 1),
        "tree/pivot_step_share": pivot_steps / max(branchable, 1),
    }
