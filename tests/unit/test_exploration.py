"""Difficulty-aware exploration (docs/method.md §5): expansion counts, response choice, the FCI filter."""

import doctest
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnrl_core.exploration as exploration
from attnrl_core.config import ExpansionConfig
from attnrl_core.errors import AttnRLError
from attnrl_core.exploration import (
    FCIRunningMean,
    PromptRollouts,
    choose_responses,
    expansion_count,
    plan_exploration,
    prompt_mean_fci,
    response_mean_fci,
)

G = 6
EASY = (1, 1, 1, 1, 1, 1)
HARD = (0, 0, 0, 0, 0, 0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- the expansion count n = G * exp(-acc) ---------------------------------------------------

# Worked by hand for G = 6 (exp values to 6 digits):
#   k  acc   exp(-acc)   6*exp(-acc)   ceil   round-half-up
#   0  0     1.000000    6.000000      6      6
#   1  1/6   0.846482    5.078890      6      5
#   2  1/3   0.716531    4.299187      5      4
#   3  1/2   0.606531    3.639184      4      4
#   4  2/3   0.513417    3.080502      4      3
#   5  5/6   0.434598    2.607589      3      3
#   6  1     0.367879    2.207277      3      2
TABLE_CEIL = [6, 6, 5, 4, 4, 3, 3]
TABLE_ROUND = [6, 5, 4, 4, 3, 3, 2]


@pytest.mark.parametrize("k", range(G + 1))
def test_expansion_count_table_g6(k):
    assert expansion_count(k / G, G, rounding="ceil") == TABLE_CEIL[k]
    assert expansion_count(k / G, G, rounding="round") == TABLE_ROUND[k]


def test_acc_zero_branches_all_g_for_both_roundings():
    for group in (1, 2, 6, 8, 16):
        assert expansion_count(0.0, group, rounding="ceil") == group
        assert expansion_count(0.0, group, rounding="round") == group


def test_uniform_mode_branches_all_g():
    assert [expansion_count(k / G, G, mode="uniform") for k in range(G + 1)] == [G] * (G + 1)


def test_half_up_and_half_even_agree_on_every_reachable_value():
    # The documented claim: G*exp(-k/G) is never an exact half, so Python's round() (half to
    # even) gives the same n as our floor(x + 1/2) for every group size one would use.
    for group in range(1, 129):
        for k in range(group + 1):
            x = group * math.exp(-k / group)
            assert expansion_count(k / group, group, rounding="round") == min(round(x), group)


def test_expansion_count_rejects_unknown_options():
    with pytest.raises(AttnRLError, match="expansion.rounding"):
        expansion_count(0.5, G, rounding="floor")
    with pytest.raises(AttnRLError, match="expansion.mode"):
        expansion_count(0.5, G, mode="linear")
    with pytest.raises(ValueError):
        expansion_count(1.5, G)


# --- which responses -------------------------------------------------------------------------


def test_easy_prompt_takes_the_first_n():
    assert choose_responses(EASY, 3, gen()) == [0, 1, 2]
    assert choose_responses(EASY, 0, gen()) == []


def test_hard_prompt_with_n_equal_g_takes_all():
    assert choose_responses(HARD, G, gen()) == list(range(G))


def test_acc_at_least_half_keeps_every_incorrect_and_fills_with_correct():
    rewards = (1, 0, 1, 1, 0, 1)  # acc 4/6: incorrect {1, 4}, ceil n = 4
    picked = choose_responses(rewards, 4, gen(3))
    assert len(picked) == 4 and picked == sorted(picked)
    assert {1, 4} <= set(picked)
    assert all(rewards[i] == 1 for i in set(picked) - {1, 4})


def test_acc_exactly_half_counts_as_at_least_half():
    rewards = (0, 1, 0, 1, 0, 1)  # acc 1/2: all 3 incorrect + 1 correct
    picked = choose_responses(rewards, 4, gen(1))
    assert {0, 2, 4} <= set(picked) and len(picked) == 4


def test_acc_below_half_keeps_every_correct_and_fills_with_incorrect():
    rewards = (0, 0, 1, 0, 1, 0)  # acc 2/6: correct {2, 4}, ceil n = 5
    picked = choose_responses(rewards, 5, gen(7))
    assert {2, 4} <= set(picked) and len(picked) == 5
    assert all(rewards[i] == 0 for i in set(picked) - {2, 4})


def test_fill_is_seeded_and_uses_the_generator():
    rewards = (1, 1, 1, 1, 1, 0)  # 1 incorrect kept, 2 of the 5 correct drawn
    assert choose_responses(rewards, 3, gen(5)) == choose_responses(rewards, 3, gen(5))
    draws = {tuple(choose_responses(rewards, 3, gen(s))) for s in range(40)}
    assert len(draws) > 1


def test_fill_is_uniform_over_the_pool():
    rewards = (1, 1, 1, 1, 1, 0)
    counts = [0] * 5
    g = gen(0)
    trials = 2000
    for _ in range(trials):
        for i in choose_responses(rewards, 3, g):
            if i < 5:
                counts[i] += 1
    # Each correct response is drawn with probability 2/5: 800 expected, sd ~ 22.
    assert all(abs(c - 800) < 120 for c in counts), counts


@settings(max_examples=200, deadline=None)
@given(
    rewards=st.lists(st.integers(0, 1), min_size=1, max_size=16),
    rounding=st.sampled_from(["ceil", "round"]),
    mode=st.sampled_from(["exp", "uniform"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_choice_properties(rewards, rounding, mode, seed):
    group = len(rewards)
    acc = sum(rewards) / group
    n = expansion_count(acc, group, rounding=rounding, mode=mode)
    picked = choose_responses(rewards, n, gen(seed))
    assert len(picked) == n == len(set(picked))
    assert picked == sorted(picked) and all(0 <= i < group for i in picked)
    correct = {i for i, r in enumerate(rewards) if r}
    incorrect = set(range(group)) - correct
    if correct and incorrect:
        # n >= size of the minority class for both roundings, so it is always kept whole.
        minority = incorrect if acc >= 0.5 else correct
        assert minority <= set(picked)
    if not incorrect:
        assert picked == list(range(n))


# --- mf --------------------------------------------------------------------------------------


def test_mf_is_a_mean_of_per_response_means():
    steps = [[0.0, 0.5], [0.0, 0.125, 0.25, 0.125]]
    assert response_mean_fci(steps[0]) == 0.25
    assert prompt_mean_fci(steps) == pytest.approx((0.25 + 0.125) / 2)
    flat = [s for r in steps for s in r]
    assert prompt_mean_fci(steps) != pytest.approx(sum(flat) / len(flat))  # 0.1875 vs 1/6


def test_mf_accepts_tensors_and_empty_responses():
    steps = [torch.tensor([0.0, 0.3, 0.3]), torch.tensor([])]
    assert prompt_mean_fci(steps) == pytest.approx((0.2 + 0.0) / 2)
    with pytest.raises(ValueError):
        prompt_mean_fci([])


# --- the running mean ------------------------------------------------------------------------


def test_running_mean_is_count_weighted_and_cumulative():
    m = FCIRunningMean()
    assert m.mean is None and m.count == 0
    m.update([0.1, 0.2, 0.3]).update([0.9])
    # (0.1 + 0.2 + 0.3 + 0.9) / 4 = 0.375, not the mean of batch means (0.2 + 0.9) / 2 = 0.55
    assert m.mean == pytest.approx(0.375) and m.count == 4
    m.update([])
    assert m.mean == pytest.approx(0.375) and m.count == 4


def test_running_mean_state_round_trips_exactly_through_json():
    m = FCIRunningMean().update([0.1, 1 / 3, math.pi / 7, 2.0 ** -40])
    state = json.loads(json.dumps(m.state_dict()))
    restored = FCIRunningMean.from_state_dict(state)
    assert restored == m and restored.mean == m.mean
    assert all(type(v) in (int, float) for v in m.state_dict().values())


@pytest.mark.parametrize(
    "state",
    [{}, {"total": 1.0}, {"total": 1.0, "count": -1}, {"total": 1.0, "count": 0},
     {"total": float("nan"), "count": 3}, {"total": 1.0, "count": 2.5}, None],
)
def test_running_mean_rejects_damaged_state(state):
    with pytest.raises(AttnRLError, match="running mean"):
        FCIRunningMean.from_state_dict(state)


def test_running_mean_rejects_non_finite_values():
    with pytest.raises(ValueError):
        FCIRunningMean().update([float("nan")])


# --- the whole plan --------------------------------------------------------------------------


def test_easy_prompts_are_judged_against_a_mean_that_includes_them():
    prompts = [PromptRollouts(EASY, mf=0.2), PromptRollouts(EASY, mf=0.4)]
    plan = plan_exploration(prompts, FCIRunningMean(), gen())
    # mean after update = 0.3: 0.4 > 0.3 is branched (first ceil(6/e) = 3), 0.2 is dropped
    assert plan.branch == [[], [0, 1, 2]]
    assert plan.running_mean.mean == pytest.approx(0.3)
    assert plan.counts.easy_prompts == 2 and plan.counts.easy_dropped == 1


def test_lone_easy_prompt_equals_the_mean_strict_drops_inclusive_keeps():
    prompts = [PromptRollouts(EASY, mf=0.25)]
    assert plan_exploration(prompts, FCIRunningMean(), gen()).branch == [[]]
    assert plan_exploration(prompts, FCIRunningMean(), gen(), ExpansionConfig(strict=False)).branch == [[0, 1, 2]]


def test_filter_off_branches_every_easy_prompt_but_still_updates_the_mean():
    prompts = [PromptRollouts(EASY, mf=0.0), PromptRollouts(EASY, mf=0.5)]
    plan = plan_exploration(prompts, FCIRunningMean(0.5, 1), gen(), ExpansionConfig(fci_filter=False))
    assert plan.branch == [[0, 1, 2], [0, 1, 2]]
    assert plan.counts.easy_dropped == 0
    assert plan.running_mean == FCIRunningMean(1.0, 3)


def test_round_rounding_and_uniform_mode_reach_the_plan():
    prompts = [PromptRollouts(EASY, mf=1.0), PromptRollouts((0, 1, 0, 0, 0, 0), mf=0.0)]
    base = FCIRunningMean(0.0, 5)
    assert [len(b) for b in plan_exploration(prompts, base, gen(), ExpansionConfig(rounding="round")).branch] == [2, 5]
    assert [len(b) for b in plan_exploration(prompts, base, gen(), ExpansionConfig(mode="uniform")).branch] == [6, 6]


def test_plan_is_pure_and_seeded():
    prompts = [
        PromptRollouts((1, 1, 0, 1, 1, 1), mf=0.3),
        PromptRollouts((0, 0, 1, 0, 0, 0), mf=0.1),
        PromptRollouts(EASY, mf=0.9),
        PromptRollouts(HARD, mf=0.2),
    ]
    start = FCIRunningMean(0.6, 3)
    a = plan_exploration(prompts, start, gen(11))
    b = plan_exploration(prompts, start, gen(11))
    assert a == b
    assert start == FCIRunningMean(0.6, 3)  # the caller's state is not touched
    assert a.running_mean == FCIRunningMean(1.5, 4)
    c = a.counts
    assert (c.prompts, c.easy_prompts, c.hard_prompts, c.mixed_prompts) == (4, 1, 1, 2)
    # acc 5/6 -> 3, acc 1/6 -> 6, easy 0.9 > 0.375 -> 3, hard -> 6
    assert [len(x) for x in a.branch] == [3, 6, 3, 6]
    assert c.branched_responses == 18
    assert c.fci_running_mean == pytest.approx(0.375) and c.fci_running_count == 4


def test_empty_batch():
    plan = plan_exploration([], FCIRunningMean(1.0, 2), gen())
    assert plan.branch == [] and plan.running_mean == FCIRunningMean(1.0, 2)
    assert plan.counts.branched_responses == 0


def test_plan_rejects_unknown_options():
    with pytest.raises(AttnRLError):
        plan_exploration([], FCIRunningMean(), gen(), ExpansionConfig.model_construct(rounding="nearest", mode="exp", fci_filter=True, strict=True))


def test_prompt_rollouts_validates_outcomes():
    assert PromptRollouts((True, False), mf=0.1).rewards == (1, 0)
    assert PromptRollouts((1.0, 0.0), mf=0.1).acc == 0.5
    with pytest.raises(ValueError):
        PromptRollouts((1, 0.5), mf=0.1)
    with pytest.raises(ValueError):
        PromptRollouts((), mf=0.1)
    with pytest.raises(ValueError):
        PromptRollouts((1,), mf=float("inf"))


def test_docstring_examples_hold():
    result = doctest.testmod(exploration)
    assert result.attempted > 0 and result.failed == 0
