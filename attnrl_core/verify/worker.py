"""One math-verify worker process: the child's request loop and the parent's handle on it.

The child answers `(limit_s, [(reference, text), ...])` requests with one bool per item, each
sent as soon as it is known, until it reads None or its pipe closes; gold answers are
`parse("\\boxed{" + reference + "}")`, cached (a group's responses share a reference), and
anything the text makes math-verify raise, MemoryError and its TimeoutException included, is
False. The parent's `Worker` sends a chunk in one message and waits for each verdict only
as long as it is told:

    >>> worker = Worker(multiprocessing.get_context("spawn"), WORKER_MEMORY_BYTES)
    >>> worker.wait_ready(timeout_s=60.0) is None          # it imported math-verify
    True
    >>> worker.ask([("2", "\\\\boxed{\\\\sqrt{4}}"), ("3", "\\\\boxed{\\\\sqrt{4}}")], timeout_s=60.0)
    [True, False]
    >>> worker.stop(grace_s=1.0)

A worker caps its own address space (a memory bomb is a MemoryError there, not swap here),
ignores Ctrl-C (its parent stops it) and exits within a second of its parent's death, SIGKILL
included. Its math-verify limits (signal.alarm: they work in its main thread) sit just above
the parent's, as a backstop; the parent kills a worker that overruns (attnrl_core.verify.pool).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from functools import lru_cache

from attnrl_core.errors import AttnRLError

# The worker's address-space cap: a memory bomb (e.g. a huge power) fails with MemoryError in
# the worker instead of pushing the training machine into swap before the timeout fires.
WORKER_MEMORY_BYTES = 4 << 30


def worker_main(conn, parent_pid: int, memory_bytes: int) -> None:
    """Worker process: answer (limit_s, [(reference, text), ...]) requests, a bool per item.

    Runs in its own main thread, so math-verify's signal.alarm limits work here; they are set
    just above the caller's limit and only matter if the caller died (the caller kills the
    worker at its own limit). A watchdog thread exits when the parent is gone (SIGKILL, no
    atexit), so a worker never outlives the run.
    """
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us

    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass  # a platform without RLIMIT_AS still has the caller's time limit

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()

    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    # Its timeouts log a warning per case; the caller counts them as wrong answers.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    @lru_cache(maxsize=4096)
    def gold_of(reference: str, limit_s: int):
        # G responses share a reference: parse it once.
        return parse("\\boxed{" + reference + "}", parsing_timeout=limit_s)

    # Warm-up: the first parse compiles grammars and regexes; do it before saying ready so a
    # request's time budget covers only its own work.
    verify(gold_of("1", 5), parse("\\boxed{1}"))
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        limit_s, items = request
        # One verdict per item as soon as it is known: the caller times each item separately.
        for reference, text in items:
            try:
                pred = parse(text, parsing_timeout=limit_s)
                ok = bool(verify(gold_of(reference, limit_s), pred, timeout_seconds=limit_s))
            except (Exception, TimeoutException):  # noqa: BLE001 - hostile text may raise anything,
                ok = False  # MemoryError included; TimeoutException is a BaseException
            conn.send(ok)


class Worker:
    """One spawned math-verify process and the parent's end of its pipe."""

    def __init__(self, ctx, memory_bytes: int) -> None:
        if multiprocessing.current_process().daemon:
            raise AttnRLError(
                "The verifier's math-verify fallback runs in worker processes, and this is a "
                "daemonic process (e.g. a multiprocessing.Pool worker), which may not start "
                "any. Verify from the main process, from a thread, or from a "
                "concurrent.futures.ProcessPoolExecutor worker (not daemonic) instead."
            )
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.conn = parent_end
        self.process = ctx.Process(
            target=worker_main,
            args=(child_end, os.getpid(), memory_bytes),
            name="attnrl-verify",
            daemon=False,  # daemonic children get SIGTERMed by multiprocessing in forked kids
        )
        self.process.start()
        child_end.close()
        self._kill_lock = threading.Lock()  # close() and a background thread may both kill

    def wait_ready(self, timeout_s: float) -> AttnRLError | None:
        """Wait for the worker's "ready" (it has imported math-verify); the error if it never came."""
        try:
            if not self.conn.poll(timeout_s):
                return AttnRLError(
                    f"The math-verify worker process (pid {self.process.pid}) did not start within "
                    f"{timeout_s:.0f} s. It imports sympy and math_verify in a fresh Python "
                    f"(multiprocessing spawn): check that `python -c 'import math_verify'` works in "
                    f"this environment and that the machine is not out of memory or processes."
                )
            if self.conn.recv() == "ready":
                return None
        except (EOFError, OSError):
            pass
        self.process.join(timeout=1.0)
        return AttnRLError(
            f"The math-verify worker process died while starting (exit code "
            f"{self.process.exitcode}). Check that math-verify==0.9.0 is installed in "
            f"this environment (`python -c 'import math_verify'`)."
        )

    def ask(self, items: list[tuple[str, str]], timeout_s: float, first_until: float | None = None) -> list[bool]:
        """Verdicts for a prefix of `items`: all of them, or those before the first one that
        overran (or killed the worker). One message out, one verdict back per item, so a chunk
        costs one round trip. Item 0's verdict is awaited until `first_until` (a
        time.monotonic() deadline; default timeout_s from now), item k's for timeout_s after
        item k-1's arrived (the worker takes them in order)."""
        # Worker-side alarms sit just above our limit: a backstop, never the first to fire.
        worker_limit = int(math.ceil(timeout_s)) + 1
        verdicts: list[bool] = []
        try:
            self.conn.send((worker_limit, items))
            until = time.monotonic() + timeout_s if first_until is None else first_until
            for _ in items:
                if not self.conn.poll(max(0.0, until - time.monotonic())):
                    break
                verdicts.append(bool(self.conn.recv()))
                until = time.monotonic() + timeout_s
        except (EOFError, OSError):
            pass
        return verdicts

    def kill(self) -> None:
        with self._kill_lock:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5.0)
            self.conn.close()

    def stop(self, grace_s: float) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=grace_s)
        self.kill()
