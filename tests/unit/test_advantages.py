"""Advantage estimators: the registry, TreeRL via the tree, GRPO."""

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl_core import advantages
from attnrl_core.advantages import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    register_advantage_estimator,
)
from attnrl_core.errors import AttnRLError
from attnrl_core.tree import Continuation, InitialResponse, build_tree


def assert_close(got, want):
    """torch.testing.assert_close costs ~1 s on first use; this is all these tests need."""
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-6, atol=1e-6), (got, want)


def test_doctests_hold():
    assert doctest.testmod(advantages).failed == 0


def test_registry_names_every_estimator_and_rejects_unknown_ones():
    assert set(ADVANTAGE_ESTIMATORS) >= {"tree", "grpo"}
    assert get_advantage_estimator("grpo") is ADVANTAGE_ESTIMATORS["grpo"]
    with pytest.raises(AttnRLError, match="'gae'.*grpo.*tree"):
        get_advantage_estimator("gae")
    with pytest.raises(ValueError):
        register_advantage_estimator("tree", branches=True)(lambda responses: None)


def test_grpo_worked_example_uses_unbiased_std_and_eps():
    group = [InitialResponse([1] * n, r) for n, r in zip([3, 1, 2, 4, 1, 2], [1, 0, 0, 1, 1, 0])]
    out = ADVANTAGE_ESTIMATORS["grpo"](group)
    std = math.sqrt(6 * 0.25 / 5)  # unbiased: divide by G - 1 = 5 -> 0.5477
    expected = [(r - 0.5) / (std + 1e-6) for r in [1, 0, 0, 1, 1, 0]]
    assert not out.dropped and out.tree is None
    assert [round(s.advantages[0].item(), 4) for s in out.samples] == [0.9129, -0.9129, -0.9129, 0.9129, 0.9129, -0.9129]
    for s, response, adv in zip(out.samples, group, expected):
        assert torch.equal(s.token_ids, response.token_ids)
        assert_close(s.advantages, torch.full((len(response.token_ids),), adv))
    assert [s.response_index for s in out.samples] == list(range(6))
    # eps is an argument: a huge eps shrinks everything towards 0
    big = ADVANTAGE_ESTIMATORS["grpo"](group, eps=1e6)
    assert all(abs(s.advantages[0].item()) < 1e-6 for s in big.samples)


def test_grpo_drops_agreeing_groups_and_refuses_branches():
    assert ADVANTAGE_ESTIMATORS["grpo"]([InitialResponse([1], 1.0)] * 3).dropped
    assert ADVANTAGE_ESTIMATORS["grpo"]([InitialResponse([1], 0.0)] * 2).samples == []
    assert ADVANTAGE_ESTIMATORS["grpo"]([InitialResponse([1], 1.0)]).dropped  # G = 1
    branched = InitialResponse([1, 2], 1.0, [1], [[Continuation([3], 0.0)]])
    with pytest.raises(ValueError, match="tree"):
        ADVANTAGE_ESTIMATORS["grpo"]([branched, InitialResponse([1], 0.0)])


def test_tree_estimator_is_the_tree_formula():
    # docs/method.md §4 worked example through the registry
    group = [
        InitialResponse(list(range(10)), 1.0, [3, 7],
                        [[Continuation([1], 0.0), Continuation([2], 1.0)],
                         [Continuation([3], 1.0), Continuation([4], 1.0)]]),
        *[InitialResponse([9], 0.0)] * 3,
    ]
    out = ADVANTAGE_ESTIMATORS["tree"](group)
    reference = build_tree(group)
    assert not out.dropped and out.tree is not None and out.tree.root_value == pytest.approx(0.5)
    assert len(out.samples) == len(reference.samples) == 5
    for got, want in zip(out.samples, reference.samples):
        assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.advantages, want.advantages)
    original = [s for s in out.samples if s.branch_point is None][0]
    assert round(original.advantages[0].item(), 4) == 0.2683 and round(original.advantages[3].item(), 4) == 0.4041


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=12))
def test_grpo_properties(rewards):
    out = ADVANTAGE_ESTIMATORS["grpo"]([InitialResponse([7, 7], r) for r in rewards])
    assert out.dropped == (len(set(rewards)) == 1)
    if out.dropped:
        assert out.samples == []
        return
    advs = torch.tensor([s.advantages[0].item() for s in out.samples], dtype=torch.float64)
    assert abs(advs.sum().item()) < 1e-5  # centred on the group mean
    assert all((a > 0) == (r == 1.0) for a, r in zip(advs.tolist(), rewards))
    # normalised by the unbiased std: the advantages' own unbiased std is 1 (up to eps)
    assert advs.std().item() == pytest.approx(1.0, abs=1e-5)
