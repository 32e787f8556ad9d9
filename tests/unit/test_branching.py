"""Branch points (docs/method.md §3): zeroing rules, the criterion registry, and each criterion."""

import doctest

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl_core import branching
from attnrl_core.branching import (
    CRITERIA,
    ResponseView,
    get_criterion,
    register_criterion,
    zero_fci_scores,
)
from attnrl_core.errors import AttnRLError


def steps_of(*lengths):
    spans, start = [], 0
    for n in lengths:
        spans.append((start, start + n))
        start += n
    return spans


def six_steps_view(scores):
    """prompt_len 5, six response steps of 10 tokens (starts 0, 10, ..., 50)."""
    return ResponseView(prompt_len=5, step_spans=steps_of(*[10] * 6), step_scores=torch.tensor(scores))


def test_doctests_hold():
    assert doctest.testmod(branching).failed == 0


def test_registry_has_every_criterion_and_names_unknown_ones():
    assert set(CRITERIA) >= {"fci", "entropy", "neglogp", "random", "earliest"}
    assert get_criterion("fci") is CRITERIA["fci"]
    with pytest.raises(AttnRLError, match="'fcii'.*earliest"):
        get_criterion("fcii")
    with pytest.raises(ValueError):
        register_criterion("fci")(lambda view, **kw: [])


# --- zeroing -------------------------------------------------------------------------------


def test_zeroing_rules_worked_example():
    raw = torch.tensor([3.0, 2.0, 1.0, 5.0, 4.0])
    assert zero_fci_scores(raw, answer_step=3).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert zero_fci_scores(raw, answer_step=None).tolist() == [0.0, 0.0, 1.0, 5.0, 4.0]
    assert zero_fci_scores(raw, 3, zero_answer_summary=False).tolist() == [0.0, 0.0, 1.0, 5.0, 4.0]
    assert zero_fci_scores(raw, 3, zero_prompt=False).tolist() == [3.0, 0.0, 1.0, 0.0, 0.0]
    assert zero_fci_scores(raw, 3, zero_first_step=False).tolist() == [0.0, 2.0, 1.0, 0.0, 0.0]
    assert raw.tolist() == [3.0, 2.0, 1.0, 5.0, 4.0]  # input untouched


# --- fci (ATB) ------------------------------------------------------------------------------


def test_fci_worked_example_from_docstring():
    view = six_steps_view([0, 0, 0.9, 0.1, 0.8, 0.2, 0.7])
    fci = CRITERIA["fci"]
    assert fci(view, num_points=2, rho=0.2, min_token_offset=0, min_token_gap=0) == [10, 30]
    # gap: 30 is only 20 tokens from 10; the fill (step 3, start 20) ignores the gap
    assert fci(view, num_points=2, rho=0.2, min_token_offset=0, min_token_gap=25) == [10, 20]
    # offset: step 2 starts 5 + 10 = 15 < 20 tokens in; the fill brings it back
    assert fci(view, num_points=2, rho=0.2, min_token_offset=20, min_token_gap=0) == [10, 30]
    assert fci(view, num_points=1, rho=0.2, min_token_offset=20, min_token_gap=0) == [30]
    assert fci(view, num_points=3, rho=0.2, min_token_offset=0, min_token_gap=0) == [10, 20, 30]


def test_fci_threshold_interpolates_linearly():
    # response scores [0, .5, .1, .3, .2]: sorted [0,.1,.2,.3,.5], q(0.8) at 3.2 -> 0.34
    view = ResponseView(prompt_len=0, step_spans=steps_of(4, 4, 4, 4, 4),
                        step_scores=torch.tensor([0, 0, 0.5, 0.1, 0.3, 0.2]))
    assert CRITERIA["fci"](view, num_points=1, rho=0.2, min_token_offset=0, min_token_gap=0) == [4]
    # rho = 0.5: q(0.5) = 0.2 -> candidates .5, .3, .2 (steps 2, 4, 5)
    assert CRITERIA["fci"](view, num_points=3, rho=0.5, min_token_offset=0, min_token_gap=0) == [4, 12, 16]


def test_fci_zero_threshold_uses_smallest_positive_score():
    # quantile is 0 (one positive score); without the rule every step would be a candidate
    view = six_steps_view([0, 0, 0, 0, 0, 0.4, 0])
    assert CRITERIA["fci"](view, num_points=1, rho=0.2, min_token_offset=0, min_token_gap=0) == [40]
    assert CRITERIA["fci"](view, num_points=2, rho=0.2, min_token_offset=0, min_token_gap=0) == [10, 40]


def test_fci_all_zero_scores_takes_the_earliest_steps():
    view = six_steps_view([0.0] * 7)
    assert CRITERIA["fci"](view, num_points=2, rho=0.2, min_token_offset=0, min_token_gap=15) == [10, 30]


def test_fci_first_response_step_is_never_a_point_and_short_responses_get_fewer():
    one_step = ResponseView(prompt_len=600, step_spans=[(0, 7)], step_scores=torch.tensor([0.0, 5.0]))
    assert CRITERIA["fci"](one_step, num_points=2, rho=0.2, min_token_offset=512, min_token_gap=512) == []
    two_steps = ResponseView(prompt_len=600, step_spans=[(0, 7), (7, 9)],
                             step_scores=torch.tensor([0.0, 5.0, 1.0]))
    assert CRITERIA["fci"](two_steps, num_points=2, rho=0.2, min_token_offset=512, min_token_gap=512) == [7]


