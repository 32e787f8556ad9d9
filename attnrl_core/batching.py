"""Length-sorted passes: how a batch of variable-length sequences is cut for forward/backward.

A batch padded to its longest row spends much of its compute on padding when lengths vary (a
tiny-world PPO batch: 38% of the computed positions are real tokens). Sorting by length and
cutting passes of a bounded padded size keeps it small; the caller sums the passes' gradients,
each pass's loss divided by the whole batch's token count, so the step is the same.
"""

from __future__ import annotations

from typing import Sequence


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
