"""One prompt's Monte-Carlo tree, its node values and TreeRL advantages (docs/method.md §4).

A branched response with points p1 < p2 becomes segments A=[0,p1), B=[p1,p2), C=[p2,end).
A's children are B and the continuations from p1; B's children are C and the continuations
from p2. Unbranched responses are single-segment leaves hanging off the root.

    V(node)   = mean reward of the leaves under it (a leaf: its reward r; the root: ALL leaves)
    adv(node) = [(V(node) - V(root)) + (V(node) - V(parent))] / sqrt(#leaves under node)

Training samples are the root-to-leaf paths of more than one node (in node order: per
response, the continuations from p1, then from p2, ..., then the response itself); each
token gets the advantage of the segment it lies in. The worked example of docs/method.md §4 (root 0.5; a correct response
branched at p1 -> {0, 1} and at p2 -> {1, 1}; three wrong unbranched responses):

    V(A) = 4/5 = 0.8    adv(A) = ((0.8-0.5) + (0.8-0.5)) / sqrt(5) = 0.2683
    V(B) = 3/3 = 1.0    adv(B) = ((1.0-0.5) + (1.0-0.8)) / sqrt(3) = 0.4041
    C (leaf, r=1)       adv(C) = ((1-0.5) + (1-1.0)) / sqrt(1)     = 0.5
    wrong from p1       adv    = ((0-0.5) + (0-0.8)) / sqrt(1)     = -1.3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Continuation:
    """One continuation sampled from a branch point: only its NEW tokens, and its reward."""

    token_ids: Sequence[int] | torch.Tensor
    reward: float

    def __post_init__(self) -> None:
        _check_reward(self.reward)
        object.__setattr__(self, "token_ids", torch.as_tensor(self.token_ids, dtype=torch.long).reshape(-1))


@dataclass(frozen=True)
class InitialResponse:
    """One of the G initial responses of a prompt, with its branches if it was branched.

    branch_points: strictly increasing, each 0 < p < len(token_ids) (branching.py's output).
    continuations[k]: the continuations generated from prompt + token_ids[:branch_points[k]].

    Example: InitialResponse([5, 6, 7, 8], 1.0, branch_points=[2],
             continuations=[[Continuation([9], 0.0), Continuation([9, 9], 1.0)]])
    """

    token_ids: Sequence[int] | torch.Tensor
    reward: float
    branch_points: Sequence[int] = ()
    continuations: Sequence[Sequence[Continuation]] = ()

    def __post_init__(self) -> None:
        _check_reward(self.reward)
        object.__setattr__(self, "token_ids", torch.as_tensor(self.token_ids, dtype=torch.long).reshape(-1))
        points = [int(p) for p in self.branch_points]
        object.__setattr__(self, "branch_points", tuple(points))
        if any(not 0 < p < len(self.token_ids) for p in points) or points != sorted(set(points)):
            raise ValueError(
                f"branch_points {points} must be strictly increasing and inside (0, {len(self.token_ids)})"
            )
        if len(self.continuations) != len(points):
            raise ValueError(f"{len(points)} branch points but {len(self.continuations)} continuation groups")
        for point, group in zip(points, self.continuations):
            if not group:
                raise ValueError(f"branch point {point} has no continuation")


def _check_reward(reward: float) -> None:
    if not 0.0 <= reward <= 1.0:
        raise ValueError(f"a leaf reward must lie in [0, 1], got {reward}")


@dataclass
class TreeNode:
    """A segment of one sampled sequence. nodes[0] of a PromptTree is the root (no tokens).

    start/end: the segment's token span in its sample's sequence (the initial response, or
    response[:branch_point] + continuation). branch_point/continuation_index are None for
    segments of the initial response itself.
    """

    parent: int | None
    response_index: int | None
    start: int
    end: int
    branch_point: int | None = None
    continuation_index: int | None = None
    reward: float | None = None  # leaves only
    children: list[int] = field(default_factory=list)
    leaves: int = 0
    reward_sum: float = 0.0
    value: float = 0.0
    advantage: float = 0.0  # the root's stays 0: it is never trained


@dataclass(frozen=True)
class TrainingSample:
    """One root-to-leaf path: the full response and one advantage per token.

    token_ids (L,) = initial response, or initial_response[:branch_point] + continuation.
    advantages (L,) float32: each token carries its segment's advantage. The origin says where
    the behaviour log-probs come from: branch_point None = the initial response itself;
    otherwise its first branch_point tokens are the initial response's, the rest are
    continuation `continuation_index` from that point.
    """

    token_ids: torch.Tensor
    advantages: torch.Tensor
    response_index: int
    branch_point: int | None = None
    continuation_index: int | None = None


@dataclass(frozen=True)
class PromptTree:
    """A prompt's tree: nodes (nodes[0] = root), training samples, and whether it was dropped
    (every leaf has the same reward, so every advantage would be 0: no samples)."""

    nodes: list[TreeNode]
    samples: list[TrainingSample]
    dropped: bool

    @property
    def root_value(self) -> float:
        return self.nodes[0].value

    @property
    def num_leaves(self) -> int:
        return self.nodes[0].leaves


def build_tree(responses: Sequence[InitialResponse]) -> PromptTree:
    """Build one prompt's tree from its G initial responses and their continuations.

    Example (values): responses [r=1 branched at p1 -> {0,1}, at p2 -> {1,1}; r=0; r=0; r=0]
    -> root value 0.5, V(A)=0.8, V(B)=1.0; samples: the initial response (A, B, C) and its
    four continuations; the three unbranched responses count in V(root) but give no sample.
    """
    nodes = [TreeNode(parent=None, response_index=None, start=0, end=0)]

    def add(node: TreeNode) -> int:
        nodes.append(node)
        nodes[node.parent].children.append(len(nodes) - 1)
        return len(nodes) - 1

    for i, response in enumerate(responses):
        cuts = [0, *response.branch_points, len(response.token_ids)]
        parent = 0
        for k in range(len(cuts) - 1):
            is_last = k == len(cuts) - 2
            segment = add(TreeNode(parent=parent, response_index=i, start=cuts[k], end=cuts[k + 1],
                                   reward=response.reward if is_last else None))
            if not is_last:
                # The continuations from p_{k+1} are the siblings of the segment after it.
                point = cuts[k + 1]
                for j, continuation in enumerate(response.continuations[k]):
                    add(TreeNode(parent=segment, response_index=i, start=point,
                                 end=point + len(continuation.token_ids), branch_point=point,
                                 continuation_index=j, reward=continuation.reward))
            parent = segment

    # Children come after their parents in `nodes`, so one backward sweep sums every subtree.
    for node in reversed(nodes):
        if node.reward is not None:
            node.leaves, node.reward_sum = 1, node.reward
        if node.parent is not None:
            nodes[node.parent].leaves += node.leaves
            nodes[node.parent].reward_sum += node.reward_sum
    for node in nodes:
        node.value = node.reward_sum / node.leaves if node.leaves else 0.0
    root_value = nodes[0].value
    for node in nodes[1:]:
        parent_value = nodes[node.parent].value
        node.advantage = ((node.value - root_value) + (node.value - parent_value)) / math.sqrt(node.leaves)

    leaf_rewards = {node.reward for node in nodes if node.reward is not None}
    if len(leaf_rewards) <= 1:
        return PromptTree(nodes=nodes, samples=[], dropped=True)
    samples = [
        _path_sample(nodes, index, responses)
        for index, node in enumerate(nodes)
        if node.reward is not None and node.parent != 0  # a path of one node is not trained
    ]
    return PromptTree(nodes=nodes, samples=samples, dropped=False)


def _path_sample(nodes: list[TreeNode], leaf: int, responses: Sequence[InitialResponse]) -> TrainingSample:
    """The training sample of the root-to-`leaf` path."""
    node = nodes[leaf]
    response = responses[node.response_index]
    if node.branch_point is None:
        token_ids = response.token_ids  # (L,)
    else:
        group = response.continuations[response.branch_points.index(node.branch_point)]
        new_tokens = group[node.continuation_index].token_ids
        token_ids = torch.cat([response.token_ids[: node.branch_point], new_tokens])  # (L,)
    advantages = torch.empty(token_ids.numel(), dtype=torch.float32)  # (L,)
    index = leaf
    while index != 0:
        segment = nodes[index]
        advantages[segment.start : segment.end] = segment.advantage
        index = segment.parent
    return TrainingSample(
        token_ids=token_ids,
        advantages=advantages,
        response_index=node.response_index,
        branch_point=node.branch_point,
        continuation_index=node.continuation_index,
    )
