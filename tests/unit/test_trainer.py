"""The PPO trainer and the scoring phase on a tiny random Qwen2."""

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from attnrl_core import fci
from attnrl_core.config import FCIConfig, OptimConfig, TrainConfig
from attnrl_core.steps import absolute_step_spans, split_steps
from attnrl_core.trainer import NonFiniteLoss, PolicySample, TorchTrainer, response_logprobs
from attnrl_core.prompt_groups import PromptGroup, Response
from attnrl_core.scoring import score_groups

PAD = 0


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).eval()


SAMPLES = [
    PolicySample([5, 6, 7], [8, 9, 10, 11], [0.5, 0.5, -1.0, -1.0], stored_logprobs=[-2.0, -2.5]),
    PolicySample([5, 6], [12, 13], [1.0, 1.0]),
    PolicySample([4], [9, 9, 9], [-0.3, -0.3, -0.3], stored_logprobs=[-1.0, -1.0, -1.0]),
]


def test_response_logprobs_match_a_direct_computation():
    model = tiny_model()
    logp, mask, ent = response_logprobs(model, SAMPLES, PAD, with_entropy=True)
    for b, s in enumerate(SAMPLES):
        seq = torch.tensor([s.prompt_ids + s.response_ids])
        logits = model(seq).logits[0]  # (L, V)
        for i, tok in enumerate(s.response_ids):
            pos = len(s.prompt_ids) + i
            dist = torch.log_softmax(logits[pos - 1], -1)
            assert logp[b, i].item() == pytest.approx(dist[tok].item(), abs=1e-5)
            assert ent[b, i].item() == pytest.approx(-(dist.exp() * dist).sum().item(), abs=1e-5)
        assert mask[b].sum().item() == len(s.response_ids)


def test_response_logprobs_in_chunks_equal_the_whole_tensor_way_with_their_gradients():
    """Chunks of 1 and 2 response positions (recomputed in backward) give the same log-probs,
    entropies and parameter gradients, bit for bit, as one chunk of all positions."""
    results = []
    for chunk_positions in (None, 1, 2):
        model = tiny_model()
        V = model.config.vocab_size
        chunk_bytes = 2**40 if chunk_positions is None else chunk_positions * len(SAMPLES) * V * 4
        logp, mask, ent = response_logprobs(model, SAMPLES, PAD, with_entropy=True, chunk_bytes=chunk_bytes)
        ((logp * mask).sum() + 0.1 * (ent * mask).sum()).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), ent.detach(), grads))
    whole = results[0]
    for logp, ent, grads in results[1:]:
        assert torch.equal(logp, whole[0]) and torch.equal(ent, whole[1])
        assert grads.keys() == whole[2].keys() and all(torch.equal(g, whole[2][k]) for k, g in grads.items())


def test_update_is_deterministic_and_moves_the_policy():
    a, b = tiny_model(), tiny_model()
    ref = copy.deepcopy(a).requires_grad_(False)
    ta = TorchTrainer(a, ref, PAD, OptimConfig(lr=1e-2, minibatch_sequences=2, micro_batch_tokens=0))
    tb = TorchTrainer(b, copy.deepcopy(ref), PAD, OptimConfig(lr=1e-2, minibatch_sequences=2, micro_batch_tokens=0))
    before = {k: v.clone() for k, v in a.state_dict().items()}
    sa = ta.update(SAMPLES, torch.Generator().manual_seed(1))
    sb = tb.update(SAMPLES, torch.Generator().manual_seed(1))
    assert sa == sb and sa.minibatches == 2 and sa.tokens == 9
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert any(not torch.equal(before[k], v) for k, v in a.state_dict().items())


def test_gradient_checkpointing_gives_the_same_gradient():
    plain, checkpointed = tiny_model(), tiny_model()
    optim = OptimConfig(lr=1e-2, minibatch_sequences=4, micro_batch_tokens=0)
    g1 = TorchTrainer(plain, None, PAD, optim.model_copy(update={"kl_coef": 0.0})).gradient(SAMPLES)
    trainer = TorchTrainer(checkpointed, None, PAD, optim.model_copy(update={"kl_coef": 0.0}), TrainConfig(gradient_checkpointing=True))
    assert checkpointed.is_gradient_checkpointing
    g2 = trainer.gradient(SAMPLES)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-6), k


