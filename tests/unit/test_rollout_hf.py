"""The "hf" rollout engine on a random tiny Qwen2 (vocab 50, width 32, 2 layers)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from attnrl_core.errors import AttnRLError
from attnrl_core.rollout import Generation, RolloutEngine, SamplingParams, make_engine, resolve_budgets, row_seed
from attnrl_core.rollout.hf import HFEngine, inverse_cdf_sample, sampling_logprobs

VOCAB = 50
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]  # different lengths -> left padding


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        # a wide init makes next-token distributions peaked, so greedy and EOS tests bite
        initializer_range=0.3,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    return tiny_qwen2(0)


def tokens(out: list[list[Generation]]) -> list[list[list[int]]]:
    return [[g.token_ids for g in per_prompt] for per_prompt in out]


def teacher_forced_logits(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """Logits predicting each generated token, from one unbatched forward pass."""
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]  # (P+G, V)
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]  # (G, V)


# --- sampling math --------------------------------------------------------------------------


def test_sampling_logprobs_worked_example_top_p_and_top_k():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    top_p = sampling_logprobs(probs.log(), temperature=1.0, top_p=0.7).exp()
    assert torch.allclose(top_p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]), atol=1e-6)
    top_k = sampling_logprobs(probs.log(), temperature=1.0, top_k=1).exp()
    assert torch.allclose(top_k, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    top_k2 = sampling_logprobs(probs.log(), temperature=1.0, top_k=2).exp()
    assert torch.allclose(top_k2, torch.tensor([[0.625, 0.375, 0.0, 0.0]]), atol=1e-6)


def test_sampling_logprobs_temperature_and_greedy():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    # temperature 0.5 doubles the logits: softmax([4, 2, 0])
    expected = torch.log_softmax(torch.tensor([[4.0, 2.0, 0.0]]), dim=-1)
    assert torch.allclose(sampling_logprobs(logits, temperature=0.5), expected)
    # greedy reports the untempered policy log-prob
    assert torch.allclose(sampling_logprobs(logits, temperature=0.0), torch.log_softmax(logits, dim=-1))
    # at temperature 1, no top-k/p, it is the policy's log-prob
    assert torch.allclose(sampling_logprobs(logits), torch.log_softmax(logits, dim=-1))


def test_top_p_keeps_the_most_likely_token_even_below_the_mass():
    probs = torch.tensor([[0.9, 0.05, 0.05]])
    assert torch.allclose(sampling_logprobs(probs.log(), top_p=0.01).exp(), torch.tensor([[1.0, 0.0, 0.0]]))


def test_inverse_cdf_sample_intervals():
    probs = torch.tensor([[0.2, 0.0, 0.8]] * 4)
    u = torch.tensor([0.0, 0.1999, 0.2, 0.9999999])
    assert inverse_cdf_sample(probs, u).tolist() == [0, 0, 2, 2]


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.sampled_from([0.0, 0.0, 1e-6, 0.3, 1.0, 7.0]), min_size=1, max_size=12).filter(
        lambda w: sum(w) > 0
    ),
    u=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_inverse_cdf_sample_never_picks_a_zero_probability_token(weights, u):
    probs = torch.tensor([weights], dtype=torch.float32)
    index = int(inverse_cdf_sample(probs, torch.tensor([u]))[0])
    assert 0 <= index < len(weights) and weights[index] > 0


def test_row_seeds_are_distinct_and_stable():
    seeds = {row_seed(s, i, j) for s in range(3) for i in range(20) for j in range(8)}
    assert len(seeds) == 3 * 20 * 8
    assert row_seed(7, 3, 2) == row_seed(7, 3, 2) and 0 <= row_seed(7, 3, 2) < 2**63


# --- the engine -----------------------------------------------------------------------------


def test_make_engine_builds_an_hf_engine_that_fits_the_protocol(model):
    engine = make_engine("hf", model=model, eos_token_id=3)
    assert isinstance(engine, HFEngine) and isinstance(engine, RolloutEngine)
    with pytest.raises(AttnRLError, match="Unknown rollout engine"):
        make_engine("sglang")


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    engine = HFEngine(model, eos_token_id=None)
    params = SamplingParams(n=3, max_new_tokens=12)
    a = engine.generate(PROMPTS, params, seed=11)
    b = engine.generate(PROMPTS, params, seed=11)
    c = engine.generate(PROMPTS, params, seed=12)
    assert tokens(a) == tokens(b)
    assert [[g.logprobs for g in p] for p in a] == [[g.logprobs for g in p] for p in b]
    assert tokens(a) != tokens(c)
    # the n samples of one prompt are different draws, not copies
    assert len({tuple(t) for t in tokens(a)[0]}) > 1


def test_left_padded_batch_equals_unpadded_one_by_one(model):
    params = SamplingParams(n=2, max_new_tokens=10)
    one_by_one = HFEngine(model, max_batch_size=1).generate(PROMPTS, params, seed=5)  # one row, no padding
    batched = HFEngine(model, max_batch_size=64).generate(PROMPTS, params, seed=5)  # 6 rows, padded to 7
    odd = HFEngine(model, max_batch_size=4).generate(PROMPTS, params, seed=5)  # a prompt split across micro-batches
    assert tokens(one_by_one) == tokens(batched) == tokens(odd)
    for p, q in zip(one_by_one, batched):
        for g, h in zip(p, q):
            assert max(abs(x - y) for x, y in zip(g.logprobs, h.logprobs)) < 1e-5


def test_greedy_equals_argmax_decoding_without_cache(model):
    engine = HFEngine(model, max_batch_size=64)
    out = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_new_tokens=8), seed=0)
    for prompt, per_prompt in zip(PROMPTS, out):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        expected = ids[len(prompt) :]
        assert [g.token_ids for g in per_prompt] == [expected, expected]
        logits = teacher_forced_logits(model, prompt, expected)  # (8, V)
        reference = torch.log_softmax(logits, -1).gather(-1, torch.tensor(expected)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(per_prompt[0].logprobs), reference, atol=1e-4)


def test_behaviour_logprobs_equal_teacher_forced_policy_logprobs(model):
    engine = HFEngine(model, max_batch_size=64)
    out = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=16), seed=3)
    for prompt, per_prompt in zip(PROMPTS, out):
        for g in per_prompt:
            logits = teacher_forced_logits(model, prompt, g.token_ids)  # (G, V)
            reference = torch.log_softmax(logits, -1).gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(g.logprobs), reference, atol=1e-4)


def test_behaviour_logprobs_follow_temperature_top_k_top_p(model):
    params = SamplingParams(n=4, temperature=0.7, top_k=6, top_p=0.8, max_new_tokens=10)
    out = HFEngine(model).generate(PROMPTS, params, seed=9)
    for prompt, per_prompt in zip(PROMPTS, out):
        for g in per_prompt:
            logits = teacher_forced_logits(model, prompt, g.token_ids)  # (G, V)
            processed = sampling_logprobs(logits, params.temperature, params.top_k, params.top_p)  # (G, V)
            reference = processed.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
            assert torch.isfinite(reference).all(), "a token outside the top-k/top-p set was sampled"
            assert torch.allclose(torch.tensor(g.logprobs), reference, atol=1e-4)


def test_first_tokens_follow_the_policy_distribution(model):
    prompt = PROMPTS[0]
    out = HFEngine(model, max_batch_size=4096).generate([prompt], SamplingParams(n=4000, max_new_tokens=1), seed=1)
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in out[0]]), minlength=VOCAB).double()
    with torch.no_grad():
        policy = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    total_variation = 0.5 * (counts / counts.sum() - policy).abs().sum()
    assert total_variation < 0.06, total_variation  # ~0.03 expected from 4000 draws


class EmbeddedTokenCounter:
    """Counts tokens passed through the embedding: what the model actually encodes."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.count += inputs[0].numel()


