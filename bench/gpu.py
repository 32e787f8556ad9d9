"""GPU bench at the paper's shape, needing only torch, transformers and attnrl_core.

    python bench/gpu.py                 # one GPU: DS-R1-Distill-Qwen-1.5B's shape in bf16 (~5 min on one H200)
    python bench/gpu.py --tiny          # a smoke check of the same code on CPU (seconds)
    python bench/gpu.py --out gpu.json  # also write the numbers as JSON

A bare GPU machine may lack vLLM, DeepSpeed, Prefect and MLflow and have no network, so this bench
builds a RANDOM-initialised Qwen2 of DeepSeek-R1-Distill-Qwen-1.5B's shape (28 layers, width
1536, 12 query / 2 key-value heads, MLP 8960, vocabulary 151,936; bf16) and measures:

1. FCI scoring vs a plain forward at 1024 prompt + 8192 response tokens (docs/method.md §2): the
   scoring pass of attnrl_core.fci.score (streaming step-level attention sums, token log-probs,
   entropies) against the model's own SDPA forward over the same tokens with its logits turned
   into token log-probs (what a trainer pays anyway): median time and peak GPU memory of each,
   and their ratios.
2. hf-engine generation (attnrl_core.rollout.hf.HFEngine, temperature 1): generated tokens/s,
   with the engine's preallocated KV cache and with transformers' DynamicCache.
3. One PPO update (attnrl_core.trainer.TorchTrainer: clipped loss, k3 KL to a frozen reference,
   AdamW, length-sorted passes) over mini-batch-sized random samples: median seconds after a
   warm-up update, and peak memory above the weights and the AdamW state.

4. One PPO update over ONE sequence of the paper's length (1,024 + 8,192 tokens, the paper
   configs' optim.micro_batch_tokens) with gradient checkpointing: peak memory and time with the
   fp32 log-probs in chunks (attnrl_core.trainer.LOGPROB_CHUNK_BYTES) and in one piece.

Weights are random, so the numbers are costs, not quality. Steps are random lengths (32-128
tokens, docs/method.md §1's "\\n\\n" steps at paper scale are of that order), which is what FCI's
cost depends on besides L.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # attnrl_core from this checkout

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from attnrl_core import fci  # noqa: E402
from attnrl_core import trainer as trainer_module  # noqa: E402
from attnrl_core.config import OptimConfig, TrainConfig  # noqa: E402
from attnrl_core.rollout import SamplingParams  # noqa: E402
from attnrl_core.rollout import hf as hf_engine  # noqa: E402
from attnrl_core.rollout.hf import HFEngine  # noqa: E402
from attnrl_core.trainer import PolicySample, TorchTrainer  # noqa: E402

# DeepSeek-R1-Distill-Qwen-1.5B's config.json (a Qwen2.5-Math-1.5B body)
PAPER = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0, tie_word_embeddings=False,
)  # fmt: skip
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=1000, max_position_embeddings=4096, tie_word_embeddings=True,
)  # fmt: skip
SIZES = {
    "paper": dict(prompt=1024, response=8192, reps=3, gen_prompts=64, gen_prompt_len=512, gen_tokens=512, ppo_samples=32, ppo_prompt=512, ppo_response=2048),
    "tiny": dict(prompt=64, response=192, reps=3, gen_prompts=4, gen_prompt_len=16, gen_tokens=16, ppo_samples=4, ppo_prompt=16, ppo_response=32),
}


class Device:
    def __init__(self, name: str) -> None:
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self, baseline: int) -> float | None:
        """Peak memory above `baseline` bytes since the last reset (CUDA only)."""
        if not self.cuda:
            return None
        return (torch.cuda.max_memory_allocated(self.device) - baseline) / 2**30

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else 0


def timed(dev: Device, fn, reps: int) -> tuple[float, float | None]:
    """(median seconds over `reps` calls after one warm-up, peak memory above the start in GiB)."""
    fn()
    dev.sync()
    baseline = dev.allocated()
    dev.reset_peak()
    times = []
    for _ in range(reps):
        dev.sync()
        start = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), dev.peak_gib(baseline)


def random_steps(prompt: int, response: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Step 0 = the prompt, then response steps of 32-128 tokens."""
    spans, start, end = [(0, prompt)], prompt, prompt + response
    while start < end:
        length = int(torch.randint(32, 129, (1,), generator=generator))
        spans.append((start, min(end, start + length)))
        start += length
    return spans