class GradRecorder(TorchTrainer):
    """TorchTrainer that keeps a copy of each mini-batch's summed gradients before stepping."""

    def _optimizer_step(self) -> float:
        self.grads = getattr(self, "grads", []) + [{n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}]
        return super()._optimizer_step()


@pytest.mark.parametrize("budget", [1, 12, 20])
def test_length_sorted_passes_give_the_one_pass_update(budget):
    # budget 1: every sequence alone; 12 and 20: mixed groups (the samples are 3-7 tokens long).
    # Gradients are compared, not weights after AdamW: where a gradient is pure rounding noise
    # (a key-projection bias, which softmax ignores), Adam's normalisation turns noise of 1e-10
    # into a step of +-lr.
    a, b = tiny_model(), tiny_model()
    ref = copy.deepcopy(a).requires_grad_(False)
    whole = GradRecorder(a, ref, PAD, OptimConfig(lr=1e-2, minibatch_sequences=3, micro_batch_tokens=0))
    passes = GradRecorder(b, copy.deepcopy(ref), PAD, OptimConfig(lr=1e-2, minibatch_sequences=3, micro_batch_tokens=budget))
    assert len(passes._passes(SAMPLES, [0, 1, 2])) > 1
    sw = whole.update(SAMPLES, torch.Generator().manual_seed(0))
    sp = passes.update(SAMPLES, torch.Generator().manual_seed(0))
    assert (sp.minibatches, sp.tokens) == (sw.minibatches, sw.tokens) == (1, 9)
    for name in ("pg_loss", "kl", "entropy", "approx_kl", "grad_norm"):
        assert getattr(sp, name) == pytest.approx(getattr(sw, name), rel=1e-4, abs=1e-6), name
    (gw,), (gp,) = whole.grads, passes.grads
    assert gw.keys() == gp.keys()
    for n in gw:
        assert torch.allclose(gw[n], gp[n], atol=1e-6, rtol=1e-4), n


def test_length_micro_batches():
    from attnrl_core.batching import length_micro_batches

    assert length_micro_batches([5, 30, 8, 28, 6], 60) == [[1, 3], [2, 4, 0]]
    assert length_micro_batches([50, 7], 10) == [[0], [1]]  # longer than the budget: alone
    assert length_micro_batches([4, 4, 4], 8) == [[0, 1], [2]]  # ties keep their order
    assert length_micro_batches([3, 1], 0) == [[0, 1]]
    assert length_micro_batches([], 64) == []


def test_old_logprobs_use_the_stored_prefix_then_the_current_policy():
    model = tiny_model()
    trainer = TorchTrainer(model, None, PAD, OptimConfig(lr=1e-3, kl_coef=0.0, minibatch_sequences=192, micro_batch_tokens=0))
    olds, refs = trainer._old_and_ref(SAMPLES, list(range(len(SAMPLES))))
    current, _, _ = response_logprobs(model, SAMPLES, PAD)
    assert olds[0][:2].tolist() == [-2.0, -2.5]
    assert torch.allclose(olds[0][2:], current[0, 2:4])
    assert torch.allclose(olds[1], current[1, :2])
    assert refs == [None, None, None]


def test_non_finite_loss_stops_the_update():
    model = tiny_model()
    trainer = TorchTrainer(model, None, PAD, OptimConfig(lr=1e-3, kl_coef=0.0, minibatch_sequences=192, micro_batch_tokens=0))
    bad = [PolicySample([5], [6, 7], [float("nan"), 1.0])]
    with pytest.raises(NonFiniteLoss, match="became"):
        trainer.update(bad, torch.Generator().manual_seed(0))


