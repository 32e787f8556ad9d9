"""The synthetic worlds by name (config `data.world`): one interface over attnrl_core/data.py's
arithmetic world and attnrl_core/pivot_world.py.

    >>> from attnrl_core.config import DataConfig
    >>> world = world_for(DataConfig(world="pivot"))
    >>> world.name, world.phrases[3], world.problem_at(0, seed=0, levels=(1,)).pivotal_steps
    ('pivot', 'Let me plan: ', (3, 13, 14))
    >>> world_for(DataConfig()).step_kinds is None   # the arithmetic world labels no pivots
    True

A world gives: its problems (`problem_at`, `generate_problems`, `heldout_set`), the warm start's
demonstrations (`make_demonstration`, planted flaw included), the phrases its tiny tokenizer keeps
as single tokens, and -- where its pivotal steps are known by construction -- `step_kinds`
(problem text, step texts) -> a kind per step, with `pivotal_kinds` the ones that count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

from attnrl_core import data, pivot_world

WORLDS = ("arith", "pivot")


@dataclass(frozen=True)
class World:
    name: str
    phrases: tuple[str, ...]
    problem_at: Callable[..., data.Problem]  # (index, *, seed, levels, split) -> Problem
    generate_problems: Callable[..., list[data.Problem]]  # (n, levels, seed, split, *, start)
    heldout_set: Callable[..., list[data.Problem]]  # (n, levels, seed)
    make_demonstration: Callable[..., str]  # (problem, flaw, flaw_levels, *, rng)
    step_kinds: Callable[[str, Sequence[str]], list[str]] | None = None
    pivotal_kinds: frozenset[str] = frozenset()


ARITH = World(
    name="arith",
    phrases=data.PHRASES,
    problem_at=data.problem_at,
    generate_problems=data.generate_problems,
    heldout_set=data.heldout_set,
    make_demonstration=data.make_demonstration,
)


def pivot(knobs: pivot_world.PivotWorld = pivot_world.PivotWorld()) -> World:
    bind = lambda fn: functools.partial(fn, world=knobs)  # noqa: E731
    return World(
        name="pivot",
        phrases=pivot_world.PHRASES,
        problem_at=bind(pivot_world.problem_at),
        generate_problems=bind(pivot_world.generate_problems),
        heldout_set=bind(pivot_world.heldout_set),
        make_demonstration=bind(pivot_world.make_demonstration),
        step_kinds=pivot_world.step_kinds,
        pivotal_kinds=pivot_world.PIVOTAL_KINDS,
    )


def world_for(data_cfg) -> World:
    """The world the data config section names (`data.world`, knobs in `data.pivot`)."""
    name = getattr(data_cfg, "world", "arith")
    if name == "arith":
        return ARITH
    if name == "pivot":
        return pivot(pivot_world.PivotWorld.from_config(data_cfg.pivot))
    raise ValueError(f"unknown world {name!r}; choose one of {WORLDS}")