def bench_fci(model, dev: Device, size: dict, vocab: int, chunks: list[int | None]) -> dict:
    g = torch.Generator().manual_seed(0)
    L = size["prompt"] + size["response"]
    input_ids = torch.randint(0, vocab, (1, L), generator=g).to(dev.device)
    mask = torch.ones_like(input_ids)
    spans = [random_steps(size["prompt"], size["response"], g)]

    def plain():
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # SDPA
            fci.token_logprobs_and_entropy(logits, input_ids, mask, block_rows=1024)

    plain_s, plain_mem = timed(dev, plain, size["reps"])
    out = {"tokens": L, "steps": len(spans[0]), "plain_s": plain_s, "plain_peak_gib": plain_mem, "by_chunk": {}}
    # the default block size is tuned for CPU caches; a GPU pays a dozen kernel launches per block,
    # so the same pass is also timed with larger blocks of query rows
    for chunk in chunks:
        score_s, score_mem = timed(dev, lambda: fci.score(model, input_ids, mask, spans, delta=4, aggregate="max", chunk_size=chunk), size["reps"])
        row = {"score_s": score_s, "time_ratio": score_s / plain_s}
        if plain_mem is not None:
            row.update(score_peak_gib=score_mem, memory_ratio=score_mem / plain_mem)
        out["by_chunk"]["default" if chunk is None else str(chunk)] = row
        print(f"  FCI scoring, chunk {chunk or 'default'}: {json.dumps(row)}", flush=True)
    out.update(out["by_chunk"]["default"])
    return out


def bench_generation(model, dev: Device, size: dict, vocab: int) -> dict:
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (size["gen_prompt_len"],), generator=g).tolist() for _ in range(size["gen_prompts"])]
    engine = HFEngine(model, eos_token_id=[], pad_token_id=0, max_batch_size=size["gen_prompts"])  # no EOS: every row runs its budget
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=size["gen_tokens"])
    engine.generate(prompts[:2], SamplingParams(n=1, temperature=1.0, max_new_tokens=4), seed=0)  # warm-up
    out = {"rows": len(prompts), "new_tokens_per_row": size["gen_tokens"]}
    # the engine's preallocated KV buffers, then transformers' DynamicCache (torch.cat every step)
    for name, preallocated in (("preallocated", True), ("dynamic_cache", False)):
        hf_engine.PREALLOCATED_KV_CACHE = preallocated
        try:
            dev.sync()
            start = time.perf_counter()
            tokens = sum(len(gen.token_ids) for row in engine.generate(prompts, params, seed=0) for gen in row)
            dev.sync()
        finally:
            hf_engine.PREALLOCATED_KV_CACHE = True
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "tokens_per_s": tokens / seconds}
    out["tokens_per_s"] = out["preallocated"]["tokens_per_s"]
    out["speedup_vs_dynamic_cache"] = out["dynamic_cache"]["seconds"] / out["preallocated"]["seconds"]
    return out


def bench_update(model, reference, dev: Device, size: dict, vocab: int) -> dict:
    g = torch.Generator().manual_seed(2)
    samples = [
        PolicySample(
            prompt_ids=torch.randint(0, vocab, (size["ppo_prompt"],), generator=g).tolist(),
            response_ids=torch.randint(0, vocab, (size["ppo_response"],), generator=g).tolist(),
            advantages=[float(torch.randn(1, generator=g))] * size["ppo_response"],
        )
        for _ in range(size["ppo_samples"])
    ]
    optim = OptimConfig(lr=1e-6, minibatch_sequences=size["ppo_samples"], micro_batch_tokens=4 * (size["ppo_prompt"] + size["ppo_response"]))
    trainer = TorchTrainer(model, reference, 0, optim, TrainConfig())
    # the first update pays the AdamW state and CUDA's warm-up (8.0 s vs 3.7-4.0 s after, measured)
    seconds, peak = timed(dev, lambda: trainer.update(samples, torch.Generator().manual_seed(3)), size["reps"] - 1)
    model.eval()
    out = {"samples": len(samples), "tokens_per_sample": size["ppo_prompt"] + size["ppo_response"], "seconds": seconds}
    if peak is not None:
        out["peak_gib_above_models_and_adam"] = peak
    return out


