"""Adaptive prompt batch size and the valid-token ratio (docs/method.md §6)."""

import doctest
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnrl_core.adaptive_batch as adaptive_batch
from attnrl_core.adaptive_batch import AdaptiveBatchSize, next_prompt_batch_size, valid_token_ratio
from attnrl_core.errors import AttnRLError


# --- worked examples, by hand ----------------------------------------------------------------


def test_release_worked_example():
    # B=64, B'=1920, B''=960: floor(64*1920/960) = floor(128) = 128
    # 0.9*64 + 0.1*128 = 57.6 + 12.8 = 70.4 -> ceil 71
    assert next_prompt_batch_size(64, 960, target_sequences=1920, lam=0.9, rule="release") == 71


def test_paper_worked_example():
    # round(0.9*64 + 0.1*(1920/960)*64) = round(57.6 + 12.8) = round(70.4) = 70
    assert next_prompt_batch_size(64, 960, target_sequences=1920, lam=0.9, rule="paper") == 70


def test_release_floor_happens_before_the_mix():
    # B=50, B''=700: 50*1920/700 = 137.14... -> floor 137; 45 + 13.7 = 58.7 -> ceil 59
    assert next_prompt_batch_size(50, 700, rule="release") == 59
    # B=10, B''=1829: 19200/1829 = 10.497... -> floor 10; 9 + 1.0 = 10 exactly -> 10.
    # Mixing before flooring would give ceil(9 + 1.0497) = 11.
    assert next_prompt_batch_size(10, 1829, rule="release") == 10
    # paper: round(9 + 1.0497) = round(10.0497) = 10
    assert next_prompt_batch_size(10, 1829, rule="paper") == 10


def test_too_many_valid_sequences_shrinks_the_batch():
    # B''=2560: floor(64*1920/2560) = 48; 57.6 + 4.8 = 62.4 -> release 63, paper 62
    assert next_prompt_batch_size(64, 2560, rule="release") == 63
    assert next_prompt_batch_size(64, 2560, rule="paper") == 62


