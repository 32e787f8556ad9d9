"""Benchmark: streaming FCI scoring vs a plain SDPA forward vs the naive eager path.

    .venv/bin/python bench/fci.py            # L = 512 .. 8192, both models
    .venv/bin/python bench/fci.py --quick    # L = 512, 1024 only (smoke test)

Three ways to run the policy over one sequence (batch 1, no padding):
  (a) plain:  model forward with SDPA attention (logits only) -- the baseline any trainer pays anyway
  (b) score:  attnrl_core.fci.score (the same logits plus per-step FCI, token log-probs, entropies)
  (c) naive:  eager forward with output_attentions=True, then docs/method.md §2 on the returned L x L maps
              (what the release does; needs every layer's attention at once)

Time: one process per (model, L) runs the methods interleaved, round by round, so that load
from other jobs on a shared machine hits them alike; the table shows the median CPU time
(time.process_time, the process's own work: steadier than wall time on a loaded machine) and the
ratio of median wall times next to it. Torch runs one thread unless --threads says otherwise.

Memory: each (model, L, method) runs in a fresh process: the peak resident set (getrusage
ru_maxrss) during one call minus the peak before it (model built, inputs made, a 64-token warm-up
done), i.e. the extra memory the call needs at its peak, torch's allocations included. It is
measured twice: "live" with MALLOC_MMAP_THRESHOLD_=131072, so glibc returns every freed tensor
of >= 128 KiB to the OS at once and the peak is the peak of live tensors; "rss" with the default
allocator, whose dynamic mmap threshold keeps freed memory in the heap (what a user sees, but
partly allocator luck: a second plain forward can add 30 MB more).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
    # the tiny policy's shape (the tiny world): 4 layers, width 128, 4 heads (2 kv)
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=110),
    # a wider random Qwen2: 12 heads, d=768, 4 layers
    "wide": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=12,
                 num_key_value_heads=12, vocab_size=1000),
}
# A real pretrained model, opt-in (`--models smollm2`): SmolLM2-135M-Instruct as `make real-model`
# writes it (30 layers, width 576, 9 heads / 3 kv, vocabulary 49,152), its weights as trained.
REAL = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, path="models/smollm2-135m-instruct"),
}
METHODS = ("plain", "score", "naive")


def build(model_name: str, L: int, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if model_name in REAL:
        from transformers import AutoModelForCausalLM

        folder = Path(__file__).resolve().parents[1] / REAL[model_name]["path"]
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return (model, *make_batch(model.config.vocab_size, L, seed))
    config = Qwen2Config(**MODELS[model_name], max_position_embeddings=max(L, 64), tie_word_embeddings=True)
    return (Qwen2ForCausalLM(config).eval(), *make_batch(config.vocab_size, L, seed))


def make_batch(vocab_size: int, L: int, seed: int = 0):
    """One unpadded sequence: a 64-token prompt, then response steps of 8..48 tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (1, L), generator=g)
    spans, start = [(0, min(64, L))], min(64, L)
    while start < L:
        end = min(L, start + int(torch.randint(8, 49, (1,), generator=g)))
        spans.append((start, end))
        start = end
    return ids, torch.ones_like(ids), [spans]


