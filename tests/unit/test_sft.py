"""The warm start's supervised step: labels, the learning-rate schedule, length-sorted passes."""

import numpy as np
import pytest
import torch

from attnrl_core import data
from attnrl_core.config import TinyModelConfig
from attnrl_core.policy import build_tokenizer, init_tiny_policy
from attnrl_core.sft import IGNORE, accumulate_gradients, lr_at, sft_batch

TOKENIZER = build_tokenizer(data.PHRASES)


def demonstrations(n: int) -> tuple[list[str], list[str]]:
    problems = data.generate_problems(n, levels=[1, 2, 3, 4], seed=3, split="train")
    rng = np.random.default_rng(0)
    return [data.format_prompt(p.problem) for p in problems], [data.make_demonstration(p, 0.6, [3, 4], rng=rng) for p in problems]


def test_sft_batch_labels_only_the_completion_and_eos():
    prompts, completions = demonstrations(3)
    batch = sft_batch(TOKENIZER, prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n_p = len(TOKENIZER(p, add_special_tokens=False)["input_ids"])
        n_c = len(TOKENIZER(c, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        labels = batch["labels"][i]
        assert (labels[:n_p] == IGNORE).all() and (labels[n_p + n_c :] == IGNORE).all()
        assert labels[n_p + n_c - 1].item() == TOKENIZER.eos_token_id
        assert batch["attention_mask"][i].sum().item() == n_p + n_c


def test_lr_schedule_worked_example():
    assert lr_at(0, 100, 1e-3, 10) == pytest.approx(1e-4)  # warm-up
    assert lr_at(9, 100, 1e-3, 10) == pytest.approx(1e-3)  # peak
    assert lr_at(99, 100, 1e-3, 10) == pytest.approx(1e-4)  # end of the cosine: 10% of the peak


@pytest.mark.parametrize("budget", [256, 1024])
def test_length_sorted_passes_give_the_one_pass_gradient(budget):
    prompts, completions = demonstrations(16)
    grads = {}
    for b in (0, budget):
        model = init_tiny_policy(TinyModelConfig(num_layers=2, hidden_size=32, intermediate_size=64), TOKENIZER, seed=0)
        loss = accumulate_gradients(model, TOKENIZER, prompts, completions, micro_batch_tokens=b)
        grads[b] = (loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_one, g_one), (loss_passes, g_passes) = grads[0], grads[budget]
    assert loss_passes == pytest.approx(loss_one, rel=1e-5)
    assert g_one.keys() == g_passes.keys()
    for n in g_one:
        assert torch.allclose(g_one[n], g_passes[n], atol=1e-6, rtol=1e-4), n


def test_docstring_examples():
    import doctest

    import attnrl_core.batching
    import attnrl_core.sft

    for module in (attnrl_core.sft, attnrl_core.batching):
        assert doctest.testmod(module).failed == 0, module.__name__
