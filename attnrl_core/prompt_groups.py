"""The batch's data model: prompt groups, their responses and continuation requests.

A `PromptGroup` is one prompt with its G initial responses. Scoring fills each response's step
spans, FCI, entropies and log-probs; planning (branch_plan.py) fills `branch_points`; the
continuations sampled from `prompt + response[:point]` are attached per point; ppo_samples.py
turns the groups into trees and PPO samples.

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

from attnrl_core.rollout import Generation


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