def bench_update_pass(model, reference, dev: Device, size: dict, vocab: int) -> dict:
    """Peak memory and time of one PPO update over ONE sequence of the paper's length (1,024 +
    8,192 tokens: optim.micro_batch_tokens 9,216 of experiments/paper), gradient checkpointing on,
    KL on: the fp32 log-probs in chunks (trainer.LOGPROB_CHUNK_BYTES) vs in one piece."""
    g = torch.Generator().manual_seed(4)
    sample = PolicySample(
        prompt_ids=torch.randint(0, vocab, (size["prompt"],), generator=g).tolist(),
        response_ids=torch.randint(0, vocab, (size["response"],), generator=g).tolist(),
        advantages=[1.0] * size["response"],
    )
    optim = OptimConfig(lr=1e-6, minibatch_sequences=1, micro_batch_tokens=size["prompt"] + size["response"])
    out = {"tokens": size["prompt"] + size["response"]}
    for name, chunk_bytes in (("chunked", trainer_module.LOGPROB_CHUNK_BYTES), ("one_piece", 2**62)):
        saved, trainer_module.LOGPROB_CHUNK_BYTES = trainer_module.LOGPROB_CHUNK_BYTES, chunk_bytes
        try:
            trainer = TorchTrainer(model, reference, 0, optim, TrainConfig(gradient_checkpointing=True))
            trainer.update([sample], torch.Generator().manual_seed(5))  # warm-up; creates the AdamW state
            dev.sync()
            baseline = dev.allocated()
            dev.reset_peak()
            start = time.perf_counter()
            trainer.update([sample], torch.Generator().manual_seed(5))
            dev.sync()
            out[name] = {"seconds": time.perf_counter() - start, "peak_gib_above_models_and_adam": dev.peak_gib(baseline)}
        finally:
            trainer_module.LOGPROB_CHUNK_BYTES = saved
            model.gradient_checkpointing_disable()
            del trainer
            model.eval()
        print(f"  update pass, log-probs {name}: {json.dumps(out[name])}", flush=True)
    if dev.cuda:
        out["memory_ratio"] = out["chunked"]["peak_gib_above_models_and_adam"] / out["one_piece"]["peak_gib_above_models_and_adam"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short sequences (a CPU smoke check)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--fci-chunk", type=int, action="append", default=[], help="also time FCI scoring with this many query rows per block (repeatable)")
    parser.add_argument("--skip", action="append", default=[], choices=["fci", "generation", "update", "update_pass"], help="leave a part out")
    args = parser.parse_args(argv)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = Device(name)
    if not args.tiny and not dev.cuda:
        print("bench/gpu.py: no GPU here; run it with --tiny for a CPU smoke check of the same code.", file=sys.stderr)
        return 2
    shape, size = (TINY, SIZES["tiny"]) if args.tiny else (PAPER, SIZES["paper"])
    dtype = torch.float32 if args.tiny else torch.bfloat16
    torch.manual_seed(0)
    t0 = time.perf_counter()
    config = Qwen2Config(**shape, attn_implementation="sdpa")
    with torch.device(dev.device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    results: dict = {
        "device": torch.cuda.get_device_name(dev.device) if dev.cuda else "cpu",
        "model": "tiny" if args.tiny else "DS-R1-Distill-Qwen-1.5B shape, random init",
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    if "fci" not in args.skip:
        results["fci_vs_plain"] = bench_fci(model, dev, size, config.vocab_size, [None, *args.fci_chunk])
        print("FCI scoring vs plain SDPA forward:", json.dumps(results["fci_vs_plain"]), flush=True)
    if "generation" not in args.skip:
        results["generation_hf"] = bench_generation(model, dev, size, config.vocab_size)
        print("hf-engine generation:", json.dumps(results["generation_hf"]), flush=True)
    if "update" not in args.skip:
        with torch.device(dev.device):
            reference = Qwen2ForCausalLM(config).to(dtype).eval().requires_grad_(False)
        reference.load_state_dict(model.state_dict())
        results["ppo_update"] = bench_update(model, reference, dev, size, config.vocab_size)
        print("one PPO update:", json.dumps(results["ppo_update"]), flush=True)
    if "update_pass" not in args.skip:
        if "update" in args.skip:
            with torch.device(dev.device):
                reference = Qwen2ForCausalLM(config).to(dtype).eval().requires_grad_(False)
        results["update_pass"] = bench_update_pass(model, reference, dev, size, config.vocab_size)
        print("one paper-length update pass:", json.dumps(results["update_pass"]), flush=True)
    results["total_s"] = time.perf_counter() - t0
    print(f"total {results['total_s']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
