"""The outcome verifier (docs/method.md §9): is a response's final answer equal to the reference?

A response is correct if either path says so:

1. Rule path (`answer`: in this process, microseconds): the last \\boxed{...} (or \\fbox{...},
   or `\\boxed 7`) of the text after the last "</think>", equal to the reference after
   MATH-style normalisation, or equal as an exact number ("0.5" = "\\frac{1}{2}" = "1/2").
2. Fallback (`pool`, `worker`): math-verify (`verify(gold, pred)`, gold = parse("\\boxed{" + reference +
   "}")) in a worker PROCESS, on the last FALLBACK_TAIL_CHARS of the text, within `timeout_s`
   for the whole call (a worker that is still starting counts against it).

    >>> is_correct("12 + 7 = 19\\n\\nThe answer is \\\\boxed{19}", "19")
    True
    >>> is_correct("<think>\\\\boxed{3}</think> so \\\\boxed{0.75}", "\\\\frac{3}{4}")   # rule path
    True
    >>> is_correct("\\\\boxed{\\\\sqrt{4}}", "2", timeout_s=60.0)                      # fallback
    True

Model output is untrusted. Nothing in it is evaluated as code, every scan of the rule path is
linear, and math-verify (which can hang forever, and whose own limits work in the main thread
only) runs in a worker that is killed and replaced when it overruns. Prefect runs tasks in
threads, so all of this is safe from any thread. Importing this package starts nothing: the
pool, its fork hook and its exit hooks come with the first fallback.
"""

from __future__ import annotations

import math

from attnrl_core.errors import AttnRLError
from attnrl_core.verify.answer import (
    MAX_BOXED_CHARS,
    MAX_NUMBER_CHARS,
    THINK_END,
    answer_region,
    exact_number,
    last_boxed,
    normalize_answer,
    reference_forms,
    rule_verdict,
)
from attnrl_core.verify.pool import WORKER_START_TIMEOUT_S, FallbackPool, default_workers, fallback_pool
from attnrl_core.verify.worker import WORKER_MEMORY_BYTES

__all__ = [
    "FALLBACK_TAIL_CHARS", "MAX_BOXED_CHARS", "MAX_NUMBER_CHARS", "PARALLEL_MIN_FALLBACKS", "THINK_END",
    "WORKER_MEMORY_BYTES", "WORKER_START_TIMEOUT_S", "FallbackPool", "answer_region", "exact_number",
    "fallback_pool", "is_correct", "last_boxed", "normalize_answer", "reference_forms", "rule_verdict", "verify_batch",
]

# math-verify sees only the end of the answer text: the final answer lives there, and its cost
# grows with length (16 kB: ~5-10 ms here, 64 kB: ~30 ms).
FALLBACK_TAIL_CHARS = 16384
# verify_batch runs the fallbacks on several workers once there are at least this many
# (bench/verify.py: below it, thread start-up and a possibly cold second worker cost more than
# the parallelism saves).
PARALLEL_MIN_FALLBACKS = 8


def _check_timeout(timeout_s: float) -> None:
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise AttnRLError(
            f"verifier timeout_s must be a finite number of seconds > 0 (docs/method.md §9 uses 5.0), "
            f"got {timeout_s!r}."
        )


def _prepare(response: str, reference: str) -> tuple[bool | None, str, list[str]]:
    """(rule verdict or None, the text math-verify should see, the reference forms it must try).

    A free-text reference ("C(10, 5), or equivalently 252") counts each of its exact forms
    (`reference_forms`): True if the rule path accepts any, else math-verify tries the forms the
    rule path could not decide; a plain reference is its only form."""
    region = answer_region(response)
    if not region.strip():
        return False, "", []
    boxed = last_boxed(region)
    undecided = []
    for form in reference_forms(reference):
        verdict = rule_verdict(boxed, form)
        if verdict:
            return True, "", []
        if verdict is None:
            undecided.append(form)
    if not undecided:
        return False, "", []
    return None, region[-FALLBACK_TAIL_CHARS:], undecided


def is_correct(response: str, reference: str, timeout_s: float = 5.0) -> bool:
    """Is `response`'s final answer equal to `reference`? (docs/method.md §9; never raises on the text.)

    Returns within `timeout_s` (plus a few milliseconds), whatever the state of the math-verify
    pool: a fallback that has no answer by then, because the text is hard or because no worker
    was ready in time (still starting, or busy with other threads), counts as wrong.

    >>> is_correct("The answer is \\\\boxed{-\\\\frac{3}{4}}", "\\\\frac{-3}{4}")
    True
    >>> is_correct("<think>\\\\boxed{5}</think>", "5")                # nothing after </think>
    False
    """
    _check_timeout(timeout_s)
    verdict, text, forms = _prepare(response, reference)
    if verdict is not None:
        return verdict
    return any(fallback_pool().check([(form, text) for form in forms], timeout_s))


def verify_batch(
    responses: list[str],
    references: list[str],
    timeout_s: float = 5.0,
    workers: int | None = None,
    parallel_min_fallbacks: int = PARALLEL_MIN_FALLBACKS,
    chunks_per_worker: int = 4,
) -> list[bool]:
    """is_correct over pairs; the math-verify fallbacks run on `workers` processes at once.

    The rule path runs inline (~10 microseconds a pair); the fallbacks go to the pool in
    `chunks_per_worker` chunks per worker from `workers` threads (default: the usable CPUs)
    when there are at least `parallel_min_fallbacks` of them, else as one chunk to one worker.
    Each fallback has `timeout_s` on a worker; a thread's wait for its worker runs on its first
    item's clock, and items that no worker took in time are False (attnrl_core.verify.pool's
    docstring). So a cold or busy pool costs at most timeout_s, not its start-up.

    >>> verify_batch(["\\\\boxed{2}", "\\\\boxed{3}", "no box"], ["2", "2", "2"])
    [True, False, False]
    """
    if len(responses) != len(references):
        raise ValueError(f"verify_batch got {len(responses)} responses but {len(references)} references")
    _check_timeout(timeout_s)
    if workers is not None and workers < 1:
        raise AttnRLError(f"verify_batch workers must be >= 1 (or None for all CPUs), got {workers!r}.")
    results: list[bool] = []
    pending: list[tuple[int, str]] = []  # one per (response, reference form) math-verify must decide
    items: list[tuple[str, str]] = []
    for i, (response, reference) in enumerate(zip(responses, references)):
        verdict, text, forms = _prepare(response, reference)
        results.append(bool(verdict))
        if verdict is None:
            for form in forms:
                pending.append((i, text))
                items.append((form, text))
    if not pending:
        return results
    pool = fallback_pool()
    n_threads = min(workers or default_workers(), len(pending))
    if n_threads <= 1 or len(pending) < parallel_min_fallbacks:
        verdicts = pool.check(items, timeout_s)
    else:
        pool.ensure_capacity(n_threads)
        # A few chunks per worker: one round trip each, and a slow chunk does not hold up the end.
        size = -(-len(items) // (n_threads * chunks_per_worker))
        verdicts = pool.check(items, timeout_s, threads=n_threads, chunk_size=size)
    for (i, _), verdict in zip(pending, verdicts):
        results[i] = results[i] or verdict  # any form math-verify accepts
    return results