def naive_fci(model, ids, mask, spans, delta=4):
    """Release-style: every layer's full attention from eager, then docs/method.md §2 with step one-hots."""
    import torch

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(ids, attention_mask=mask, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    L, S = ids.shape[1], len(spans[0])
    members = torch.zeros(L, S)  # (L, S)
    for k, (s, e) in enumerate(spans[0]):
        members[s:e, k] = 1.0
    sizes = members.sum(0)
    later = torch.ones(S, S).tril(-delta)  # [j, k] = 1 where j >= k + delta
    best = torch.zeros(S)
    for A in out.attentions:  # (1, H, L, L)
        alpha = members.T @ A[0] @ members / (sizes[:, None] * sizes[None, :])  # (H, S, S)
        best = torch.maximum(best, (alpha * later).sum(1).amax(0))  # (S,)
    return out.logits, best


def runner(method: str, model):
    from attnrl_core.fci import score

    return {
        "plain": lambda i, m, s: model(i, attention_mask=m, use_cache=False).logits,
        "score": lambda i, m, s: score(model, i, m, s),
        "naive": lambda i, m, s: naive_fci(model, i, m, s),
    }[method]


def warm_up(run, ids, mask) -> None:
    run(ids[:, :64], mask[:, :64], [[(0, 32), (32, 64)]])  # threads, kernels, allocator


def memory_worker(model_name: str, L: int, method: str, threads: int) -> dict:
    """Fresh process: extra peak RSS of one call over the process's peak just before it."""
    import torch

    torch.set_num_threads(threads)
    model, ids, mask, spans = build(model_name, L)
    run = runner(method, model)
    with torch.no_grad():
        warm_up(run, ids, mask)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(ids, mask, spans)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_peak_mb": (after - before) / 1024, "peak_mb": after / 1024}


def time_worker(model_name: str, L: int, methods: list[str], repeats: int, threads: int) -> dict:
    """One process, methods interleaved round by round so that load from other jobs hits all alike.

    Returns per method the median CPU time (process_time: this process's own work, steady on a
    shared machine) and the median wall time.
    """
    import torch

    torch.set_num_threads(threads)
    model, ids, mask, spans = build(model_name, L)
    runs = {m: runner(m, model) for m in methods}
    cpu = {m: [] for m in methods}
    wall = {m: [] for m in methods}
    with torch.no_grad():
        for m in methods:
            warm_up(runs[m], ids, mask)
            runs[m](ids, mask, spans)
        for _ in range(repeats):
            for m in methods:
                c0, w0 = time.process_time(), time.perf_counter()
                runs[m](ids, mask, spans)
                cpu[m].append(time.process_time() - c0)
                wall[m].append(time.perf_counter() - w0)
    return {m: {"cpu_s": statistics.median(cpu[m]), "wall_s": statistics.median(wall[m])} for m in methods}


def naive_fits(model_name: str, L: int, limit_gb: float) -> bool:
    """The eager path holds layers x heads x L x L fp32 maps at once (plus one layer's softmax)."""
    cfg = {**MODELS, **REAL}[model_name]
    held = (cfg["num_hidden_layers"] + 2) * cfg["num_attention_heads"] * L * L * 4
    return held / 2**30 <= limit_gb


def call_worker(args: list[str], env: dict) -> dict | None:
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  worker {' '.join(args)} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only L = 512, 1024")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, *REAL])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steady numbers on a shared machine)")
    parser.add_argument("--naive-limit-gb", type=float, default=6.0,
                        help="skip the naive path where its attention maps alone would exceed this")
    parser.add_argument("--time-worker", nargs=3, metavar=("MODEL", "L", "METHODS"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=3, metavar=("MODEL", "L", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_worker:
        name, L, methods = args.time_worker
        print(json.dumps(time_worker(name, int(L), methods.split(","), args.repeats, args.threads)))
        return
    if args.memory_worker:
        name, L, method = args.memory_worker
        print(json.dumps(memory_worker(name, int(L), method, args.threads)))
        return
    lengths = [512, 1024] if args.quick else args.lengths
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(args.threads))
    live_env = dict(env, MALLOC_MMAP_THRESHOLD_="131072")
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    print(f"(a) plain SDPA forward, (b) fci.score, (c) naive eager + output_attentions. torch threads="
          f"{args.threads}. Time: median CPU s of {args.repeats} interleaved calls (wall b/a beside it). "
          "Memory: extra peak MB of one call, live tensors / default-allocator RSS (see --help).")
    header = (f"{'model':5} {'L':>5} {'steps':>5} | {'a s':>7} {'b s':>7} {'c s':>7} | {'b/a':>5} {'c/a':>6} "
              f"{'wall':>5} | {'live a':>7} {'b':>7} {'c':>7} | {'b/a':>5} {'c/a':>6} | "
              f"{'rss a':>7} {'b':>7} {'c':>7} | {'b/a':>5} {'c/a':>6}")
    print(header)
    print("-" * len(header))

    def cell(x, width, spec):
        return format(x, f"{width}{spec}") if x is not None else "-".rjust(width)

    def columns(a, b, c, key, spec):
        ratio_c = c[key] / a[key] if c else None
        return (f"{a[key]:7{spec}} {b[key]:7{spec}} {cell(c and c[key], 7, spec)} | "
                f"{b[key] / a[key]:5.2f} {cell(ratio_c, 6, '.2f')}")

    for name in args.models:
        for L in lengths:
            methods = [m for m in METHODS if m != "naive" or naive_fits(name, L, args.naive_limit_gb)]
            times = call_worker(["--time-worker", name, str(L), ",".join(methods), *common], env)
            live = {m: call_worker(["--memory-worker", name, str(L), m, *common], live_env) for m in methods}
            rss = {m: call_worker(["--memory-worker", name, str(L), m, *common], env) for m in methods}
            if not times or not all(x.get(m) for x in (live, rss) for m in ("plain", "score")):
                continue
            steps = len(make_batch({**MODELS, **REAL}[name]["vocab_size"], L)[2][0])
            wall = times["score"]["wall_s"] / times["plain"]["wall_s"]
            print(f"{name:5} {L:>5} {steps:>5} | "
                  f"{columns(*(times.get(m) for m in METHODS), 'cpu_s', '.3f')} {wall:5.2f} | "
                  f"{columns(*(live.get(m) for m in METHODS), 'extra_peak_mb', '.1f')} | "
                  f"{columns(*(rss.get(m) for m in METHODS), 'extra_peak_mb', '.1f')}", flush=True)


if __name__ == "__main__":
    main()
