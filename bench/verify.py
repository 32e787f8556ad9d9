"""Verifier throughput: a loop of is_correct calls vs one verify_batch (docs/method.md §9).

    .venv/bin/python bench/verify.py                 # 10,000 mixed responses, median of 3
    .venv/bin/python bench/verify.py --threshold     # one vs two workers by number of fallbacks

The mix mirrors the synthetic world (integer and fraction answers: "-17", "3/4",
"\\frac{3}{4}") plus what a real model writes: equivalent forms the rule path settles, wrong
answers, answers only math-verify accepts (\\sqrt{4} for 2, 2x+2 for 2(x+1), no \\boxed at
all, decimals against fractions), and a few hostile texts that are rejected fast (none hits the
time limit: one that does costs timeout_s on both sides alike and only blurs the ratio).
The math-verify pool and its caches are warmed up before timing, so neither side pays the
worker start-up, and the two sides alternate repeat by repeat.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from fractions import Fraction

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attnrl_core.verify import _prepare, fallback_pool, is_correct, verify_batch  # noqa: E402

HOSTILE = [
    "\\boxed{" + "7" * 1_000_000 + "}",
    "\\boxed{" + "{" * 100_000,
    "\\boxed{__import__('os').system('echo pwned')}",
    "\\boxed{\x00\x00}",
    "\\boxed{\ud800\udfff}",
    "}" * 50_000 + "\\boxed{",
]


def latex(value: Fraction) -> str:
    """The synthetic world's reference spelling: "-17" or "\\frac{3}{4}"."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def answer(rng: random.Random, value: Fraction, reference: str) -> tuple[str, str, str]:
    """(kind, final answer text, reference): 45% right, 30% wrong, 25% for math-verify."""
    u = rng.random()
    if u < 0.45:
        slash = f"{value.numerator}/{value.denominator}" if value.denominator > 1 else f"{value}.0"
        forms = [reference, slash, reference.replace("\\frac", "\\dfrac"), f"x = {reference}"]
        return "rule_right", f"The answer is \\boxed{{{rng.choice(forms)}}}", reference
    if u < 0.75:
        return "rule_wrong", f"The answer is \\boxed{{{latex(value + rng.randint(1, 9))}}}", reference
    r = rng.random()
    if r < 0.3:
        root = f"\\sqrt{{{value * value}}}" if value >= 0 else "\\sqrt{2}"
        return "fallback", f"The answer is \\boxed{{{root}}}", reference
    if r < 0.5:
        return "fallback", f"\\boxed{{2x+{rng.choice([2, 3])}}}", "2(x+1)"
    if r < 0.7:
        return "fallback", f"So the result is {rng.choice([value, value + 1])}.", reference  # no \boxed
    return "fallback", f"\\boxed{{{float(value) + rng.choice([0, 0.1]):.3f}}}", reference  # decimal


def make_mix(n: int, seed: int = 0) -> tuple[list[str], list[str], dict[str, int]]:
    """n (response, reference) pairs; every 500th response is hostile."""
    rng = random.Random(seed)
    responses, references = [], []
    kinds = {"rule_right": 0, "rule_wrong": 0, "fallback": 0, "hostile": 0}
    for i in range(n):
        value = Fraction(rng.randint(-99, 99), rng.choice([1, 1, 1, 2, 3, 4, 8]))
        reference = latex(value)
        steps = "\n\n".join(
            f"{rng.randint(1, 99)} + {rng.randint(1, 99)} = {rng.randint(2, 198)}" for _ in range(3)
        )
        if i % 500 == 499:
            kind, final = "hostile", HOSTILE[(i // 500) % len(HOSTILE)]
        else:
            kind, final, reference = answer(rng, value, reference)
        kinds[kind] += 1
        responses.append(f"{steps}\n\n{final}")
        references.append(reference)
    return responses, references, kinds


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def threshold_table(repeats: int) -> None:
    """Wall time of k fallbacks as one chunk on one worker vs split over two workers."""
    fresh = iter(range(10**9))  # distinct texts: math-verify caches repeated parses

    def fallbacks(k: int, **kw) -> None:
        values = [next(fresh) for _ in range(k)]
        texts = [f"so \\boxed{{\\sqrt{{{v * v}}}}}" for v in values]
        verify_batch(texts, [str(v) for v in values], **kw)

    print("fallbacks   one worker (min / median ms)   two workers (min / median ms)   one/two (min)")
    for k in (1, 2, 4, 8, 16, 32, 64, 256):
        one = [timed(lambda: fallbacks(k, workers=1)) * 1e3 for _ in range(repeats)]
        two = [timed(lambda: fallbacks(k, workers=2, parallel_min_fallbacks=1)) * 1e3 for _ in range(repeats)]
        print(f"{k:9d}   {min(one):10.2f} / {statistics.median(one):8.2f}          "
              f"{min(two):10.2f} / {statistics.median(two):8.2f}          {min(one) / min(two):5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--threshold", action="store_true", help="one vs two workers by fallback count")
    args = parser.parse_args()

    # Start and warm both workers so neither side pays the ~1-2 s spawn + import.
    verify_batch(["\\boxed{\\sqrt{4}}"] * 4, ["2"] * 4, workers=2, parallel_min_fallbacks=1)
    load = os.getloadavg()[0]
    print(f"pool workers: {fallback_pool().pids()}; cpus: {os.cpu_count()}; load average {load:.1f}")

    if args.threshold:
        threshold_table(max(args.repeats, 7))
        return

    responses, references, kinds = make_mix(args.n)
    n_fallback = sum(_prepare(r, ref)[0] is None for r, ref in zip(responses, references))
    print(f"{args.n} responses: {kinds}; sent to math-verify: {n_fallback}")

    answers: dict[str, list[bool]] = {}

    def loop() -> None:
        pairs = zip(responses, references)
        answers["loop"] = [is_correct(r, ref, timeout_s=args.timeout_s) for r, ref in pairs]

    def batch() -> None:
        answers["batch"] = verify_batch(responses, references, timeout_s=args.timeout_s)

    # One untimed pass fills both workers' caches (parsed references); then the two sides
    # alternate so that drifting load on a shared machine hits both alike.
    batch()
    loop_times, batch_times = [], []
    for _ in range(args.repeats):
        loop_times.append(timed(loop))
        batch_times.append(timed(batch))
    assert answers["loop"] == answers["batch"], "is_correct and verify_batch disagree"
    t_loop, t_batch = statistics.median(loop_times), statistics.median(batch_times)
    print(f"accuracy of the mix: {sum(answers['batch']) / args.n:.3f}")
    for name, t, times in (("is_correct loop", t_loop, loop_times), ("verify_batch", t_batch, batch_times)):
        print(f"{name:16s}: {args.n / t:7.0f} responses/s  (median of {[round(x, 2) for x in times]} s)")
    print(f"ratio verify_batch / loop: {t_loop / t_batch:.2f}x  (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
