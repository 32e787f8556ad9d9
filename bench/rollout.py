"""Rollout throughput: initial sampling, and tree continuations with vs without prefix reuse.

    .venv/bin/python bench/rollout.py                  # hf engine, default shapes, median of 3
    .venv/bin/python bench/rollout.py --quick          # a quarter of the new tokens
    .venv/bin/python bench/rollout.py --engine vllm    # the same through the vLLM server (.venv-vllm)

The policy has the tiny policy's shape (4 layers, width 128, 4 query / 2 KV heads, MLP 512, the
tiny character tokenizer's vocabulary of ~100) with random weights. EOS is ignored so every
sample has exactly its budget of new tokens and tokens/s compare like for like.

(a) initial sampling: 16 prompts x 6 samples x 128 new tokens (the G samples of a batch).
    For the hf engine it is also timed through transformers' `generate` (top_k=0, top_p=1),
    which expands every prompt 6 times BEFORE the prefill.
(b) continuations with prefix reuse: 24 prefixes of 90-110 tokens, n = 2 each, 64 new tokens
    (one prefill per prefix, KV cache fanned out to its 2 continuations).
(c) the same continuations re-encoding every prefix: each prefix sent twice with n = 1.
(a'') for the hf engine: (a) on transformers' DynamicCache, whose torch.cat copies the whole KV
    cache every step, instead of the engine's preallocated buffers.
Cases alternate within each repeat; medians of the repeats are printed with the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from attnrl_core.policy import build_tokenizer  # noqa: E402
from attnrl_core.rollout import SamplingParams, make_engine  # noqa: E402


def tiny_policy(vocab_size: int, seed: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def random_prompts(count: int, low: int, high: int, vocab_size: int, generator: torch.Generator) -> list[list[int]]:
    lengths = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hf_generate(model, prompts: list[list[int]], n: int, new_tokens: int, seed: int) -> None:
    """transformers' own sampler on the same work: left padding, n copies of every prompt."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.inference_mode():
        model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, num_return_sequences=n,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
        )  # fmt: skip


def with_dynamic_cache(fn):
    """fn() with the hf engine on transformers' DynamicCache (torch.cat per step) instead of its
    preallocated KV buffers: the same tokens, bit for bit (tests/unit/test_rollout_hf.py)."""
    import attnrl_core.rollout.hf as hf

    hf.PREALLOCATED_KV_CACHE = False
    try:
        return fn()
    finally:
        hf.PREALLOCATED_KV_CACHE = True


def label(case: str) -> str:
    """A case's short label: "a'') initial 16x6, DynamicCache" -> "a''" (what --only names)."""
    return case.split(" ")[0].rstrip(")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a quarter of the new tokens per sample")
    parser.add_argument("--model", default=None, help="a save_pretrained folder to time instead of the random tiny policy")
    parser.add_argument("--only", action="append", default=[], help="run only the cases whose label starts with this (a, b, c, a', a''); repeatable")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens per initial sample (a); continuations get half")
    parser.add_argument("--max-batch-size", type=int, default=256, help="hf engine micro-batch (rows)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model:  # a real model folder (e.g. `make real-model`'s SmolLM2): its weights, random token prompts
        from attnrl_core.policy import load_policy

        model, tokenizer = load_policy(args.model)
        model.eval()
        vocab_size = model.config.vocab_size
    else:
        tokenizer = build_tokenizer(["\n\n", "Compute ", "The answer is \\boxed{"])
        vocab_size = len(tokenizer)
        model = tiny_policy(vocab_size, seed=0)
    scale = 4 if args.quick else 1
    g = torch.Generator().manual_seed(0)
    initial_prompts = random_prompts(16, 40, 56, vocab_size, g)
    prefixes = random_prompts(24, 90, 110, vocab_size, g)
    initial = SamplingParams(n=6, max_new_tokens=args.new_tokens // scale, stop_at_eos=False)
    continuation = SamplingParams(n=2, max_new_tokens=args.new_tokens // 2 // scale, stop_at_eos=False)
    reencoded = SamplingParams(n=1, max_new_tokens=args.new_tokens // 2 // scale, stop_at_eos=False)
    repeated_prefixes = [p for p in prefixes for _ in range(continuation.n)]

    folder = None
    if args.engine == "hf":
        engine = make_engine("hf", model=model, max_batch_size=args.max_batch_size)
    else:
        folder = tempfile.TemporaryDirectory(prefix="bench-rollout-")
        model.save_pretrained(folder.name)
        tokenizer.save_pretrained(folder.name)
        # CPU: a small explicit KV cache and no torch.compile; a GPU takes vLLM's defaults
        cpu = {"kv_cache_memory_bytes": 2**28, "enforce_eager": True} if not torch.cuda.is_available() else {}
        engine = make_engine("vllm", model_path=folder.name, llm_kwargs={"max_model_len": 512, **cpu})

    # name -> (call with a seed, new tokens it generates)
    cases = {
        "a) initial 16x6": (
            lambda s: engine.generate(initial_prompts, initial, seed=s), 16 * initial.n * initial.max_new_tokens
        ),
        "b) continue, prefix reuse 24x2": (
            lambda s: engine.generate(prefixes, continuation, seed=s), 24 * continuation.n * continuation.max_new_tokens
        ),
        "c) continue, re-encode 48x1": (
            lambda s: engine.generate(repeated_prefixes, reencoded, seed=s), 48 * reencoded.max_new_tokens
        ),
    }
    if args.engine == "hf":
        cases["a') HF generate 16x6"] = (
            lambda s: hf_generate(model, initial_prompts, initial.n, initial.max_new_tokens, s),
            16 * initial.n * initial.max_new_tokens,
        )
        cases["a'') initial 16x6, DynamicCache"] = (
            lambda s: with_dynamic_cache(lambda: engine.generate(initial_prompts, initial, seed=s)),
            16 * initial.n * initial.max_new_tokens,
        )
    if args.only:
        cases = {name: case for name, case in cases.items() if label(name) in args.only}
    try:
        for fn, _ in cases.values():  # warm-up: first-call allocations, vLLM's kernel JIT
            fn(12345)
        seconds = {name: [] for name in cases}
        for repeat in range(args.repeats):
            for name, (fn, _) in cases.items():
                seconds[name].append(timed(lambda: fn(repeat)))
    finally:
        if args.engine == "vllm":
            engine.close()
            folder.cleanup()

    print(f"engine={args.engine} vocab={vocab_size} threads={torch.get_num_threads()} repeats={args.repeats} (median)")
    rate = {}
    for name, (_, tokens) in cases.items():
        median = statistics.median(seconds[name])
        rate[name] = tokens / median
        print(f"  {name:32s} {tokens:6d} new tokens  {median:7.3f} s  {rate[name]:9.0f} tok/s")
    by_label = {label(name): rate[name] for name in cases}
    for first, second, what in (("b", "c", "prefix reuse vs re-encoding"), ("a", "a'", "engine vs HF generate"), ("a", "a''", "preallocated vs DynamicCache")):
        if first in by_label and second in by_label:
            print(f"  {what} ({first}/{second}): {by_label[first] / by_label[second]:.2f}x")


if __name__ == "__main__":
    main()
