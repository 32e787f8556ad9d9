"""Supervised fine-tuning: the warm start that turns the random tiny model into the base policy.

Loss on completion tokens only (the prompt is context, not a target), AdamW with linear warm-up
and cosine decay, budgeted in optimizer steps so every machine trains the same base.

    >>> from attnrl_core.policy import build_tokenizer
    >>> tok = build_tokenizer(["\\n\\n"])                     # characters, plus "\\n\\n" as one token
    >>> batch = sft_batch(tok, ["Compute 1 + 2."], ["1 + 2 = 3"])
    >>> batch["input_ids"].shape                           # 14 prompt + 9 completion + EOS
    torch.Size([1, 24])
    >>> (batch["labels"][0] == IGNORE).sum().item()         # the 14 prompt positions are ignored
    14
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from transformers import PreTrainedTokenizerBase

from attnrl_core.batching import length_micro_batches, pad_token_rows

IGNORE = -100


def encode_demonstrations(tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per demonstration: prompt + completion + EOS, labelled on completion + EOS only."""
    encoded = []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((p + c, [IGNORE] * len(p) + c))
    return encoded


def pad_demonstrations(encoded: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) of encoded demonstrations."""
    input_ids, mask = pad_token_rows([ids for ids, _ in encoded], pad_token_id)  # (B, L) each
    labels, _ = pad_token_rows([lab for _, lab in encoded], IGNORE)  # (B, L): labels are as long as their ids
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def sft_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) with labels only on completion + EOS."""
    return pad_demonstrations(encode_demonstrations(tokenizer, prompts, completions), tokenizer.pad_token_id)


def accumulate_gradients(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str], micro_batch_tokens: int = 0
) -> float:
    """Add the gradient of the batch's token-mean completion loss to `.grad`; returns the loss.

    `micro_batch_tokens` > 0 runs the batch as length-sorted passes of at most that many padded
    tokens (`length_micro_batches`), each pass's loss summed over its tokens and divided by the
    whole batch's count: the same gradient as one padded pass, up to float rounding.
    """
    encoded = encode_demonstrations(tokenizer, prompts, completions)
    if micro_batch_tokens <= 0:
        loss = model(**pad_demonstrations(encoded, tokenizer.pad_token_id), use_cache=False).loss
        loss.backward()
        return loss.item()
    targets = sum(label != IGNORE for _, labels in encoded for label in labels)  # the token mean's divisor
    passes = length_micro_batches([len(ids) for ids, _ in encoded], micro_batch_tokens)
    loss = 0.0
    for rows in passes:
        batch = pad_demonstrations([encoded[i] for i in rows], tokenizer.pad_token_id)
        part = model(**batch, use_cache=False, num_items_in_batch=targets).loss  # sum over the pass / targets
        part.backward()
        loss += part.item()
    return loss


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it.

    lr_at(0, 100, 1e-3, 10) = 1e-4 (warm-up), lr_at(9, 100, 1e-3, 10) = 1e-3 (peak),
    lr_at(99, 100, 1e-3, 10) = 1e-4 (end of the cosine).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - 1)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train_sft(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batches: Iterator[tuple[list[str], list[str]]],
    steps: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    on_step: Callable[[int, float, float], None] | None = None,
    micro_batch_tokens: int = 0,
) -> list[float]:
    """Run `steps` optimizer steps over `batches` of (prompts, completions); returns the losses.

    `on_step(step, loss, lr)` is called after each step (progress bars, metric logging);
    `micro_batch_tokens`: see `accumulate_gradients`.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    losses = []
    for step in range(steps):
        prompts, completions = next(batches)
        current = lr_at(step, steps, lr, warmup_steps)
        for group in opt.param_groups:
            group["lr"] = current
        opt.zero_grad(set_to_none=True)
        loss = accumulate_gradients(model, tokenizer, prompts, completions, micro_batch_tokens)
        if not math.isfinite(loss):
            raise FloatingPointError(f"warm-start loss became {loss} at step {step}")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss)
        if on_step is not None:
            on_step(step, losses[-1], current)
    model.eval()
    return losses
