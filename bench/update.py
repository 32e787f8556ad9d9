"""Policy-update time: each mini-batch as one padded pass vs length-sorted passes.

    .venv/bin/python bench/update.py                   # tiny base, 128 sequences, median of 5
    .venv/bin/python bench/update.py --threads 1 --budgets 0 1024 2048 4096

The batch is what one tiny-world iteration trains on: 128 responses sampled (temperature 1)
by the checked-in tiny base (tests/fixtures/tiny_base) to training prompts of all four levels,
so their lengths are the real mix (short level-1 answers next to long level-4 ones). One
update = the old/reference log-prob pass plus an epoch of PPO mini-batches of 64
(`optim.minibatch_sequences`), with the KL reference on, as in experiments/tiny.yaml.

Cases: `optim.micro_batch_tokens` = 0 (each mini-batch one pass padded to its longest row)
and the given budgets. Every case starts from the same weights; cases alternate within each
repeat; medians are printed with the speed-up over budget 0 and the share of computed token
positions that are real tokens rather than padding.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from attnrl_core import data  # noqa: E402
from attnrl_core.config import load_config  # noqa: E402
from attnrl_core.policy import load_policy  # noqa: E402
from attnrl_core.rollout import SamplingParams, make_engine  # noqa: E402
from attnrl_core.batching import computed_positions  # noqa: E402
from attnrl_core.trainer import PolicySample, TorchTrainer  # noqa: E402


def sampled_batch(model, tokenizer, count: int, seed: int) -> list[PolicySample]:
    problems = data.generate_problems((count + 5) // 6, levels=[1, 2, 3, 4], seed=seed, split="train")
    prompts = [tokenizer(data.format_prompt(p.problem), add_special_tokens=False)["input_ids"] for p in problems]
    engine = make_engine("hf", model=model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    groups = engine.generate(prompts, SamplingParams(n=6, temperature=1.0, max_new_tokens=160), seed=seed)
    g = torch.Generator().manual_seed(seed)
    samples = []
    for prompt, group in zip(prompts, groups):
        for gen in group:
            adv = float(torch.randn((), generator=g))
            samples.append(PolicySample(prompt, list(gen.token_ids), [adv] * len(gen.token_ids)))
    return samples[:count]


def real_share(samples: list[PolicySample], minibatch: int, budget: int) -> float:
    """Real tokens / computed positions (rows x longest row) over the epoch's passes."""
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    computed = sum(computed_positions(lengths[start : start + minibatch], budget) for start in range(0, len(lengths), minibatch))
    return sum(lengths) / computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 512, 1024, 2048, 4096])
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if 0 not in args.budgets:
        args.budgets = [0, *args.budgets]

    cfg = load_config(os.path.join(REPO, "experiments/tiny.yaml"), [])
    base, tokenizer = load_policy(os.path.join(REPO, "tests/fixtures/tiny_base"), cfg.model)
    samples = sampled_batch(base, tokenizer, args.sequences, seed=0)
    reference = copy.deepcopy(base).requires_grad_(False)
    o = cfg.optim

    def one_update(budget: int, repeat: int) -> float:
        model = copy.deepcopy(base)
        optim = o.model_copy(update={"minibatch_sequences": args.minibatch, "micro_batch_tokens": budget})
        trainer = TorchTrainer(model, reference, tokenizer.pad_token_id, optim)
        start = time.perf_counter()
        trainer.update(samples, torch.Generator().manual_seed(repeat))
        return time.perf_counter() - start

    for budget in args.budgets:  # warm-up: first-call allocations
        one_update(budget, 12345)
    seconds = {b: [] for b in args.budgets}
    for repeat in range(args.repeats):
        for budget in args.budgets:
            seconds[budget].append(one_update(budget, repeat))

    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    print(f"{len(samples)} sequences, {tokens} tokens, mini-batches of {args.minibatch}, "
          f"threads={torch.get_num_threads()}, repeats={args.repeats} (median)")
    baseline = statistics.median(seconds[0])
    for budget in args.budgets:
        median = statistics.median(seconds[budget])
        share = real_share(samples, args.minibatch, budget)
        label = "one padded pass" if budget == 0 else f"passes of <= {budget} tokens"
        print(f"  micro_batch_tokens={budget:<5d} {label:26s} {median:7.3f} s  real tokens {share:5.1%}  "
              f"speed-up {baseline / median:.2f}x")


if __name__ == "__main__":
    main()
