"""Exactness of the streaming FCI pass against docs/method.md §2 computed from transformers' eager attention."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from attnrl_core.errors import AttnRLError
from attnrl_core.fci import (
    _forward_with_fci,
    accumulate_key_influence,
    row_groups,
    pool_key_influence,
    score,
    step_layout,
    token_logprobs_and_entropy,
)

VOCAB = 50
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a shared 2-core machine OpenMP threads only contend (~100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(arch="qwen2", hidden=32, heads=4, kv_heads=2, layers=2, seed=0):
    """A random fp32 policy; a large init range makes attention peaky so FCI values differ."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        initializer_range=0.3,
    )
    model = (Qwen2ForCausalLM(Qwen2Config(**kwargs)) if arch == "qwen2" else LlamaForCausalLM(LlamaConfig(**kwargs)))
    return model.eval()


def padded_batch(lengths, L, side, seed=0, step_len=(1, 5)):
    """Random ids, a (B, L) mask and random contiguous step spans covering each row's real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    spans = []
    for b, n in enumerate(lengths):
        first = L - n if side == "left" else 0
        mask[b, first : first + n] = 1
        ids[b, mask[b] == 0] = 0
        row, start = [], first
        while start < first + n:
            end = min(first + n, start + int(torch.randint(step_len[0], step_len[1] + 1, (1,), generator=g)))
            row.append((start, end))
            start = end
        spans.append(row)
    return ids, mask, spans


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def eager_attentions(model, ids, mask):
    """Per-layer (B, H, L, L) attention from transformers' own eager path."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(ids, attention_mask=mask, position_ids=positions(mask), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return out.attentions


def reference_fci(attentions, spans, delta, aggregate):
    """docs/method.md §2 written out plainly: alpha per layer/head, y = sum_{j >= k+delta} alpha[j, k], max/mean."""
    result = []
    for b, row in enumerate(spans):
        S = len(row)
        members = torch.zeros(attentions[0].shape[-1], S, dtype=torch.float64)  # (L, S) token in step
        for k, (start, end) in enumerate(row):
            members[start:end, k] = 1.0
        sizes = members.sum(0)  # (S,)
        per_head = []
        for A in attentions:
            for h in range(A.shape[1]):
                # alpha[j, k] = sum_{t in S_j} sum_{u in S_k} A[t, u] / (|S_j| |S_k|), via step one-hots
                alpha = members.T @ A[b, h].double() @ members / (sizes[:, None] * sizes[None, :])
                y = torch.tensor([alpha[k + delta :, k].sum() for k in range(S)], dtype=torch.float64)
                per_head.append(y)
        stacked = torch.stack(per_head)  # (layers*heads, S)
        result.append(stacked.max(0).values if aggregate == "max" else stacked.mean(0))
    return result


def assert_fci_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g.double(), w, atol=TOL, rtol=0)


SHAPES = [  # arch, hidden, heads, kv heads, layers
    ("qwen2", 32, 4, 2, 2),
    ("qwen2", 48, 6, 2, 3),
    ("qwen2", 32, 4, 1, 1),
    ("llama", 32, 4, 4, 2),
    ("llama", 64, 4, 2, 3),
]


