"""Tree sampling: a batch of prompt groups, their continuation requests, and their trees.

A `PromptGroup` is one prompt with its G initial responses. Scoring fills each response's step
spans, FCI, entropies and log-probs; exploration + a branch criterion fill `branch_points`; the
continuations sampled from `prompt + response[:point]` are attached per point; `tree_inputs`
turns the group into the tree module's input.

Worked example (one response of 6 tokens branched at 2 and 4, T = 2, length limit 8)::

    requests = continuation_requests([group], max_response_tokens=8)
    [(r.response, r.point, len(r.prefix_ids) - len(group.prompt_ids), r.budget) for r in requests]
    # -> [(0, 2, 2, 6), (0, 4, 4, 4)]   each prefix ends exactly at a step start; budget = 8 - point

Everything here is plain data: a batch serialises to JSON (`to_json` / `from_json`) so the
one-step pipeline's pending batch goes into the checkpoint and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from attnrl_core.advantages import get_advantage_estimator
from attnrl_core.branching import ResponseView, get_criterion
from attnrl_core.exploration import ExplorationCounts, FCIRunningMean, PromptRollouts, plan_exploration, prompt_mean_fci
from attnrl_core.rollout import Generation
from attnrl_core.trainer import PolicySample
from attnrl_core.tree import Continuation, InitialResponse, PromptTree


@dataclass
class Response:
    """One sampled response (or continuation: then `token_ids` holds only the NEW tokens)."""

    token_ids: list[int]
    behaviour_logprobs: list[float]  # log-prob of each token under the policy that sampled it
    reward: float = 0.0
    finished: bool = False  # ended with EOS
    # filled by scoring (initial responses only):
    step_spans: list[list[int]] = field(default_factory=list)  # [start, end) relative to the response
    step_fci: list[float] = field(default_factory=list)  # per response step, zeroing rules applied
    token_entropy: list[float] = field(default_factory=list)  # entropy of the distribution that chose token t
    token_logprobs: list[float] = field(default_factory=list)  # scoring pass: the PPO behaviour log-probs
    # filled by branching:
    branch_points: list[int] = field(default_factory=list)  # token positions (relative), ascending
    continuations: list[list["Response"]] = field(default_factory=list)  # [point][t]


@dataclass
class PromptGroup:
    problem_id: str
    problem: str
    answer: str
    level: int | None
    prompt_ids: list[int]
    responses: list[Response] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(r.reward for r in self.responses) / len(self.responses)


@dataclass(frozen=True)
class ContinuationRequest:
    group: int
    response: int
    point: int  # index into the response's branch_points
    prefix_ids: list[int]  # prompt + response[:branch point]
    budget: int  # new tokens allowed so that prefix + continuation respects the length limit


def response_from_generation(gen: Generation) -> Response:
    return Response(token_ids=list(gen.token_ids), behaviour_logprobs=list(gen.logprobs), finished=gen.finished)


def continuation_requests(groups: Sequence[PromptGroup], max_response_tokens: int) -> list[ContinuationRequest]:
    """One request per (group, response, branch point), in that order."""
    out = []
    for g, group in enumerate(groups):
        for r, resp in enumerate(group.responses):
            for k, point in enumerate(resp.branch_points):
                out.append(
                    ContinuationRequest(
                        group=g,
                        response=r,
                        point=k,
                        prefix_ids=group.prompt_ids + resp.token_ids[:point],
                        budget=max(0, max_response_tokens - point),
                    )
                )
    return out


def attach_continuations(
    groups: Sequence[PromptGroup], requests: Sequence[ContinuationRequest], generations: Sequence[Sequence[Generation]]
) -> list[Response]:
    """Store the T continuations of each request on its response; returns them flat (to verify)."""
    for group in groups:
        for resp in group.responses:
            resp.continuations = [[] for _ in resp.branch_points]
    flat = []
    for req, gens in zip(requests, generations, strict=True):
        conts = [response_from_generation(g) for g in gens]
        groups[req.group].responses[req.response].continuations[req.point] = conts
        flat.extend(conts)
    return flat


def continuation_targets(
    groups: Sequence[PromptGroup], requests: Sequence[ContinuationRequest]
) -> list[tuple[Response, list[int], str]]:
    """(continuation, its full response ids = original prefix + new tokens, the group's answer)
    for every attached continuation, in request order: what the verifier needs."""
    out = []
    for req in requests:
        group = groups[req.group]
        resp = group.responses[req.response]
        prefix = resp.token_ids[: resp.branch_points[req.point]]
        out.extend((c, prefix + c.token_ids, group.answer) for c in resp.continuations[req.point])
    return out


def tree_inputs(group: PromptGroup) -> list[InitialResponse]:
    """The group as the tree module's input (branched responses carry their continuations)."""
    return [
        InitialResponse(
            token_ids=resp.token_ids,
            reward=resp.reward,
            branch_points=resp.branch_points if resp.continuations else (),
            continuations=[[Continuation(c.token_ids, c.reward) for c in conts] for conts in resp.continuations],
        )
        for resp in group.responses
    ]


def to_json(groups: Sequence[PromptGroup]) -> list[dict]:
    return [asdict(g) for g in groups]


def _response_from_dict(d: dict) -> Response:
    d = dict(d)
    d["continuations"] = [[_response_from_dict(c) for c in conts] for conts in d.get("continuations", [])]
    return Response(**d)


def from_json(items: Sequence[dict]) -> list[PromptGroup]:
    out = []
    for d in items:
        d = dict(d)
        d["responses"] = [_response_from_dict(r) for r in d["responses"]]
        out.append(PromptGroup(**d))
    return out


@dataclass(frozen=True)
class BranchSettings:
    """The branching knobs of a run (config sections branch + expansion), as plain values."""

    criterion: str = "fci"
    num_points: int = 2
    rho: float = 0.2
    min_token_offset: int = 512
    min_token_gap: int = 512
    max_response_tokens: int | None = None
    fci_filter: bool = True
    filter_strict: bool = True
    rounding: str = "ceil"
    mode: str = "exp"


def _criterion_params(settings: BranchSettings) -> dict:
    if settings.criterion == "fci":
        return {"rho": settings.rho, "min_token_offset": settings.min_token_offset, "min_token_gap": settings.min_token_gap}
    if settings.criterion == "neglogp":
        return {"max_response_length": settings.max_response_tokens}
    return {}


def plan_branches(
    groups: Sequence[PromptGroup],
    running_mean: FCIRunningMean,
    settings: BranchSettings,
    generator: torch.Generator,
    vocab_texts: Sequence[str] = (),
) -> tuple[FCIRunningMean, ExplorationCounts]:
    """Difficulty-aware exploration (which responses, docs/method.md §5) + the criterion (where, docs/method.md §3).

    Sets `branch_points` on every response of `groups` (empty = not branched) and returns the
    updated running mean (the caller stores it) and the exploration counters.
    """
    rollouts = [
        PromptRollouts(tuple(int(r.reward) for r in g.responses), mf=prompt_mean_fci([r.step_fci[1:] for r in g.responses]))
        for g in groups
    ]
    plan = plan_exploration(
        rollouts,
        running_mean,
        generator,
        fci_filter=settings.fci_filter,
        filter_strict=settings.filter_strict,
        rounding=settings.rounding,
        mode=settings.mode,
    )
    criterion = get_criterion(settings.criterion)
    params = _criterion_params(settings)
    for group, chosen in zip(groups, plan.branch):
        for resp in group.responses:
            resp.branch_points = []
        for r in chosen:
            resp = group.responses[r]
            view = ResponseView(
                prompt_len=len(group.prompt_ids),
                step_spans=[tuple(s) for s in resp.step_spans],
                step_scores=torch.tensor(resp.step_fci, dtype=torch.float32),
                token_entropies=torch.tensor(resp.token_entropy, dtype=torch.float32),
                token_logprobs=torch.tensor(resp.token_logprobs, dtype=torch.float32),
                token_texts=[vocab_texts[t] if t < len(vocab_texts) else "" for t in resp.token_ids] if vocab_texts else None,
            )
            resp.branch_points = list(criterion(view, num_points=settings.num_points, generator=generator, **params))
    return plan.running_mean, plan.counts


@dataclass
class BatchSamples:
    samples: list[PolicySample]
    trees: list[PromptTree | None]  # per group (None for estimators without a tree)
    dropped: list[bool]  # per group: every leaf agreed, nothing to learn


def policy_samples(groups: Sequence[PromptGroup], estimator: str) -> BatchSamples:
    """Advantages per group (tree or grpo) turned into PPO samples with their stored log-probs.

    A path that leaves response r at branch point p keeps the scoring pass's log-probs of
    r's first p tokens; the continuation's are recomputed by the trainer.
    """
    estimate = get_advantage_estimator(estimator)
    samples, trees, dropped = [], [], []
    for group in groups:
        result = estimate(tree_inputs(group))
        trees.append(result.tree)
        dropped.append(result.dropped)
        for ts in result.samples:
            resp = group.responses[ts.response_index]
            stored = resp.token_logprobs if ts.branch_point is None else resp.token_logprobs[: ts.branch_point]
            samples.append(
                PolicySample(
                    prompt_ids=group.prompt_ids,
                    response_ids=ts.token_ids.tolist(),
                    advantages=ts.advantages.tolist(),
                    stored_logprobs=list(stored),
                )
            )
    return BatchSamples(samples=samples, trees=trees, dropped=dropped)