def test_on_target_is_a_fixed_point_without_float_creep():
    # The release evaluates `alpha * target + (1 - alpha) * B` in floats with alpha = 0.1: on
    # target at B = 62 that is 62.00000000000001 -> 63. Exact arithmetic keeps every B fixed.
    assert math.ceil(0.1 * float(62 * 1920 // 1920) + (1 - 0.1) * 62) == 63
    for b in range(1, 257):
        assert next_prompt_batch_size(b, 1920, rule="release") == b
        assert next_prompt_batch_size(b, 1920, rule="paper") == b


def test_paper_rounds_half_up():
    # B=2, B'=7, B''=2: 0.9*2 + 0.1*(7/2)*2 = 1.8 + 0.7 = 2.5 exactly -> 3 (Python's round gives 2)
    assert next_prompt_batch_size(2, 2, target_sequences=7, rule="paper") == 3
    assert round(2.5) == 2


def test_lambda_extremes():
    # lambda = 1: never moves; lambda = 0: jumps straight to floor(B*B'/B'')
    assert next_prompt_batch_size(64, 960, lam=1.0) == 64
    assert next_prompt_batch_size(64, 960, lam=0.0) == 128
    assert next_prompt_batch_size(64, 700, lam=0.0, rule="paper") == 176  # round(175.54)


# --- the guard and the clamps ----------------------------------------------------------------


def test_zero_valid_sequences_grows_by_max_growth():
    assert next_prompt_batch_size(64, 0) == 128  # 64 * 2.0
    assert next_prompt_batch_size(64, 0, max_growth=1.5) == 96
    assert next_prompt_batch_size(5, 0, max_growth=1.5) == 8  # ceil(7.5)
    assert next_prompt_batch_size(5, 0, max_growth=1.5, rule="paper") == 8  # half-up 7.5
    assert next_prompt_batch_size(3, 0, max_growth=1.1, rule="paper") == 3  # round(3.3)


def test_clamps():
    assert next_prompt_batch_size(64, 0, max_prompts=100) == 100
    assert next_prompt_batch_size(200, 10, max_prompts=256) == 256  # ratio 192 -> huge
    # B=1, B''=10**6: floor(1920/10**6) = 0; 0.9 -> ceil 1; a floor of 4 lifts it
    assert next_prompt_batch_size(1, 10**6) == 1
    assert next_prompt_batch_size(1, 10**6, min_prompts=4) == 4
    assert next_prompt_batch_size(8, 10**6, rule="paper", min_prompts=4) == 7  # round(7.2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rule": "ema"}, "rule"),
        ({"lam": 1.5}, "lambda"),
        ({"lam": -0.1}, "lambda"),
        ({"target_sequences": 0}, "target_sequences"),
        ({"min_prompts": 0}, "min_prompts"),
        ({"min_prompts": 10, "max_prompts": 5}, "max_prompts"),
        ({"max_growth": 0.5}, "max_growth"),
        ({"max_growth": float("inf")}, "max_growth"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(AttnRLError, match=field):
        next_prompt_batch_size(64, 960, **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError):
        next_prompt_batch_size(0, 960)
    with pytest.raises(ValueError):
        next_prompt_batch_size(64, -1)


@settings(max_examples=300, deadline=None)
@given(
    prev=st.integers(1, 512),
    valid=st.integers(0, 20000),
    more=st.integers(0, 5000),
    target=st.integers(1, 5000),
    lam=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    rule=st.sampled_from(["release", "paper"]),
)
def test_properties(prev, valid, more, target, lam, rule):
    kw = dict(target_sequences=target, lam=lam, rule=rule, min_prompts=1, max_prompts=1024)
    b = next_prompt_batch_size(prev, valid, **kw)
    assert 1 <= b <= 1024
    if valid > 0:
        # More valid sequences last step never asks for more prompts next step.
        assert next_prompt_batch_size(prev, valid + more, **kw) <= b
        # The new size lies between B_{m-1} and the un-smoothed target size (up to rounding).
        lo, hi = sorted((prev, prev * target / valid))
        assert math.floor(lo) - 1 <= b <= math.ceil(hi) + 1 or b == 1024


# --- the stateful wrapper --------------------------------------------------------------------


def test_state_follows_the_formula_and_round_trips():
    batch = AdaptiveBatchSize(initial_prompts=64, rule="release")
    assert batch.prompts == 64
    assert [batch.update(v) for v in (960, 960, 3840, 0)] == [71, 79, 75, 150]
    # 71: ceil(57.6 + 12.8); 79: floor(71*2) = 142 -> ceil(63.9 + 14.2) = ceil(78.1)
    # 75: floor(79/2) = 39 -> ceil(71.1 + 3.9) = 75; 150: 75 * 2.0
    state = json.loads(json.dumps(batch.state_dict()))
    other = AdaptiveBatchSize(initial_prompts=64, rule="release")
    other.load_state_dict(state)
    assert other.prompts == 150 and other.update(1920) == batch.update(1920) == 150


@pytest.mark.parametrize("state", [{}, {"prompts": 0}, {"prompts": 2.0}, {"prompts": True}, None])
def test_damaged_state_is_refused(state):
    with pytest.raises(AttnRLError, match="adaptive batch state"):
        AdaptiveBatchSize().load_state_dict(state)


def test_initial_outside_the_clamp_is_refused():
    with pytest.raises(AttnRLError, match="initial_prompts"):
        AdaptiveBatchSize(initial_prompts=64, max_prompts=32)


# --- valid-token ratio -----------------------------------------------------------------------


def test_valid_token_ratio_worked_example():
    adv = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, -1.3, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    assert valid_token_ratio(adv, mask) == 5 / 8


def test_valid_token_ratio_ignores_advantages_under_padding():
    adv = torch.tensor([[0.0, 0.0, 7.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert valid_token_ratio(adv, mask) == 3 / 5


def test_valid_token_ratio_edges():
    assert valid_token_ratio(torch.zeros(2, 3), torch.zeros(2, 3)) == 0.0
    assert valid_token_ratio(torch.ones(2, 3), torch.ones(2, 3)) == 1.0
    with pytest.raises(ValueError):
        valid_token_ratio(torch.ones(2, 3), torch.ones(3, 2))


def test_docstring_examples_hold():
    result = doctest.testmod(adaptive_batch)
    assert result.attempted > 0 and result.failed == 0