def test_n_samples_encode_the_prompt_once(model):
    prompt, n, new = PROMPTS[0], 5, 6
    counter = EmbeddedTokenCounter(model)
    try:
        HFEngine(model).generate([prompt], SamplingParams(n=n, max_new_tokens=new, stop_at_eos=False), seed=0)
        single = counter.count
        counter.count = 0
        # two prompts of lengths 7 and 2 in one micro-batch: one padded prefill of 2 x 7
        HFEngine(model).generate(PROMPTS[:2], SamplingParams(n=n, max_new_tokens=new, stop_at_eos=False), seed=0)
        pair = counter.count
    finally:
        counter.handle.remove()
    # prefill once (7 tokens), then each of the n rows feeds back new - 1 sampled tokens
    assert single == len(prompt) + n * (new - 1) == 32
    assert pair == 2 * len(prompt) + 2 * n * (new - 1)
    assert single < n * len(prompt) + n * (new - 1)  # what re-encoding per sample would cost


def test_per_prompt_budgets_are_respected(model):
    out = HFEngine(model).generate(PROMPTS, SamplingParams(n=2, max_new_tokens=50), seed=0, max_new_tokens=[3, 0, 5])
    assert [[len(g.token_ids) for g in p] for p in out] == [[3, 3], [0, 0], [5, 5]]
    assert all(len(g.logprobs) == len(g.token_ids) and not g.finished for p in out for g in p)
    # a budget only truncates: the first 3 tokens are those of a longer budget
    longer = HFEngine(model).generate(PROMPTS, SamplingParams(n=2, max_new_tokens=50), seed=0, max_new_tokens=[9, 0, 5])
    assert [g.token_ids[:3] for g in longer[0]] == [g.token_ids for g in out[0]]


