"""Length-sorted passes: how a batch of variable-length sequences is cut for forward/backward,
and how the rows of a pass are padded into one (B, L) tensor (`pad_token_rows`).

A batch padded to its longest row spends much of its compute on padding when lengths vary (a
tiny-world PPO batch: 38% of the computed positions are real tokens). Sorting by length and
cutting passes of a bounded padded size keeps it small; the caller sums the passes' gradients,
each pass's loss divided by the whole batch's token count, so the step is the same.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch


def length_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Positions 0..n-1 grouped into passes of similar length, so that little compute goes to
    padding: longest first, a group grows while (rows x its longest row) stays within
    `token_budget` (a row longer than the budget goes alone); 0 = one group, in the given order.

    >>> length_micro_batches([5, 30, 8, 28, 6], token_budget=60)
    [[1, 3], [2, 4, 0]]
    >>> length_micro_batches([5, 30, 8], token_budget=0)
    [[0, 1, 2]]
    """
    if token_budget <= 0:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep their order
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def computed_positions(lengths: Sequence[int], token_budget: int) -> int:
    """Token positions a forward pass computes when `lengths` run as `length_micro_batches`:
    each pass costs its rows x its longest row (real tokens + padding).

    >>> computed_positions([5, 30, 8, 28, 6], token_budget=60), computed_positions([5, 30, 8, 28, 6], token_budget=0)
    (84, 150)
    """
    return sum(len(group) * max(lengths[i] for i in group) for group in length_micro_batches(lengths, token_budget))


def pad_token_rows(rows: Sequence[Sequence[int]], pad_value: int, side: Literal["left", "right"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one (B, L) long tensor, L = the longest row, and its (B, L) long
    attention mask (1 on a row's own tokens, 0 on padding). `side` is where the row's tokens
    sit: "right" pads after them (positions start at 0: training and scoring forwards), "left"
    pads before them (every row ends at L: prefill before decoding). Pad cells hold `pad_value`.

    >>> ids, mask = pad_token_rows([[5, 6, 7], [8]], pad_value=0)
    >>> ids
    tensor([[5, 6, 7],
            [8, 0, 0]])
    >>> mask
    tensor([[1, 1, 1],
            [1, 0, 0]])
    >>> pad_token_rows([[5, 6, 7], [8]], pad_value=-1, side="left")[0]
    tensor([[ 5,  6,  7],
            [-1, -1,  8]])
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
    for b, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[b, cols] = torch.tensor(row, dtype=torch.long)
        mask[b, cols] = 1
    return ids, mask


def balanced_shards(costs: Sequence[float], shards: int) -> list[list[int]]:
    """Positions 0..n-1 dealt to `shards` ranks so that their summed costs (token counts) come
    out close: longest-processing-time-first, each item to the least loaded rank so far (ties:
    the lower rank), each shard then in ascending position. Deterministic, so every rank and the
    flow compute the same deal.

    >>> balanced_shards([5, 30, 8, 28, 6], shards=2)  # loads 41 and 36
    [[0, 1, 4], [2, 3]]
    >>> balanced_shards([3, 3], shards=4)
    [[0], [1], [], []]
    """
    loads = [0.0] * shards
    out: list[list[int]] = [[] for _ in range(shards)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):  # stable: ties keep their order
        rank = min(range(shards), key=lambda r: loads[r])
        out[rank].append(i)
        loads[rank] += costs[i]
    return [sorted(shard) for shard in out]
