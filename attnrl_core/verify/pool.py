"""The math-verify fallback of the verifier (docs/method.md §9): a pool of worker processes.

math-verify can hang forever on hostile text (e.g. 9^{9^{9^{9}}}) and its own limits rely on
signal.alarm, i.e. on the main thread, while Prefect runs tasks in threads. So it runs in
spawned worker processes (attnrl_core.verify.worker) that the caller stops waiting for at its
limit and kills when they overrun it. One pool per process, thread-safe, created on first use.

    >>> pool = fallback_pool()              # the process's pool: nothing starts until it is asked
    >>> pool.check([("2", "\\\\boxed{\\\\sqrt{4}}"), ("2", "\\\\boxed{\\\\sqrt{5}}")], timeout_s=60.0)
    [True, False]

A call's time limit holds for the whole call, whatever the pool's state. A fresh worker needs
~1-2 s to import sympy and math-verify (far more on a loaded machine), so the pool does not
make callers wait for that outside their limit: every wait for a worker, whether it is
starting or busy with another thread's call, runs on the clock of the item it is for (the
first item's clock starts with the call). If no worker is ready in time, the call answers
False for its remaining items, on time, while the workers go on starting in the background
for later calls. (Chosen over starting the pool ahead of need: importing the verifier must
start nothing, and a worker per CPU started up front costs ~60 MB and a CPU-second of imports
each, on a big machine that may need one. A caller that knows it will verify soon can still
start workers early, without waiting: `fallback_pool().warm_up(n)`.)

After a wait for a worker, the first item goes to it alone, as its clock has already run. If
the caller's clock runs out on it while the item still has part of its own limit on the
worker, the worker gets that rest in the background and rejoins the pool if it answers (a
slow start must not get healthy workers killed); a worker that overruns an item's full limit
is killed at once and a replacement started. So a call returns within its
limit plus a small constant: for one item, timeout_s; for several, timeout_s per item on a
worker, plus at most timeout_s of waiting for a worker at the start and after a hang.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
# Imported before our atexit hook is registered, so that hook runs FIRST at exit (atexit is
# LIFO): multiprocessing's own exit hook joins non-daemonic children, which would wait forever
# on workers that were not told to stop yet.
import multiprocessing.util
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from attnrl_core.errors import AttnRLError
from attnrl_core.verify.worker import WORKER_MEMORY_BYTES, Worker

# A worker that has not said "ready" by then is killed, and the next caller gets the error
# (callers never wait this long: each waits for a worker only until its own deadline).
WORKER_START_TIMEOUT_S = 120.0
# A caller that gave up on an item with less than this left of the item's own limit on the
# worker kills the worker itself instead of letting it finish in the background.
FINISH_IN_BACKGROUND_MIN_S = 0.1


class _Job:
    """One check() call's items, shared by the threads working on it: spans of `chunk` items,
    taken in order; the rest of a span cut short by a hung item is given back for any thread.
    A verdict still None at the end is an item no worker took in time: False."""

    def __init__(self, items: list[tuple[str, str]], chunk: int) -> None:
        self.items = items
        self.verdicts: list[bool | None] = [None] * len(items)
        self._spans = deque((lo, min(lo + chunk, len(items))) for lo in range(0, len(items), chunk))
        self._lock = threading.Lock()

    def take(self) -> tuple[int, int] | None:
        with self._lock:
            return self._spans.popleft() if self._spans else None

    def pending(self) -> bool:
        with self._lock:
            return bool(self._spans)

    def give_back(self, lo: int, hi: int) -> None:
        if lo < hi:
            with self._lock:
                self._spans.appendleft((lo, hi))


class FallbackPool:
    """A persistent, thread-safe pool of math-verify worker processes (spawn start method).

    Workers start on demand, up to `capacity` (raised by verify_batch's `workers` or by
    warm_up), in the background: a caller waits for a ready one only until its item's deadline
    (module docstring). A worker that overruns an item's limit is killed and a fresh one started
    in its place.
    """

    def __init__(self, capacity: int, memory_bytes: int = WORKER_MEMORY_BYTES) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._memory_bytes = memory_bytes
        self._capacity = max(1, capacity)
        self._cond = threading.Condition()
        self._idle: list[Worker] = []  # ready and free
        self._all: set[Worker] = set()  # idle, busy and starting
        self._unready: set[Worker] = set()  # started, not yet "ready"
        self._reserved = 0  # slots taken by threads that are starting a worker right now
        self._waiting = 0  # callers waiting for a worker
        self._start_error: AttnRLError | None = None  # a failed start, for the next caller
        self._closed = False
        self.owner_pid = os.getpid()

    def ensure_capacity(self, n: int) -> None:
        with self._cond:
            self._capacity = max(self._capacity, n)
            self._cond.notify_all()

    def pids(self) -> list[int]:
        """Process ids of the live workers, starting ones included (for tests and diagnostics)."""
        with self._cond:
            return sorted(w.process.pid for w in self._all)

    def warm_up(self, n: int, wait_s: float = 0.0) -> int:
        """Start workers until `n` exist (raising the capacity to `n`), ahead of need.

        Waits up to `wait_s` (default: not at all) until `n` workers are idle, i.e. started and
        free, and returns how many are; a worker that failed to start raises its error here.
        """
        self.ensure_capacity(n)
        while True:
            with self._cond:
                self._check_open()
                if len(self._all) + self._reserved >= n:
                    break
                self._reserved += 1
            self._start_worker()
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                self._raise_start_error()
                idle = len(self._idle)
                left = deadline - time.monotonic()
                if idle >= n or left <= 0:
                    return idle
                self._cond.wait(left)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the verifier's math-verify pool was shut down (interpreter exit)")

    def _raise_start_error(self) -> None:
        """(Under the lock.) A worker that could not start: its error goes to one caller."""
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            raise error

    def _start_worker(self) -> None:
        """Start a worker in a slot already reserved in self._reserved. The spawn itself takes
        milliseconds, in the caller's thread (so a daemonic caller gets its error); its
        "ready" is awaited by a background thread."""
        try:
            worker = Worker(self._ctx, self._memory_bytes)
        except BaseException:
            with self._cond:
                self._reserved -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._reserved -= 1
            closed = self._closed
            if not closed:
                self._all.add(worker)
                self._unready.add(worker)
        if closed:
            worker.kill()
            self._check_open()
        threading.Thread(target=self._await_ready, args=(worker,), name="attnrl-verify-start", daemon=True).start()

    def _await_ready(self, worker: Worker) -> None:
        error = worker.wait_ready(WORKER_START_TIMEOUT_S)
        with self._cond:
            self._unready.discard(worker)
            if error is None and not self._closed and worker in self._all:
                self._idle.append(worker)
                self._cond.notify_all()
                return
            self._all.discard(worker)
            if error is not None and not self._closed:
                self._start_error = error
            self._cond.notify_all()
        worker.kill()

    def _acquire(self, deadline: float) -> tuple[Worker | None, bool]:
        """(A ready worker, or None if none was free by `deadline` (time.monotonic()); whether
        the caller had to wait for it).

        Starts one in the background when no worker is free, none is starting for this caller
        already, and the capacity allows."""
        waited = False
        while True:
            with self._cond:
                while True:
                    self._check_open()
                    if self._idle:
                        return self._idle.pop(), waited
                    self._raise_start_error()
                    waited = True
                    starting = len(self._unready) + self._reserved
                    if starting <= self._waiting and len(self._all) + self._reserved < self._capacity:
                        self._reserved += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None, waited
                    self._waiting += 1
                    try:
                        self._cond.wait(left)
                    finally:
                        self._waiting -= 1
            self._start_worker()

    def _release(self, worker: Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify_all()
                return
        worker.stop(grace_s=0.5)

    def _replace(self, worker: Worker, restart: bool = True) -> None:
        worker.kill()
        with self._cond:
            self._all.discard(worker)
            restart = restart and not self._closed
            if restart:
                self._reserved += 1
            self._cond.notify_all()
        if restart:
            self._start_worker()  # it imports math-verify in the background while we carry on

    def _finish_in_background(self, worker: Worker, until: float) -> None:
        """The caller gave up on its item before the item had its own full limit on `worker`
        (the caller's clock had run while it waited): the worker gets the rest of that limit in
        a background thread, then rejoins the pool if it answered or is replaced."""
        if until - time.monotonic() < FINISH_IN_BACKGROUND_MIN_S:
            self._replace(worker)
            return

        def finish() -> None:
            try:
                answered = worker.conn.poll(max(0.0, until - time.monotonic()))
                if answered:
                    worker.conn.recv()
            except (EOFError, OSError):
                answered = False
            try:
                if answered:
                    self._release(worker)
                else:
                    self._replace(worker)
            except Exception:  # noqa: BLE001 - the pool shut down meanwhile: nothing to keep
                logging.getLogger(__name__).debug("verifier worker not kept", exc_info=True)

        threading.Thread(target=finish, name="attnrl-verify-finish", daemon=True).start()

    def _work(self, job: _Job, timeout_s: float, deadline: float) -> None:
        """One thread's share of a job: get a worker by `deadline`, then answer spans on it."""
        items, verdicts = job.items, job.verdicts
        worker: Worker | None = None
        fresh = waited = False  # a worker just acquired; whether the clock ran while we waited
        try:
            while True:
                if worker is None:
                    if not job.pending():
                        return
                    worker, waited = self._acquire(deadline)
                    if worker is None:
                        return  # none ready in time: the items are left to others, or False
                    if not worker.process.is_alive():
                        # Died while idle (e.g. the OOM killer): not a text's fault, use another.
                        self._replace(worker)
                        worker = None
                        continue
                    fresh = True
                span = job.take()
                if span is None:
                    return
                lo, hi = span
                if fresh and waited:
                    # The first item alone: its clock ran while we waited, so it may get less
                    # than its limit here; if so, the worker finishes it in the background.
                    fresh = False
                    sent = time.monotonic()
                    answer = worker.ask([items[lo]], timeout_s, first_until=deadline)
                    verdicts[lo] = bool(answer and answer[0])
                    if not answer:
                        self._finish_in_background(worker, sent + timeout_s)
                        worker = None
                        deadline = time.monotonic() + timeout_s  # the next item's clock
                    job.give_back(lo + 1, hi)
                    continue
                answered = worker.ask(items[lo:hi], timeout_s, first_until=deadline if fresh else None)
                fresh = False
                verdicts[lo : lo + len(answered)] = answered
                if lo + len(answered) < hi:
                    verdicts[lo + len(answered)] = False  # overran its full limit: hostile
                    self._replace(worker)
                    worker = None
                    deadline = time.monotonic() + timeout_s
                    job.give_back(lo + len(answered) + 1, hi)
        finally:
            if worker is not None:
                self._release(worker)

    def check(self, items: list[tuple[str, str]], timeout_s: float, threads: int = 1,
              chunk_size: int | None = None) -> list[bool]:
        """math-verify's verdicts on (reference, text) pairs, in order.

        Each item is False past timeout_s; the first item's clock starts now, so it also covers
        waiting for a worker (module docstring). With `threads` > 1 the items go in spans of
        `chunk_size` to that many threads, each on its own worker.
        """
        if not items:
            return []
        job = _Job(items, chunk_size or len(items))
        deadline = time.monotonic() + timeout_s
        if threads <= 1:
            self._work(job, timeout_s, deadline)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="attnrl-verify") as pool:
                for done in [pool.submit(self._work, job, timeout_s, deadline) for _ in range(threads)]:
                    done.result()
        return [bool(v) for v in job.verdicts]

    def close(self, grace_s: float = 1.0) -> None:
        if os.getpid() != self.owner_pid:
            return  # a forked child running its inherited atexit hooks: not its workers
        with self._cond:
            self._closed = True
            workers = list(self._all)
            idle = set(self._idle)
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
        for worker in workers:
            if worker in idle:
                worker.stop(grace_s)
            else:
                worker.kill()  # busy in another thread, or starting: do not wait for it