def test_per_prompt_sample_counts_draw_the_same_streams(model):
    engine = HFEngine(model)
    full = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=6), seed=8)
    mixed = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=6), seed=8, n=[3, 1, 2])
    assert [len(p) for p in mixed] == [3, 1, 2]
    # sample j of prompt i comes from stream (seed, i, j) whatever the other counts are
    assert tokens(mixed) == [tokens(full)[0], tokens(full)[1][:1], tokens(full)[2][:2]]
    with pytest.raises(AttnRLError, match="one per prompt"):
        engine.generate(PROMPTS, SamplingParams(), seed=0, n=[1, 2])
    with pytest.raises(AttnRLError, match=r"n\[1\]=0"):
        engine.generate(PROMPTS, SamplingParams(), seed=0, n=[1, 0, 2])


def test_greedy_decodes_each_prompt_once_and_copies_it(model):
    counter = EmbeddedTokenCounter(model)
    try:
        out = HFEngine(model).generate([PROMPTS[0]], SamplingParams(n=4, temperature=0.0, max_new_tokens=5), seed=0)
    finally:
        counter.handle.remove()
    assert counter.count == len(PROMPTS[0]) + 1 * (5 - 1)  # one row decoded, not four
    assert len({tuple(g.token_ids) for g in out[0]}) == 1 and len({id(g.token_ids) for g in out[0]}) == 4


def test_eos_stops_a_sample_and_marks_it_finished(model):
    params = SamplingParams(n=4, max_new_tokens=20)
    free = HFEngine(model, eos_token_id=None).generate(PROMPTS, params, seed=21)
    eos = free[0][0].token_ids[3]  # a token the policy really emits, used as EOS below
    stopped = HFEngine(model, eos_token_id=eos).generate(PROMPTS, params, seed=21)
    n_finished = 0
    for p, q in zip(free, stopped):
        for g, h in zip(p, q):
            if eos in g.token_ids:
                cut = g.token_ids.index(eos) + 1
                assert h.token_ids == g.token_ids[:cut] and h.finished
                assert h.logprobs == pytest.approx(g.logprobs[:cut], abs=1e-5)
                n_finished += 1
            else:
                assert h.token_ids == g.token_ids and not h.finished
    assert n_finished >= 1 and stopped[0][0].finished and len(stopped[0][0].token_ids) <= 4
    no_stop = SamplingParams(n=4, max_new_tokens=20, stop_at_eos=False)
    ignoring = HFEngine(model, eos_token_id=eos).generate(PROMPTS, no_stop, seed=21)
    assert tokens(ignoring) == tokens(free) and not any(g.finished for p in ignoring for g in p)