def test_score_groups_fills_fields_consistently_with_fci_score():
    model = tiny_model()
    sep = torch.zeros(24, dtype=torch.bool)
    sep[3] = True
    resp = [Response([9, 3, 10, 11, 3, 12, 3, 13], [-1.0] * 8), Response([14, 3, 15], [-1.0] * 3)]
    group = PromptGroup("p", "q", "1", 1, [5, 6, 7], resp)
    score_groups(model, [group], sep, vocab_texts=[f"t{i}" for i in range(24)], pad_token_id=PAD, cfg=FCIConfig(delta=1), micro_batch=1)
    r0 = group.responses[0]
    assert r0.step_spans == [[0, 2], [2, 5], [5, 7], [7, 8]]
    assert len(r0.step_fci) == 5 and r0.step_fci[0] == 0.0 and r0.step_fci[1] == 0.0  # zeroed
    seq = torch.tensor([[5, 6, 7] + r0.token_ids])
    spans = [absolute_step_spans(3, split_steps(torch.tensor(r0.token_ids), sep))]
    direct = fci.score(model, seq, torch.ones_like(seq), spans, delta=1)
    assert r0.step_fci[2:] == pytest.approx(direct.step_fci[0][2:].tolist(), abs=1e-6)
    assert r0.token_logprobs == pytest.approx(direct.token_logprobs[0, 3:].tolist(), abs=1e-5)
    assert len(group.responses[1].token_entropy) == 3


def test_score_groups_pads_to_the_peers_pass_count_without_changing_a_score():
    """A ZeRO-3 rank runs as many forward passes as its busiest peer: 2 responses at micro-batch
    1 are 2 passes (score_passes); passes=5 adds 3 one-token passes and changes no field."""
    from attnrl_core.scoring import score_passes

    model = tiny_model()
    sep = torch.zeros(24, dtype=torch.bool)
    sep[3] = True
    make = lambda: PromptGroup("p", "q", "1", 1, [5, 6, 7], [Response([9, 3, 10, 11], [-1.0] * 4), Response([14, 3, 15], [-1.0] * 3)])  # noqa: E731
    plain, padded = make(), make()
    assert score_passes([plain], micro_batch=1) == 2 and score_passes([], micro_batch=1) == 0
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    args = dict(sep_mask=sep, vocab_texts=[f"t{i}" for i in range(24)], pad_token_id=PAD, cfg=FCIConfig(delta=1), micro_batch=1)
    score_groups(model, [plain], **args)
    score_groups(model, [padded], passes=5, **args)
    hook.remove()
    assert len(calls) == 2 + 5 and calls[2:5] == [torch.Size([1, 1])] * 3
    assert [vars(r) for r in padded.responses] == [vars(r) for r in plain.responses]


# ----------------------------------------------------------------------------------------------
# DeepSpeed backend (real DeepSpeed, one gloo rank on CPU)
# ----------------------------------------------------------------------------------------------


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def _assert_close(a: dict, b: dict, atol: float) -> None:
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max().item()}"


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_deepspeed_update_equals_the_torch_update(zero_stage):
    """Also ZeRO-3, whose model object keeps only its slices: its gradient, steps and the
    weights gathered back equal the torch trainer's."""
    from attnrl_core.trainer import DeepSpeedTrainer

    a, b = tiny_model(), tiny_model()
    ref = copy.deepcopy(a).requires_grad_(False)
    # micro_batch_tokens=8: a mini-batch of 2 runs as 2 passes, through the engine's gradient
    # accumulation; the torch side runs the same passes (same rounding: see the Adam note above)
    torch_trainer = TorchTrainer(a, ref, PAD, OptimConfig(lr=1e-2, minibatch_sequences=2, micro_batch_tokens=8))
    before = _weights(b)
    ds_trainer = DeepSpeedTrainer(b, copy.deepcopy(ref), PAD, OptimConfig(lr=1e-2, minibatch_sequences=2, micro_batch_tokens=8), TrainConfig(zero_stage=zero_stage))
    if zero_stage == 3:
        assert all(p.numel() == 0 for p in b.parameters()), "ZeRO-3 partitions the model object it is given"
        _assert_close(torch_trainer.gradient(SAMPLES), ds_trainer.gradient(SAMPLES), atol=1e-6)
    for step in range(2):
        st = torch_trainer.update(SAMPLES, torch.Generator().manual_seed(step))
        sd = ds_trainer.update(SAMPLES, torch.Generator().manual_seed(step))
        assert (sd.minibatches, sd.tokens) == (st.minibatches, st.tokens)
        assert sd.grad_norm == pytest.approx(st.grad_norm, rel=1e-4)
        assert sd.pg_loss == pytest.approx(st.pg_loss, abs=1e-5)
    after = {k: v.float() for k, v in ds_trainer.weights().items()}
    assert any(not torch.equal(before[k], after[k]) for k in after)
    _assert_close(_weights(a), after, atol=1e-5)  # AdamW at lr 1e-2 moves weights by ~2e-2


