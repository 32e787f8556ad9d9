"""Tree, values and TreeRL advantages (docs/method.md §4)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl_core.tree import Continuation, InitialResponse, build_tree


def assert_close(got, want):
    """torch.testing.assert_close costs ~1 s on first use; this is all these tests need."""
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-6, atol=1e-6), (got, want)


def spec_example(unbranched_rewards=(0.0, 0.0, 0.0)):
    """docs/method.md §4: a correct response (10 tokens) branched at p1=3 -> {0, 1} and p2=7 -> {1, 1}."""
    branched = InitialResponse(
        token_ids=list(range(100, 110)),
        reward=1.0,
        branch_points=[3, 7],
        continuations=[
            [Continuation([1, 2], 0.0), Continuation([3, 4, 5], 1.0)],
            [Continuation([6], 1.0), Continuation([7, 8], 1.0)],
        ],
    )
    others = [InitialResponse([9, 9, 9, 9], r) for r in unbranched_rewards]
    return build_tree([branched, *others])


def node(tree, response_index, start, branch_point=None, continuation_index=None):
    (match,) = [
        n for n in tree.nodes[1:]
        if (n.response_index, n.start, n.branch_point, n.continuation_index)
        == (response_index, start, branch_point, continuation_index)
    ]
    return match


def sample(tree, branch_point=None, continuation_index=None):
    (match,) = [
        s for s in tree.samples
        if (s.response_index, s.branch_point, s.continuation_index) == (0, branch_point, continuation_index)
    ]
    return match


@pytest.mark.parametrize("unbranched", [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 0.0)])
def test_spec_worked_example_exactly(unbranched):
    # three wrong unbranched responses (8 leaves) or G=6 with one of five right (10 leaves):
    # either way half the leaves are correct, so V(root) = 0.5
    tree = spec_example(unbranched)
    assert tree.root_value == pytest.approx(0.5)
    assert tree.num_leaves == 5 + len(unbranched)
    a, b, c = node(tree, 0, 0), node(tree, 0, 3), node(tree, 0, 7)
    assert (a.leaves, b.leaves, c.leaves) == (5, 3, 1)
    assert a.value == pytest.approx(0.8) and b.value == pytest.approx(1.0) and c.value == 1.0
    # adv(A) = 2 * (0.8 - 0.5) / sqrt(5); its parent is the root
    assert a.advantage == pytest.approx(2 * (0.8 - 0.5) / math.sqrt(5))
    assert round(a.advantage, 4) == 0.2683
    # adv(B) = ((1 - 0.5) + (1 - 0.8)) / sqrt(3)
    assert b.advantage == pytest.approx((0.5 + 0.2) / math.sqrt(3))
    assert round(b.advantage, 4) == 0.4041
    # leaves divide by sqrt(1): C = (1 - 0.5) + (1 - 1.0)
    assert c.advantage == pytest.approx(0.5)
    wrong_p1 = node(tree, 0, 3, branch_point=3, continuation_index=0)
    assert wrong_p1.value == 0.0 and wrong_p1.advantage == pytest.approx(-1.3)
    right_p1 = node(tree, 0, 3, branch_point=3, continuation_index=1)
    assert right_p1.advantage == pytest.approx((1 - 0.5) + (1 - 0.8))
    for j in range(2):
        assert node(tree, 0, 7, branch_point=7, continuation_index=j).advantage == pytest.approx(0.5)


def test_spec_worked_example_samples_carry_per_token_advantages():
    tree = spec_example()
    adv_a, adv_b = 2 * 0.3 / math.sqrt(5), 0.7 / math.sqrt(3)
    assert not tree.dropped
    assert len(tree.samples) == 5  # unbranched responses are not trained
    original = sample(tree)
    assert original.token_ids.tolist() == list(range(100, 110))
    expected = torch.tensor([adv_a] * 3 + [adv_b] * 4 + [0.5] * 3)
    assert_close(original.advantages, expected)
    wrong = sample(tree, branch_point=3, continuation_index=0)
    assert wrong.token_ids.tolist() == [100, 101, 102, 1, 2]
    assert_close(wrong.advantages, torch.tensor([adv_a] * 3 + [-1.3] * 2))
    from_p2 = sample(tree, branch_point=7, continuation_index=1)
    assert from_p2.token_ids.tolist() == list(range(100, 107)) + [7, 8]
    assert_close(from_p2.advantages, torch.tensor([adv_a] * 3 + [adv_b] * 4 + [0.5] * 2))
    assert all(s.advantages.dtype == torch.float32 and s.token_ids.dtype == torch.long for s in tree.samples)


def test_one_branch_point_gives_two_segments():
    # r=0 response branched at 2 -> {1, 1}; one wrong unbranched: leaves 0,1,1,0 -> V(root)=0.5
    tree = build_tree([
        InitialResponse([1, 2, 3, 4], 0.0, [2], [[Continuation([5], 1.0), Continuation([6], 1.0)]]),
        InitialResponse([7, 8], 0.0),
    ])
    a, b = node(tree, 0, 0), node(tree, 0, 2)
    assert (a.leaves, b.leaves, b.parent) == (3, 1, tree.nodes.index(a))
    assert a.value == pytest.approx(2 / 3)
    assert a.advantage == pytest.approx(2 * (2 / 3 - 0.5) / math.sqrt(3))
    assert b.advantage == pytest.approx((0 - 0.5) + (0 - 2 / 3))
    assert len(tree.samples) == 3


def test_all_agreeing_leaves_drop_the_prompt():
    tree = build_tree([
        InitialResponse([1, 2, 3], 1.0, [1], [[Continuation([4], 1.0), Continuation([5], 1.0)]]),
        InitialResponse([1], 1.0),
    ])
    assert tree.dropped and tree.samples == [] and tree.root_value == 1.0
    assert all(n.advantage == 0.0 for n in tree.nodes)
    # mixed rewards but nothing branched: kept, yet no path longer than one node
    flat = build_tree([InitialResponse([1], 1.0), InitialResponse([2], 0.0)])
    assert not flat.dropped and flat.samples == []
    assert build_tree([]).dropped


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="strictly increasing"):
        InitialResponse([1, 2, 3], 1.0, [0], [[Continuation([1], 0.0)]])
    with pytest.raises(ValueError, match="strictly increasing"):
        InitialResponse([1, 2, 3], 1.0, [2, 1], [[Continuation([1], 0.0)]] * 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        InitialResponse([1, 2, 3], 1.0, [3], [[Continuation([1], 0.0)]])
    with pytest.raises(ValueError, match="continuation groups"):
        InitialResponse([1, 2, 3], 1.0, [1], [])
    with pytest.raises(ValueError, match="no continuation"):
        InitialResponse([1, 2, 3], 1.0, [1], [[]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Continuation([1], 2.0)


# --- properties ----------------------------------------------------------------------------


@st.composite
def prompt_groups(draw):
    responses = []
    for _ in range(draw(st.integers(1, 6))):
        length = draw(st.integers(1, 12))
        reward = draw(st.sampled_from([0.0, 1.0]))
        points = sorted(draw(st.sets(st.integers(1, max(1, length - 1)), max_size=3))) if length > 1 else []
        groups = [
            [Continuation(draw(st.lists(st.integers(0, 50), max_size=5)), draw(st.sampled_from([0.0, 1.0])))
             for _ in range(draw(st.integers(1, 3)))]
            for _ in points
        ]
        responses.append(InitialResponse(draw(st.lists(st.integers(0, 50), min_size=length, max_size=length)),
                                         reward, points, groups))
    return responses


@settings(max_examples=120, deadline=None)
@given(prompt_groups())
def test_tree_properties(responses):
    tree = build_tree(responses)
    nodes = tree.nodes
    # values are means of 0/1 rewards
    assert all(0.0 <= n.value <= 1.0 for n in nodes)
    # root leaves = unbranched responses + sum over branched ones of (1 + their continuations)
    expected_leaves = sum(1 + sum(len(g) for g in r.continuations) for r in responses)
    assert tree.num_leaves == expected_leaves
    for n in nodes:
        if n.children:
            assert n.leaves == sum(nodes[c].leaves for c in n.children)
    leaf_rewards = [n.reward for n in nodes if n.reward is not None]
    assert len(leaf_rewards) == expected_leaves
    assert tree.root_value == pytest.approx(sum(leaf_rewards) / len(leaf_rewards)) if leaf_rewards else True
    # dropping: exactly when all leaves agree
    agree = len(set(leaf_rewards)) <= 1
    assert tree.dropped == agree
    if agree:
        assert tree.samples == []
        return
    branched_leaves = sum(1 + sum(len(g) for g in r.continuations) for r in responses if r.branch_points)
    assert len(tree.samples) == branched_leaves
    for s in tree.samples:
        response = responses[s.response_index]
        assert s.advantages.shape == s.token_ids.shape
        # the path's segments tile the sample: every token has exactly one advantage
        (leaf,) = [i for i, n in enumerate(nodes) if n.reward is not None
                   and (n.response_index, n.branch_point, n.continuation_index)
                   == (s.response_index, s.branch_point, s.continuation_index)]
        path, index = [], leaf
        while index != 0:
            path.append(nodes[index])
            index = nodes[index].parent
        path.reverse()
        assert len(path) > 1 and path[0].start == 0 and path[-1].end == len(s.token_ids)
        assert all(x.end == y.start for x, y in zip(path, path[1:]))
        for segment in path:
            assert torch.all(s.advantages[segment.start:segment.end] == torch.tensor(segment.advantage))
        if s.branch_point is None:
            assert torch.equal(s.token_ids, response.token_ids)
        else:
            assert torch.equal(s.token_ids[: s.branch_point], response.token_ids[: s.branch_point])


def test_from_tokens_to_tree_through_steps_and_branching():
    """The glue the trainer runs: steps -> zeroed FCI -> ATB points -> tree samples."""
    from attnrl_core.branching import CRITERIA, ResponseView, zero_fci_scores
    from attnrl_core.steps import answer_summary_step, separator_mask_from_texts, split_steps

    vocab = ["x", "y", "\n\n", "</think>"]
    sep_mask, rule = separator_mask_from_texts(vocab)
    response = [0, 0, 2, 1, 1, 2, 0, 1, 2, 1, 0, 2, 3, 0]  # 5 steps; "</think>" in step 5
    spans = split_steps(response, sep_mask)
    assert rule == "\n\n" and spans == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 14)]
    answer_step = answer_summary_step([vocab[i] for i in response], spans)
    assert answer_step == 5
    raw = torch.tensor([7.0, 6.0, 0.5, 2.0, 1.0, 9.0])  # prompt + 5 steps, as FCI scoring returns
    scores = zero_fci_scores(raw, answer_step)  # -> [0, 0, .5, 2, 1, 0]
    view = ResponseView(prompt_len=4, step_spans=spans, step_scores=scores)
    points = CRITERIA["fci"](view, num_points=2, rho=0.2, min_token_offset=0, min_token_gap=0)
    # quantile([0, .5, 2, 1, 0], 0.8) = 1.2 -> step 3 (start 6); fill with step 2 (start 3)
    assert points == [3, 6]
    tree = build_tree([
        InitialResponse(response, 0.0, points, [[Continuation([1, 3], 1.0)] * 2, [Continuation([0], 0.0)] * 2]),
        InitialResponse([0, 3, 1], 1.0),
    ])
    assert tree.num_leaves == 6 and tree.root_value == pytest.approx(3 / 6)
    assert [len(s.token_ids) for s in tree.samples] == [5, 5, 7, 7, 14]