@pytest.mark.parametrize("arch,hidden,heads,kv_heads,layers", SHAPES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_fci_matches_eager_reference(arch, hidden, heads, kv_heads, layers, side):
    model = tiny_model(arch, hidden, heads, kv_heads, layers)
    ids, mask, spans = padded_batch([23, 15, 9], 23, side, seed=hidden + heads)
    attentions = eager_attentions(model, ids, mask)
    for chunk in (None, 5, 1):  # 5 < L and does not divide 23
        for delta in (1, 4):
            got = score(model, ids, mask, spans, delta=delta, chunk_size=chunk)
            assert_fci_close(got.step_fci, reference_fci(attentions, spans, delta, "max"))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_mean_aggregate_matches_reference(arch):
    model = tiny_model(arch, 32, 4, 2, seed=3)
    ids, mask, spans = padded_batch([20, 13], 20, "left", seed=7)
    attentions = eager_attentions(model, ids, mask)
    for delta in (1, 4):
        got = score(model, ids, mask, spans, delta=delta, aggregate="mean", chunk_size=6)
        assert_fci_close(got.step_fci, reference_fci(attentions, spans, delta, "mean"))


def test_unit_steps_and_prompt_only_rows():
    model = tiny_model(seed=1)
    ids, mask, _ = padded_batch([12, 7], 12, "left", seed=2)
    # row 0: every token its own step; row 1: only the prompt step
    spans = [[(t, t + 1) for t in range(12)], [(5, 12)]]
    attentions = eager_attentions(model, ids, mask)
    got = score(model, ids, mask, spans, delta=1, chunk_size=4)
    assert_fci_close(got.step_fci, reference_fci(attentions, spans, 1, "max"))
    assert got.step_fci[1].tolist() == [0.0]  # empty sum
    assert got.step_fci[0][-1] == 0.0  # the last step has no later step


def test_docstring_worked_example():
    model = tiny_model(seed=4)
    ids = torch.tensor([[0, 0, 7, 3, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    got = score(model, ids, mask, [[(2, 3), (3, 5)]], delta=1)
    attentions = eager_attentions(model, ids, mask)
    want = max(float((A[0, h, 3, 2] + A[0, h, 4, 2]) / 2) for A in attentions for h in range(A.shape[1]))
    assert got.step_fci[0][0].item() == pytest.approx(want, abs=TOL)
    assert got.step_fci[0][1].item() == 0.0
    assert got.token_logprobs[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert got.token_entropy[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert got.token_logprobs[0, 3] < 0 and got.token_entropy[0, 3] > 0


def test_padding_does_not_change_scores():
    """A left- or right-padded row scores exactly like the same row alone (positions from the mask)."""
    model = tiny_model(seed=5)
    ids, mask, spans = padded_batch([18, 11], 18, "left", seed=9)
    batched = score(model, ids, mask, spans, chunk_size=7)
    first = 18 - 11
    alone_ids = ids[1:, first:]
    alone_spans = [[(s - first, e - first) for s, e in spans[1]]]
    alone = score(model, alone_ids, torch.ones_like(alone_ids), alone_spans)
    torch.testing.assert_close(batched.step_fci[1], alone.step_fci[0], atol=TOL, rtol=0)
    torch.testing.assert_close(batched.token_logprobs[1, first:], alone.token_logprobs[0], atol=TOL, rtol=0)
    torch.testing.assert_close(batched.token_entropy[1, first:], alone.token_entropy[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_logprobs_and_entropy_match_plain_forward(side):
    model = tiny_model(seed=6)
    ids, mask, spans = padded_batch([16, 10], 16, side, seed=11)
    got = score(model, ids, mask, spans)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions(mask)).logits
    logp = F.log_softmax(logits, dim=-1)
    for b in range(2):
        for t in range(16):
            if t > 0 and mask[b, t] and mask[b, t - 1]:
                want_lp = logp[b, t - 1, ids[b, t]].item()
                want_h = -(logp[b, t - 1].exp() * logp[b, t - 1]).sum().item()
            else:
                want_lp = want_h = 0.0
            assert got.token_logprobs[b, t].item() == pytest.approx(want_lp, abs=TOL)
            assert got.token_entropy[b, t].item() == pytest.approx(want_h, abs=TOL)


def test_logprob_blocks_do_not_matter():
    logits = torch.randn(2, 9, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 7, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    whole = token_logprobs_and_entropy(logits, ids, mask, block_rows=100)
    for rows in (1, 2, 5):
        parts = token_logprobs_and_entropy(logits, ids, mask, block_rows=rows)
        torch.testing.assert_close(parts[0], whole[0])
        torch.testing.assert_close(parts[1], whole[1])
    assert whole[0][1, :4].tolist() == [0.0] * 4 and whole[0][1, 4] != 0


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_unchanged_and_implementation_restored(arch, side):
    model = tiny_model(arch, 32, 4, 2, seed=8)
    ids, mask, spans = padded_batch([14, 9], 14, side, seed=12)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, position_ids=positions(mask)).logits
    layout = step_layout(spans, mask)
    logits, _ = _forward_with_fci(model, ids, mask, layout, "max", chunk_size=3)
    real = mask.bool()
    torch.testing.assert_close(logits[real], plain[real], atol=TOL, rtol=0)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        again = model(ids, attention_mask=mask, position_ids=positions(mask)).logits
    assert torch.equal(again, plain)


def test_half_precision_model_scores_close_to_fp32():
    """bf16 scores go through the fp32-softmax branch; they stay close to the fp32 reference."""
    model = tiny_model(seed=12)
    ids, mask, spans = padded_batch([16, 12], 16, "left", seed=13)
    want = reference_fci(eager_attentions(model, ids, mask), spans, 1, "max")
    got = score(model.to(torch.bfloat16), ids, mask, spans, delta=1, chunk_size=5)
    assert got.token_logprobs.dtype == torch.float32
    for g, w in zip(got.step_fci, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, atol=0.05, rtol=0.05)


def test_implementation_and_mode_restored_on_error():
    model = tiny_model(seed=9)
    model.set_attn_implementation("eager")
    model.train()
    ids = torch.tensor([[1, 2, VOCAB + 5]])  # out-of-vocabulary id: the embedding raises mid-forward
    with pytest.raises(IndexError):
        score(model, ids, torch.ones_like(ids), [[(0, 1), (1, 3)]])
    assert model.config._attn_implementation == "eager"
    assert model.training


def test_training_mode_restored_and_no_grad():
    model = tiny_model(seed=10).train()
    ids, mask, spans = padded_batch([10], 10, "left", seed=1)
    got = score(model, ids, mask, spans)
    assert model.training
    assert not got.step_fci[0].requires_grad and not got.token_logprobs.requires_grad


@pytest.mark.parametrize(
    "spans,mask,message",
    [
        ([[(0, 2), (3, 5)]], [[1, 1, 1, 1, 1]], "contiguous"),
        ([[(0, 2), (2, 4)]], [[1, 1, 1, 1, 1]], "cover every non-pad"),
        ([[(0, 5)]], [[0, 1, 1, 1, 1]], "should start at 1"),
        ([[(1, 1), (1, 5)]], [[0, 1, 1, 1, 1]], "non-empty"),
        ([[(0, 5)]], [[1, 1, 0, 1, 1]], "holes"),
        ([[(0, 5)], [(0, 5)]], [[1, 1, 1, 1, 1]], "one list"),
    ],
)
def test_bad_step_spans_are_user_errors(spans, mask, message):
    with pytest.raises(AttnRLError, match=message):
        step_layout(spans, torch.tensor(mask))


def test_bad_arguments_are_user_errors():
    model = tiny_model(seed=11)
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(AttnRLError, match="aggregate"):
        score(model, ids, torch.ones_like(ids), [[(0, 4)]], aggregate="median")
    with pytest.raises(AttnRLError, match="chunk_size"):
        score(model, ids, torch.ones_like(ids), [[(0, 4)]], chunk_size=0)
    with pytest.raises(AttnRLError, match="delta"):
        score(model, ids, torch.ones_like(ids), [[(0, 4)]], delta=-1)
    with pytest.raises(AttnRLError, match="delta"):
        score(model, ids, torch.ones_like(ids), [[(0, 4)]], delta=1.5)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                         sliding_window=2, layer_types=["sliding_attention"])
    with pytest.raises(AttnRLError, match="sliding window"):
        score(Qwen2ForCausalLM(config).eval(), ids, torch.ones_like(ids), [[(0, 4)]])


# ---- the pure step-level math on hand-made attention ------------------------------------------


def fci_of_matrix(A, spans, delta, rows=None):
    """Run the streaming sums over a hand-made (B, H, L, L) attention, `rows` query rows at a time."""
    B, H, L, _ = A.shape
    layout = step_layout(spans, torch.ones(B, L, dtype=torch.long), delta)
    z = torch.zeros(B, H, L)
    rows = rows or L
    for c0 in range(0, L, rows):
        c1 = min(c0 + rows, L)
        block = A[:, :, c0:c1, :c1]
        before = block.clone()
        accumulate_key_influence(block, row_groups(layout, c0, c1), z)
        assert torch.equal(block, before)  # the attention block is only read
    return pool_key_influence(z, layout)


def test_step_math_on_hand_made_attention():
    # 5 tokens, steps S0=[0,2) S1=[2,3) S2=[3,5); one head
    A = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0, 0.0],
            [0.2, 0.4, 0.4, 0.0, 0.0],
            [0.1, 0.1, 0.6, 0.2, 0.0],
            [0.3, 0.1, 0.2, 0.2, 0.2],
        ]
    )[None, None]
    spans = [[(0, 2), (2, 3), (3, 5)]]
    # alpha[1,0] = (.2+.4)/(1*2) = .3 ; alpha[2,0] = (.1+.1+.3+.1)/(2*2) = .15 ; alpha[2,1] = (.6+.2)/(2*1) = .4
    y1 = fci_of_matrix(A, spans, delta=1)
    torch.testing.assert_close(y1[0, 0], torch.tensor([0.3 + 0.15, 0.4, 0.0]))
    y2 = fci_of_matrix(A, spans, delta=2)
    torch.testing.assert_close(y2[0, 0], torch.tensor([0.15, 0.0, 0.0]))
    for rows in (1, 2, 3):
        torch.testing.assert_close(fci_of_matrix(A, spans, 1, rows), y1)


def test_layout_of_docstring_example():
    lay = step_layout([[(1, 2), (2, 4), (4, 5)]], torch.tensor([[0, 1, 1, 1, 1]]), delta=1)
    assert lay.row_weight.tolist() == [[0.0, 1.0, 0.5, 0.5, 1.0]]
    assert lay.row_key_end.tolist() == [[0, 0, 2, 2, 4]]
    assert lay.key_step.tolist() == [[3, 0, 1, 1, 2]]
    assert lay.step_scale.tolist() == [[1.0, 0.5, 1.0]]
    assert lay.num_steps == [3]


def test_row_groups_of_padded_blocks():
    lay = step_layout([[(1, 2), (2, 4), (4, 5)]], torch.tensor([[0, 1, 1, 1, 1]]), delta=1)
    whole = row_groups(lay, 0, 5)  # the pad row joins group 0 with weight 0
    assert whole.weight.tolist() == [[[0, 1, 0, 0, 0], [0, 0, 0.5, 0.5, 0], [0, 0, 0, 0, 1]]]
    assert whole.key_end.tolist() == [[0, 2, 4]] and whole.key_limit == 4
    tail = row_groups(lay, 2, 5)  # groups count from the block's first step
    assert tail.weight.tolist() == [[[0.5, 0.5, 0], [0, 0, 1]]]
    assert tail.key_end.tolist() == [[2, 4]] and tail.key_limit == 4
    pads = row_groups(lay, 0, 1)  # a block of padding only: nothing counts
    assert pads.weight.tolist() == [[[0.0]]] and pads.key_limit == 0


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 4), min_size=1, max_size=6),
    heads=st.integers(1, 3),
    delta=st.integers(0, 4),
    rows=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_streaming_sums_equal_formula_on_random_attention(cuts, heads, delta, rows, seed):
    L = sum(cuts)
    bounds = [0] + [sum(cuts[: i + 1]) for i in range(len(cuts))]
    spans = [[(bounds[i], bounds[i + 1]) for i in range(len(cuts))]]
    logits = torch.randn(1, heads, L, L, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    A = torch.softmax(logits.masked_fill(~causal, -math.inf), -1).float()
    got = fci_of_matrix(A, spans, delta, rows)  # (1, H, S)
    for h in range(heads):
        want = reference_fci([A[:, h : h + 1]], spans, delta, "max")[0]
        torch.testing.assert_close(got[0, h].double(), want, atol=1e-6, rtol=0)