@pytest.mark.parametrize("zero_stage, bf16", [(0, False), (2, False), (2, True), (3, False), (3, True)], ids=["stage0", "stage2", "stage2-bf16", "stage3", "stage3-bf16"])
def test_deepspeed_state_round_trip_continues_exactly(tmp_path, zero_stage, bf16):
    """Update, checkpoint (weights + optimizer, read back weights_only), rebuild, update again:
    equals two updates in one trainer (ZeRO-3: the weights gathered from the slices and put
    back into a fresh trainer's, from the checkpoint and again by load_weights)."""
    from attnrl_core.trainer import DeepSpeedTrainer

    make = lambda m: DeepSpeedTrainer(m, None, PAD, OptimConfig(lr=1e-2, kl_coef=0.0, minibatch_sequences=2, micro_batch_tokens=0), TrainConfig(zero_stage=zero_stage, bf16=bf16))  # noqa: E731
    a, b = tiny_model(), tiny_model()
    ta, tb = make(a), make(b)
    if bf16:
        assert ta.weights()["lm_head.weight"].dtype == torch.bfloat16  # the engine casts the shared policy object
    for t in (ta, tb):
        t.update(SAMPLES, torch.Generator().manual_seed(0))
    torch.save(tb.weights(), tmp_path / "policy.pt")
    torch.save(tb.state_dict(), tmp_path / "optimizer.pt")

    c = tiny_model(seed=7)  # other weights: everything must come from the checkpoint
    c.load_state_dict(torch.load(tmp_path / "policy.pt", weights_only=True))
    tc = make(c)
    tc.load_weights(torch.load(tmp_path / "policy.pt", weights_only=True))  # what a rebuilt rank does again
    tc.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    ta.update(SAMPLES, torch.Generator().manual_seed(1))
    tc.update(SAMPLES, torch.Generator().manual_seed(1))
    _assert_close(ta.weights(), tc.weights(), atol=0.0)


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_a_zero_state_from_before_any_step_restores_no_moments(zero_stage):
    """A retried first update restores the state of before it: weights and NO Adam moments (not
    the moments the failed attempt left); the state is torch AdamW's per-parameter format."""
    from attnrl_core.trainer import DeepSpeedTrainer

    make = lambda m: DeepSpeedTrainer(m, None, PAD, OptimConfig(lr=1e-2, kl_coef=0.0, minibatch_sequences=2, micro_batch_tokens=0), TrainConfig(zero_stage=zero_stage))  # noqa: E731
    a, b = tiny_model(), tiny_model()
    count = len(list(a.parameters()))
    ta, tb = make(a), make(b)
    before = ({k: v.clone() for k, v in ta.weights().items()}, ta.state_dict())
    assert before[1]["optimizer"]["state"] == {} and len(before[1]["optimizer"]["param_groups"][0]["params"]) == count
    ta.update(SAMPLES, torch.Generator().manual_seed(0))  # the failed first attempt
    ta.load_weights(before[0])
    ta.load_state_dict(before[1])
    ta.update(SAMPLES, torch.Generator().manual_seed(0))  # the retry
    tb.update(SAMPLES, torch.Generator().manual_seed(0))
    _assert_close(ta.weights(), tb.weights(), atol=0.0)
    assert set(ta.state_dict()["optimizer"]["state"]) == set(range(count))


def test_deepspeed_refuses_an_unknown_zero_stage():
    from attnrl_core.trainer import DeepSpeedTrainer

    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3"):
        DeepSpeedTrainer(tiny_model(), None, PAD, OptimConfig(lr=1e-3, kl_coef=0.0), TrainConfig.model_construct(zero_stage=4, bf16=False))


def test_docstring_examples():
    import doctest

    import attnrl_core.trainer

    assert doctest.testmod(attnrl_core.trainer).failed == 0
