"""Paper-scale memory per GPU and iteration time, on paper (docs/scaling.md prints its output).

    .venv/bin/python bench/scaling.py [--response-tokens 4000] [--mfu 0.4]

No GPU and no model download: the two models' shapes are written out below (their config.json
on the hub), the run's settings come from experiments/paper/*.yaml, and the device figures are
the vendors' published peak rates. Memory per GPU of one rank (ZeRO-2, bf16 weights, fp32
masters and Adam moments partitioned over the data-parallel ranks, the frozen KL reference
replicated, the rank's vLLM engine colocated at rollout.vllm.gpu_memory_utilization), and the
transient peaks of one update micro-batch (gradient checkpointing on) and one FCI scoring pass.
Time per iteration from FLOPs at an assumed model-FLOP utilisation (training) and from HBM
bandwidth (decoding), set against the paper's Table 3 (AttnRL: 500 steps in 62.6 h on 8 H100).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attnrl_core.config import load_config  # noqa: E402
from attnrl_core.trainer import LOGPROB_CHUNK_BYTES  # noqa: E402

GB = 1e9
# config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-{1.5B,7B} (Qwen2 architecture, untied embeddings)
MODELS = {
    "1.5b": dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=151936),
    "7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064),
}
# NVIDIA H100 SXM: 80 GB HBM3 at 3.35 TB/s, 989 TFLOP/s dense bf16 (the H800 has the same memory and compute)
DEVICE = dict(memory=80 * GB, bandwidth=3.35e12, flops=989e12)


def parameters(m: dict) -> float:
    d, head = m["hidden"], m["hidden"] // m["heads"]
    attention = d * d * 2 + 2 * d * m["kv_heads"] * head + d + 2 * m["kv_heads"] * head  # q, o; k, v (+ biases)
    mlp = 3 * d * m["intermediate"]
    return m["layers"] * (attention + mlp + 2 * d) + 2 * m["vocab"] * d + d  # + embeddings and lm_head (untied)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--response-tokens", type=float, default=4000, help="mean response length (the 8,192 budget is the max)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model-FLOP utilisation of the update and scoring passes")
    parser.add_argument("--decode-efficiency", type=float, default=0.5, help="share of HBM bandwidth decoding achieves")
    args = parser.parse_args()
    for name, m in MODELS.items():
        cfg = _paper_config(name)
        P = parameters(m)
        ranks, tp = cfg.train.ranks, cfg.rollout.vllm.tensor_parallel_size
        gpus = ranks * tp
        d, V, L = m["hidden"], m["vocab"], m["layers"]
        seq = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens  # longest sequence
        mb = max(cfg.optim.micro_batch_tokens, seq)  # tokens of one update pass
        kv_per_token = L * 2 * m["kv_heads"] * (d // m["heads"]) * 2  # bytes, bf16
        static = {
            "policy weights (bf16)": 2 * P,
            "gradients (bf16, ZeRO-2 slice)": 2 * P / ranks,
            "fp32 masters + Adam m, v (slice)": 12 * P / ranks,
            "KL reference (bf16)": 2 * P if cfg.optim.kl_coef > 0 else 0.0,
        }
        vllm_share = cfg.rollout.vllm.gpu_memory_utilization * DEVICE["memory"]
        vllm_weights = 2 * P / tp
        transient = {
            f"update pass: checkpointed hidden states ({mb} tokens)": mb * L * d * 2,
            "update pass: one layer recomputed (34 x tokens x d bytes)": 34 * mb * d,
            # measured on one H200 (bench/gpu.py part 4): the whole transient of a 9,216-token pass
            # of the 1.5B shape, full bf16 gradients and AdamW's step included, was 18.4 GiB
            "update pass: bf16 logits + 2 grads (3 x tokens x V x 2 B), 4 fp32 1-GiB chunks": 3 * mb * V * 2 + 4 * LOGPROB_CHUNK_BYTES,
            f"scoring pass: logits of {cfg.rollout.max_batch_size} x {seq} tokens (bf16)": cfg.rollout.max_batch_size * seq * V * 2,
        }
        print(f"\n== DS-R1-Distill-Qwen-{name.upper()}: {P / 1e9:.2f}B parameters; {ranks} ranks x {tp} GPU(s) = {gpus} GPUs")
        for k, v in static.items():
            print(f"  {k:<74}{v / GB:7.1f} GB")
        print(f"  {'vLLM engine share (weights ' + f'{vllm_weights / GB:.1f} GB/GPU, KV cache the rest)':<74}{vllm_share / GB:7.1f} GB")
        resident = sum(static.values()) + vllm_share
        print(f"  {'resident':<74}{resident / GB:7.1f} GB of {DEVICE['memory'] / GB:.0f}")
        for k, v in transient.items():
            print(f"  {k:<74}{v / GB:7.1f} GB")
        peak_update = resident + sum(v for k, v in transient.items() if k.startswith("update"))
        peak_score = resident + sum(v for k, v in transient.items() if k.startswith("scoring"))
        print(f"  {'peak during an update pass':<74}{peak_update / GB:7.1f} GB")
        print(f"  {'peak during a scoring pass':<74}{peak_score / GB:7.1f} GB")
        kv_tokens = (vllm_share - vllm_weights) / (kv_per_token / tp)
        print(f"  KV cache holds {kv_tokens / 1e3:.0f}k tokens per engine ({kv_per_token / 1e3:.1f} kB/token)")

        # one iteration (paper settings): 64 prompts x 6 responses, N=2 points x T=2 continuations
        l = args.response_tokens
        prompts, G = cfg.batch.prompts, cfg.rollout.group_size
        initial = prompts * G
        continuations = initial * cfg.branch.num_points * cfg.branch.continuations
        generated = initial * l + continuations * l / 2  # a continuation starts mid-response on average
        trained = cfg.batch.target_sequences * (300 + l)  # root-to-leaf paths, each a whole sequence
        attention = 1 + 2 * L * (300 + l) * d / P / 2  # attention's share on top of 2P per token (causal)
        train_flops = (8 if cfg.train.gradient_checkpointing else 6) * P * trained * attention  # fwd + bwd (+ recompute)
        ref_flops = 2 * P * trained * attention if cfg.optim.kl_coef > 0 else 0.0
        score_flops = 2 * P * initial * (300 + l) * attention
        trainers = ranks  # one trainer per rank (a rank's other TP GPUs serve its engine only)
        t_train = (train_flops + ref_flops + score_flops) / (trainers * DEVICE["flops"] * args.mfu)
        engines = ranks
        concurrent = min(256, kv_tokens / l)  # sequences an engine decodes at once
        step = (vllm_weights + concurrent * (l / 2) * kv_per_token / tp) / (DEVICE["bandwidth"] * args.decode_efficiency)
        rate = engines * concurrent / step  # tokens/s of all engines
        t_gen = max(generated / rate, cfg.data.max_response_tokens * step)  # the longest response is sequential
        total = t_gen + t_train
        print(f"  iteration: {generated / 1e6:.1f}M tokens generated at ~{rate / 1e3:.0f}k tok/s -> {t_gen:.0f} s "
              f"(the longest response alone: {cfg.data.max_response_tokens * step:.0f} s); {trained / 1e6:.1f}M tokens trained, "
              f"{(train_flops + ref_flops + score_flops) / 1e15:.0f} PFLOP at {args.mfu:.0%} MFU on {trainers} GPUs -> {t_train:.0f} s")
        print(f"  = {total:.0f} s per step, {cfg.train.iterations} steps in {total * cfg.train.iterations / 3600:.1f} h "
              f"(without evaluation){'; paper Table 3: 500 steps in 62.6 h = 451 s per step' if name == '1.5b' else ''}")


def _paper_config(name: str):
    """The paper config as shipped, with stand-ins for the data paths it reads from the environment."""
    os.environ.setdefault("ATTNRL_DEEPSCALER", "deepscaler.parquet")
    os.environ.setdefault("ATTNRL_EVAL_DIR", "eval")
    return load_config(f"experiments/paper/ds-r1-distill-qwen-{name}.yaml", [])


if __name__ == "__main__":
    main()