def test_update_weights_from_state_dict_folder_and_own_model(model, tmp_path):
    params = SamplingParams(n=2, max_new_tokens=8)
    other = tiny_qwen2(1)
    expected = HFEngine(other).generate(PROMPTS, params, seed=4)
    engine = HFEngine(tiny_qwen2(0))
    before = engine.generate(PROMPTS, params, seed=4)
    engine.update_weights(engine.model)  # shared with the trainer: nothing to do
    assert tokens(engine.generate(PROMPTS, params, seed=4)) == tokens(before)
    engine.update_weights(other.state_dict())
    assert tokens(engine.generate(PROMPTS, params, seed=4)) == tokens(expected) != tokens(before)
    model.save_pretrained(tmp_path / "ckpt")
    engine.update_weights(str(tmp_path / "ckpt"))
    assert tokens(engine.generate(PROMPTS, params, seed=4)) == tokens(before)


def test_update_weights_errors_name_the_problem(tmp_path):
    engine = HFEngine(tiny_qwen2(0))
    with pytest.raises(AttnRLError, match="No model checkpoint"):
        engine.update_weights(tmp_path / "missing")
    with pytest.raises(AttnRLError, match="missing"):
        engine.update_weights({"model.embed_tokens.weight": torch.zeros(VOCAB, 32)})
    with pytest.raises(AttnRLError, match="pass a model, a state_dict or a checkpoint folder"):
        engine.update_weights(42)


def test_engine_can_load_from_a_folder_and_restores_train_mode(model, tmp_path):
    model.save_pretrained(tmp_path / "policy")
    engine = HFEngine(tmp_path / "policy")
    assert tokens(engine.generate(PROMPTS, SamplingParams(max_new_tokens=5), seed=0)) == tokens(
        HFEngine(model).generate(PROMPTS, SamplingParams(max_new_tokens=5), seed=0)
    )
    engine.model.train()
    engine.generate(PROMPTS, SamplingParams(max_new_tokens=2), seed=0)
    assert engine.model.training


def test_invalid_inputs_raise_attnrl_errors(model):
    bad_params = [dict(n=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)]
    for bad in bad_params + [dict(max_new_tokens=-2)]:
        with pytest.raises(AttnRLError):
            SamplingParams(**bad)
    with pytest.raises(AttnRLError, match="empty"):
        resolve_budgets([[1], []], SamplingParams(), None)
    with pytest.raises(AttnRLError, match="one per prompt"):
        resolve_budgets([[1], [2]], SamplingParams(), [3])
    engine = HFEngine(model)
    with pytest.raises(AttnRLError, match="max_position_embeddings=128"):
        engine.generate([[1] * 100], SamplingParams(max_new_tokens=40), seed=0)
    with pytest.raises(AttnRLError, match="vocabulary"):
        engine.generate([[1, VOCAB]], SamplingParams(max_new_tokens=4), seed=0)
    assert math.isclose(SamplingParams(temperature=0.0).temperature, 0.0) and SamplingParams(temperature=0).greedy


def test_the_preallocated_kv_cache_decodes_bit_for_bit_like_transformers_dynamic_cache(model, monkeypatch):
    """Rows ending at EOS or their budget at different steps (the cache drops them), prompts fanned
    out to n samples, micro-batches of 5 rows: the same tokens, log-probs and finished flags."""
    import attnrl_core.rollout.hf as hf

    eos = HFEngine(model, eos_token_id=None).generate(PROMPTS, SamplingParams(n=1, max_new_tokens=8), seed=3)[0][0].token_ids[2]
    calls = [
        dict(params=SamplingParams(n=4, max_new_tokens=20), max_new_tokens=[20, 7, 13]),
        dict(params=SamplingParams(n=1, temperature=0.0, max_new_tokens=15)),
    ]
    outputs = {}
    for preallocated in (True, False):
        monkeypatch.setattr(hf, "PREALLOCATED_KV_CACHE", preallocated)
        engine = HFEngine(model, eos_token_id=eos, max_batch_size=5)
        outputs[preallocated] = [
            [[(g.token_ids, g.logprobs, g.finished) for g in row] for row in engine.generate(PROMPTS, seed=11, **call)] for call in calls
        ]
    assert outputs[True] == outputs[False]
    assert any(g[2] for row in outputs[True][0] for g in row)  # some rows stopped early at EOS
