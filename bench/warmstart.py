"""Warm-start step time: each batch of 64 demonstrations as one padded pass vs length-sorted passes.

    .venv/bin/python bench/warmstart.py                          # 20 steps per case, median of 3
    .venv/bin/python bench/warmstart.py --threads 1 --budgets 0 1024 2048 4096

The batches are the default warm start's own (experiments/tiny.yaml: levels 1-4, flaw 0.6,
its seed), the model the default tiny Qwen2 freshly initialised, so one case = the first
`--steps` optimizer steps of `attnrl warmstart` with `warmstart.micro_batch_tokens` = budget.
Cases alternate within each repeat; per-step medians are printed with the speed-up over budget
0 and the share of computed token positions that are real tokens rather than padding.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import torch

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from attnrl_core import data  # noqa: E402
from attnrl_core.batching import computed_positions  # noqa: E402
from attnrl_core.config import load_config  # noqa: E402
from attnrl_core.policy import build_tokenizer, init_tiny_policy  # noqa: E402
from attnrl_core.sft import encode_demonstrations, train_sft  # noqa: E402
from tasks.warmstart import demonstration_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 512, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if 0 not in args.budgets:
        args.budgets = [0, *args.budgets]

    cfg = load_config(os.path.join(REPO, "experiments/tiny.yaml"), [])
    ws = cfg.warmstart
    tokenizer = build_tokenizer(data.PHRASES)
    batches = list(itertools.islice(demonstration_batches(cfg), args.steps))

    def run(budget: int) -> float:
        model = init_tiny_policy(cfg.model.tiny, tokenizer, seed=ws.seed)
        start = time.perf_counter()
        train_sft(model, tokenizer, iter(batches), args.steps, ws.lr, ws.warmup_steps, ws.weight_decay, micro_batch_tokens=budget)
        return (time.perf_counter() - start) / args.steps

    def real_share(budget: int) -> float:
        real = computed = 0
        for prompts, completions in batches:
            lengths = [len(ids) for ids, _ in encode_demonstrations(tokenizer, prompts, completions)]
            real += sum(lengths)
            computed += computed_positions(lengths, budget)
        return real / computed

    run(args.budgets[0])  # warm-up
    seconds = {b: [] for b in args.budgets}
    for _ in range(args.repeats):
        for budget in args.budgets:
            seconds[budget].append(run(budget))

    print(f"warm-start steps of {ws.batch_size} demonstrations, {args.steps} steps per case, "
          f"threads={torch.get_num_threads()}, repeats={args.repeats} (median s/step)")
    baseline = statistics.median(seconds[0])
    for budget in args.budgets:
        median = statistics.median(seconds[budget])
        label = "one padded pass" if budget == 0 else f"passes of <= {budget} tokens"
        print(f"  micro_batch_tokens={budget:<5d} {label:26s} {median:7.3f} s/step  real tokens {real_share(budget):5.1%}  "
              f"speed-up {baseline / median:.2f}x  ({ws.steps} steps: {median * ws.steps / 60:.1f} min)")


if __name__ == "__main__":
    main()
