"""How a phase of an iteration runs as a Prefect task: seeds, retries, timing, fault injection.

A phase task may run twice for the same (run, iteration, phase): Prefect retries it after a
transient failure. A retry re-runs the phase from the same inputs (the phase results of the
iteration so far, handed over by the flow) with the same seed, `phase_seed(run seed,
iteration, phase)`, so on CPU it reproduces the first attempt bit for bit. A deterministic
user error (a NaN loss, bad input) is not retried: it would fail the same way again.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from attnrl_core.errors import AttnRLError

PHASES = ("rollout", "score", "branch", "update", "evaluate", "checkpoint")


def phase_seed(seed: int, iteration: int, phase: str) -> int:
    """A 63-bit seed from (run seed, iteration, phase): stable across processes and machines.

    >>> phase_seed(0, 3, "rollout") == phase_seed(0, 3, "rollout") != phase_seed(0, 4, "rollout")
    True
    """
    digest = hashlib.sha256(f"attnrl/{seed}/{iteration}/{phase}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient failures, never a deterministic user error
    (a NaN loss or a bad input fails the same way every time)."""
    try:
        state.result()
    except AttnRLError:
        return False
    except BaseException:  # noqa: BLE001 - any other failure is worth a retry
        return True
    return True


def phase_task(name: str):
    """A phase as a Prefect task: not cached and its result not persisted (the session is the
    state; results are handed over in memory), retried unless the failure is a user error, and
    reporting its own compute time as metric `time/<name>` in its result's `metrics`, so the flow
    can tell orchestration overhead from work."""

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            result.metrics[f"time/{name}"] = time.perf_counter() - start
            return result

        return task(name=name, cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_unless_user_error)(timed)

    return wrap


class InjectedFault(RuntimeError):
    """Raised once by fault injection (train.fault / ATTNRL_FAULT) to exercise retries."""


class FaultInjector:
    """`train.fault` or ATTNRL_FAULT = 'phase@iteration[,...]' fails that phase's FIRST attempt at
    that iteration (after it has done its work), then lets the retries pass;
    'phase@iteration:kill-rank<r>' instead has trainer rank r's process SIGKILL itself in that
    phase's first attempt (a lost rank, tasks/ranks.py): `rank_to_kill` names it once.

    >>> FaultInjector("update@2:kill-rank1").rank_to_kill("update", 2), FaultInjector("update@2:kill-rank1").rank_to_kill("rollout", 2)
    (1, None)

    >>> faults = FaultInjector("score@2")
    >>> faults.maybe_fail("score", 1)
    >>> try:
    ...     faults.maybe_fail("score", 2)
    ... except InjectedFault as exc:
    ...     print(exc)
    injected fault in phase 'score' at iteration 2 (first attempt)
    >>> faults.maybe_fail("score", 2)  # the retry passes
    """

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self.fired: set[tuple[str, int]] = set()

    def maybe_fail(self, phase: str, iteration: int) -> None:
        spec = os.environ.get("ATTNRL_FAULT") or self.spec
        if not spec:
            return
        for item in spec.split(","):
            name, _, at = item.strip().partition("@")
            if name == phase and at.isdigit() and int(at) == iteration and (phase, iteration) not in self.fired:
                self.fired.add((phase, iteration))
                raise InjectedFault(f"injected fault in phase {phase!r} at iteration {iteration} (first attempt)")

    def rank_to_kill(self, phase: str, iteration: int) -> int | None:
        spec = os.environ.get("ATTNRL_FAULT") or self.spec
        for item in (spec or "").split(","):
            name, _, at = item.strip().partition("@")
            at, _, kill = at.partition(":kill-rank")
            if name == phase and at.isdigit() and int(at) == iteration and kill.isdigit() and (phase, iteration, "kill") not in self.fired:
                self.fired.add((phase, iteration, "kill"))
                return int(kill)
        return None