# ----------------------------------------------------------------------------------------------
# One pool per process
# ----------------------------------------------------------------------------------------------

_POOL: FallbackPool | None = None
_POOL_LOCK = threading.Lock()
_FORK_HOOK_REGISTERED = False


def default_workers() -> int:
    """The usable CPUs: the pool's capacity and verify_batch's default number of workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fallback_pool() -> FallbackPool:
    """The process-wide math-verify pool, created on first use (one per process)."""
    global _POOL
    _watch_forks()  # before taking the lock: a fork while it is held gets a fresh one
    with _POOL_LOCK:
        if _POOL is None or _POOL.owner_pid != os.getpid():
            _POOL = FallbackPool(default_workers())
            atexit.register(_POOL.close)
            # A multiprocessing.Process child never runs atexit hooks: it runs multiprocessing's
            # finalizers, then joins its own (non-daemonic) children, our workers included.
            # A finalizer with an exit priority runs before that join.
            multiprocessing.util.Finalize(None, _POOL.close, exitpriority=10)
        return _POOL


def _watch_forks() -> None:
    """Register the fork hook, once per process tree (a child inherits it), at first use."""
    global _FORK_HOOK_REGISTERED
    if not _FORK_HOOK_REGISTERED and hasattr(os, "register_at_fork"):
        _FORK_HOOK_REGISTERED = True  # two racing threads register it twice: harmless
        os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _forget_pool_after_fork() -> None:
    # A forked child must not share (or kill) its parent's workers, and the lock may have been
    # held by a thread that does not exist in the child.
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()