def test_fci_paper_scale_defaults_apply_offset_and_gap_of_512():
    # prompt 100 tokens, steps of 200 tokens: starts 0, 200, ..., 1400; all high
    view = ResponseView(prompt_len=100, step_spans=steps_of(*[200] * 8),
                        step_scores=torch.tensor([0.0] + [1.0] * 8))
    # offset: start + 100 >= 512 -> first is 600; gap 512 from 600 -> 1200
    assert CRITERIA["fci"](view, num_points=2, rho=0.2, min_token_offset=512, min_token_gap=512) == [600, 1200]


# --- token criteria ------------------------------------------------------------------------


def test_entropy_top_tokens_worked_example():
    view = ResponseView(prompt_len=3, step_spans=[(0, 6)],
                        token_entropies=torch.tensor([9.0, 1.0, 5.0, 3.0, 5.0, 8.0]))
    # position 0 and the last token are not eligible; the 5.0 tie keeps both
    assert CRITERIA["entropy"](view, num_points=2) == [2, 4]
    assert CRITERIA["entropy"](view, num_points=1) == [2]  # tie -> earliest
    assert CRITERIA["entropy"](view, num_points=9) == [1, 2, 3, 4]


def test_neglogp_worked_example_with_eptree_masks():
    logprobs = torch.tensor([-9.0, -1.0, -4.0, -2.0, -7.0, -8.0])
    texts = ["a", "b", "c", "The Answer", "d", "e"]
    view = ResponseView(prompt_len=3, step_spans=[(0, 6)], token_logprobs=logprobs, token_texts=texts)
    neglogp = CRITERIA["neglogp"]
    assert neglogp(view, num_points=2) == [2, 3]  # nothing after "The Answer"; never position 0
    assert neglogp(view, num_points=2, stop_words=()) == [4, 5]
    assert neglogp(view, num_points=2, stop_words=("conclusion",)) == [4, 5]
    assert neglogp(replace(view, max_length=5), num_points=2, stop_words=()) == [2, 4]
    assert neglogp(replace(view, max_length=1), num_points=2, stop_words=()) == []
    with pytest.raises(ValueError, match="token_texts"):
        neglogp(ResponseView(prompt_len=3, step_spans=[(0, 6)], token_logprobs=logprobs), num_points=2)


# --- random, earliest ----------------------------------------------------------------------


def test_random_is_seeded_and_draws_step_starts():
    view = six_steps_view([0.0] * 7)
    draws = [CRITERIA["random"](view, num_points=2, generator=torch.Generator().manual_seed(s)) for s in range(30)]
    assert draws[0] == CRITERIA["random"](view, num_points=2, generator=torch.Generator().manual_seed(0))
    assert {p for d in draws for p in d} == {10, 20, 30, 40, 50}
    assert len({tuple(d) for d in draws}) > 1
    with pytest.raises(ValueError, match="Generator"):
        CRITERIA["random"](view, num_points=2)


def test_earliest_takes_steps_after_the_first():
    assert CRITERIA["earliest"](six_steps_view([0.0] * 7), num_points=2) == [10, 20]
    assert CRITERIA["earliest"](ResponseView(prompt_len=0, step_spans=[(0, 3)]), num_points=2) == []


def test_view_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="tile"):
        ResponseView(prompt_len=0, step_spans=[(0, 3), (4, 6)])
    with pytest.raises(ValueError, match="step_scores"):
        ResponseView(prompt_len=0, step_spans=[(0, 3)], step_scores=torch.zeros(3))
    with pytest.raises(ValueError, match="token_logprobs"):
        ResponseView(prompt_len=0, step_spans=[(0, 3)], token_logprobs=torch.zeros(2))


# --- properties ----------------------------------------------------------------------------


@st.composite
def response_views(draw):
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=8))
    spans = steps_of(*lengths)
    length = spans[-1][1]
    scores = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0]),
                           min_size=len(spans) + 1, max_size=len(spans) + 1))
    floats = st.floats(-8.0, 0.0, allow_nan=False)
    logprobs = draw(st.lists(floats, min_size=length, max_size=length))
    entropies = draw(st.lists(st.floats(0.0, 5.0), min_size=length, max_size=length))
    texts = draw(st.lists(st.sampled_from(["x", "y", "answer", "\n\n"]), min_size=length, max_size=length))
    return ResponseView(
        prompt_len=draw(st.integers(0, 40)),
        step_spans=spans,
        step_scores=zero_fci_scores(torch.tensor(scores)),
        token_entropies=torch.tensor(entropies),
        token_logprobs=torch.tensor(logprobs),
        token_texts=texts,
    )


@settings(max_examples=100, deadline=None)
@given(
    view=response_views(),
    name=st.sampled_from(sorted(["fci", "entropy", "neglogp", "random", "earliest"])),
    num_points=st.integers(0, 4),
    offset=st.integers(0, 30),
    gap=st.integers(0, 30),
    seed=st.integers(0, 2**16),
)
def test_points_are_sorted_unique_inside_and_at_step_starts(view, name, num_points, offset, gap, seed):
    params = {"rho": 0.2, "min_token_offset": offset, "min_token_gap": gap} if name == "fci" else {}
    points = CRITERIA[name](view, num_points=num_points, generator=torch.Generator().manual_seed(seed), **params)
    assert points == sorted(set(points))
    assert len(points) <= num_points
    assert all(0 < p < view.length for p in points)
    if name in ("fci", "random", "earliest"):
        assert set(points) <= set(view.branchable_step_starts)
        # step criteria always find num_points when the response has that many branchable steps
        assert len(points) == min(num_points, len(view.branchable_step_starts))
