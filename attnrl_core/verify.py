"""The outcome verifier (docs/method.md §9): is a response's final answer equal to the reference?

A response is correct if either path says so:

1. Rule path (in this process, microseconds): the last \\boxed{...} (or \\fbox{...}, or
   `\\boxed 7`) of the text after the last "</think>", equal to the reference after MATH-style
   normalisation (Hendrycks' `strip_string` family), or equal as an exact number
   ("0.5" = "\\frac{1}{2}" = "1/2" = ".50").
2. Fallback: math-verify (`verify(gold, pred)`, gold = parse("\\boxed{" + reference + "}"))
   in a worker PROCESS, bounded by `timeout_s` from the caller's side.

    >>> is_correct("12 + 7 = 19\\n\\nThe answer is \\\\boxed{19}", "19")
    True
    >>> is_correct("<think>\\\\boxed{3}</think> so \\\\boxed{0.75}", "\\\\frac{3}{4}")   # rule path
    True
    >>> is_correct("\\\\boxed{\\\\sqrt{4}}", "2")                                      # fallback
    True

Model output is untrusted. Nothing in it is evaluated as code: the rule path only ever converts
strings that a strict regex accepted as plain digits (and never more than `MAX_NUMBER_CHARS` of
them, so CPython's quadratic str->int never runs on a huge number), every scan is linear, and
math-verify (which can hang forever on e.g. 9^{9^{9^{9}}}, and whose own limits rely on
signal.alarm, i.e. the main thread only) runs in a spawned worker that is killed and replaced
when it overruns. Prefect runs tasks in threads, so all of this is safe from any thread.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
# Imported before our atexit hook is registered, so that hook runs FIRST at exit (atexit is
# LIFO): multiprocessing's own exit hook joins non-daemonic children, which would wait forever
# on workers that were not told to stop yet.
import multiprocessing.util
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from functools import lru_cache

from attnrl_core.errors import AttnRLError

THINK_END = "</think>"
# A \boxed{} answer longer than this is not an answer; bounds the brace scan.
MAX_BOXED_CHARS = 2000
# More digits than this and a string is not compared as a number (CPython refuses str->int
# past 4300 digits and is quadratic below that; references are short).
MAX_NUMBER_CHARS = 1000
# math-verify sees only the end of the answer text: the final answer lives there, and its cost
# grows with length (16 kB: ~5-10 ms here, 64 kB: ~30 ms).
FALLBACK_TAIL_CHARS = 16384
# The worker's address-space cap: a memory bomb (e.g. a huge power) fails with MemoryError in
# the worker instead of pushing the training machine into swap before the timeout fires.
WORKER_MEMORY_BYTES = 4 << 30
# A fresh worker imports sympy + math-verify (~1-2 s); its start is not charged to timeout_s.
WORKER_START_TIMEOUT_S = 120.0
# verify_batch runs the fallbacks on several workers once there are at least this many
# (bench/verify.py: below it, thread start-up and a possibly cold second worker cost more than
# the parallelism saves).
PARALLEL_MIN_FALLBACKS = 8


# ----------------------------------------------------------------------------------------------
# Rule path: extraction, normalisation, exact numbers
# ----------------------------------------------------------------------------------------------


def answer_region(response: str) -> str:
    """The text after the last "</think>" (the whole response if there is none).

    >>> answer_region("<think>maybe \\\\boxed{1}</think> so \\\\boxed{2}")
    ' so \\\\boxed{2}'
    """
    cut = response.rfind(THINK_END)
    return response if cut < 0 else response[cut + len(THINK_END) :]


def last_boxed(text: str, max_chars: int = MAX_BOXED_CHARS) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (balanced braces) or `\\boxed TOKEN`.

    Returns None when there is no box, when the last one never closes, or when its content is
    longer than `max_chars` (the scan stops there, so this is linear in the answer, not the
    text). Escaped braces \\{ \\} inside do not count.

    >>> last_boxed("x = \\\\boxed{1} or rather \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed("so \\\\boxed 7$.")
    '7'
    >>> last_boxed("\\\\boxed{1} then \\\\boxed{2") is None   # the last box is unbalanced
    True
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    n = len(text)
    j = i
    while j < n and j - i < max_chars and text[j].isspace():
        j += 1
    if j >= n:
        return None
    if text[j] != "{":
        # "\boxed 7": MATH's shorthand needs a space; "\boxedx" is some other macro.
        if j == i:
            return None
        end = j
        while end < n and end - j <= max_chars and not text[end].isspace() and text[end] != "$":
            end += 1
        token = text[j:end]
        return token if 0 < len(token) <= max_chars else None
    close = _closing_brace(text, j, stop=min(n, j + max_chars + 2))
    return text[j + 1 : close] if close >= 0 else None


def _closing_brace(s: str, open_at: int, stop: int | None = None) -> int:
    """Index of the brace closing s[open_at] == "{" before `stop`, or -1. An escaped character
    (\\{, \\}, \\\\) is skipped: those braces are literal."""
    depth = 0
    k = open_at
    n = len(s) if stop is None else stop
    while k < n:
        c = s[k]
        if c == "\\":
            k += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return -1


_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|operatorname)\s*\{")
_UNIT_WORDS = re.compile(r"[A-Za-z][A-Za-z .]*")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SHORT_LHS = re.compile(r"[A-Za-z]{1,2}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT_SLASH_INT = re.compile(r"(-?\d+)/(\d+)")
_DECIMAL = re.compile(r"(-?)(\d*)\.(\d+)")


def _strip_text_macros(s: str) -> str:
    """\\text{...}-like macros: a trailing unit is dropped, anything else unwrapped.

    "10\\text{ cm}^2" -> "10", "\\text{(A)}" -> "(A)", "\\mbox{odd}" -> "odd". One left-to-right
    pass; a macro that never closes is kept verbatim.
    """
    out: list[str] = []
    has_value = False  # is there anything before this macro for a unit to follow?
    pos = 0
    while True:
        m = _TEXT_MACRO.search(s, pos)
        if m is None:
            out.append(s[pos:])
            break
        close = _closing_brace(s, m.end() - 1)
        if close < 0:
            out.append(s[pos:])
            break
        out.append(s[pos : m.start()])
        has_value = has_value or bool(s[pos : m.start()].strip())
        content = s[m.end() : close]
        # A word after a value is its unit ("5 \text{ dollars}"); MATH drops everything from
        # the unit on ("\text{ cm}^2" as well).
        if has_value and _UNIT_WORDS.fullmatch(content.strip() or "-"):
            break
        out.append(content)
        has_value = has_value or bool(content.strip())
        pos = close + 1
    return "".join(out)


def _fix_shorthand_args(s: str, macro: str, n_args: int) -> str:
    """Brace single-character arguments: \\frac12 -> \\frac{1}{2}, \\sqrt3 -> \\sqrt{3}.

    Braced arguments are copied as they are ("\\frac1{72}" -> "\\frac{1}{72}").
    """
    parts = s.split(macro)
    out = [parts[0]]
    for part in parts[1:]:
        out.append(macro)
        rest = part
        for _ in range(n_args):
            if rest.startswith("{"):
                close = _closing_brace(rest, 0)
                if close < 0:
                    break
                out.append(rest[: close + 1])
                rest = rest[close + 1 :]
            elif rest[:1].isalnum():
                out.append("{" + rest[0] + "}")
                rest = rest[1:]
            else:
                break
        out.append(rest)
    return "".join(out)


def _canonical_decimal(s: str) -> str:
    """"2.50" -> "2.5", "3.0" -> "3", ".5" -> "0.5", "-0.0" -> "0"; other strings unchanged."""
    m = _DECIMAL.fullmatch(s)
    if m is None:
        return s
    sign, whole, frac = m.groups()
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    text = whole + ("." + frac if frac else "")
    return text if text == "0" else sign + text


def normalize_answer(s: str) -> str:
    """MATH-style normal form of an answer string (Hendrycks' strip_string, extended).

    Drops spaces, \\left/\\right, \\!, thin spaces, \\displaystyle, dollars, degrees, \\% and %,
    trailing \\text{} units and full stops, a leading "+" and "x =" / "k=" (one or two letters);
    unwraps \\text{} and \\mbox{}; \\dfrac and \\tfrac -> \\frac; braces \\frac12 and \\sqrt3;
    "1,000" -> "1000"; "a/b" (integers) -> "\\frac{a}{b}"; decimals lose trailing zeros
    (".50" -> "0.5", "3.0" -> "3"); one pair of outer braces goes.

    >>> normalize_answer("x = \\\\dfrac12")
    '\\\\frac{1}{2}'
    >>> normalize_answer("\\\\$1,000.00")
    '1000'
    >>> normalize_answer("10\\\\text{ cm}^2")
    '10'
    >>> normalize_answer("45^\\\\circ")
    '45'
    """
    s = s.strip()
    spacing = (("\n", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("{,}", ","))
    for old, new in spacing:
        s = s.replace(old, new)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = _LEFT_RIGHT.sub("", s)
    for degree in ("^{\\circ}", "^\\circ", "\\circ", "°"):
        s = s.replace(degree, "")
    s = _strip_text_macros(s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _SHORT_LHS.fullmatch(lhs.strip()):
            s = rhs
    s = "".join(s.split()).rstrip(".")  # "5." ends a sentence, not a number
    s = _fix_shorthand_args(s, "\\sqrt", 1)
    s = _fix_shorthand_args(s, "\\frac", 2)
    if s.startswith("+"):
        s = s[1:]
    if len(s) >= 2 and s[0] == "{" and _closing_brace(s, 0) == len(s) - 1:
        s = s[1:-1]
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    m = _INT_SLASH_INT.fullmatch(s)
    if m is not None:
        s = "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"
    return _canonical_decimal(s)


_INTEGER = re.compile(r"-?\d+")
_PLAIN_DECIMAL = re.compile(r"-?\d*\.\d+")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


def exact_number(s: str, max_chars: int = MAX_NUMBER_CHARS) -> tuple[Fraction, bool] | None:
    """A normalised answer as an exact number: (value, is_decimal), or None.

    Only strings that a strict regex accepts are converted ("-17", "0.75", "\\frac{3}{4}",
    "-\\frac{-3}{4}" after normalize_answer turned "3/4" into "\\frac{3}{4}"); `is_decimal` marks
    a decimal point, which math-verify compares after rounding (so "0.333333" may equal 1/3
    there but never here). Longer than `max_chars`: None, before any conversion.

    >>> exact_number("\\\\frac{6}{8}")
    (Fraction(3, 4), False)
    >>> exact_number("0.75")
    (Fraction(3, 4), True)
    """
    if len(s) > max_chars:
        return None
    if _INTEGER.fullmatch(s):
        return Fraction(int(s)), False
    if _PLAIN_DECIMAL.fullmatch(s):
        return Fraction(s), True
    m = _LATEX_FRACTION.fullmatch(s)
    if m is not None and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), False
    return None


_NUMBER_SHAPED = re.compile(r"[-+]?[\d.,\s]+")


def rule_verdict(
    boxed: str | None,
    reference: str,
    max_number_chars: int = MAX_NUMBER_CHARS,
) -> bool | None:
    """True / False when the rule path can decide, None when math-verify must.

    True: equal after normalisation, or equal exact numbers. False (without math-verify) only
    where math-verify could not disagree: two different exact integers/fractions with no
    decimal point and no percent sign (math-verify compares those exactly; tests check the
    agreement), or a number-shaped answer longer than `max_number_chars` digits.

    >>> rule_verdict("\\\\dfrac{3}{4}", "3/4"), rule_verdict("18", "17"), rule_verdict("\\\\sqrt{4}", "2")
    (True, False, None)
    """
    if boxed is None:
        return None
    pred, ref = normalize_answer(boxed), normalize_answer(reference)
    if pred and pred == ref:
        return True
    pred_num, ref_num = exact_number(pred, max_number_chars), exact_number(ref, max_number_chars)
    if pred_num is not None and ref_num is not None:
        if pred_num[0] == ref_num[0]:
            return True
        has_percent = "%" in boxed or "%" in reference
        if not (pred_num[1] or ref_num[1] or has_percent):
            return False
        return None
    if len(pred) > max_number_chars and _NUMBER_SHAPED.fullmatch(boxed):
        return False
    return None


# ----------------------------------------------------------------------------------------------
# Fallback: math-verify in a pool of spawned worker processes
# ----------------------------------------------------------------------------------------------


def _fallback_worker_main(conn, parent_pid: int, memory_bytes: int) -> None:
    """Worker process: answer (limit_s, [(reference, text), ...]) requests, a bool per item.

    Runs in its own main thread, so math-verify's signal.alarm limits work here; they are set
    just above the caller's limit and only matter if the caller died (the caller kills the
    worker at its own limit). A watchdog thread exits when the parent is gone (SIGKILL, no
    atexit), so a worker never outlives the run.
    """
    import resource
    import signal
    import time

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


class _Worker:
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
            target=_fallback_worker_main,
            args=(child_end, os.getpid(), memory_bytes),
            name="attnrl-verify",
            daemon=False,  # daemonic children get SIGTERMed by multiprocessing in forked kids
        )
        self.process.start()
        child_end.close()
        self.ready = False

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout_s):
            raise AttnRLError(
                f"The math-verify worker process (pid {self.process.pid}) did not start within "
                f"{timeout_s:.0f} s. It imports sympy and math_verify in a fresh Python "
                f"(multiprocessing spawn): check that `python -c 'import math_verify'` works in "
                f"this environment and that the machine is not out of memory or processes."
            )
        try:
            message = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise AttnRLError(
                f"The math-verify worker process died while starting (exit code "
                f"{self.process.exitcode}). Check that math-verify==0.9.0 is installed in "
                f"this environment (`python -c 'import math_verify'`)."
            ) from exc
        self.ready = message == "ready"

    def ask(self, items: list[tuple[str, str]], timeout_s: float) -> list[bool]:
        """Verdicts for a prefix of `items`: all of them, or those before the first one that
        overran timeout_s (or killed the worker). One message out, one verdict back per item,
        so a chunk costs one round trip, and item k's clock starts when item k-1's answer
        arrives (the worker takes them in order)."""
        # Worker-side alarms sit just above our limit: a backstop, never the first to fire.
        worker_limit = int(math.ceil(timeout_s)) + 1
        verdicts: list[bool] = []
        try:
            self.conn.send((worker_limit, items))
            for _ in items:
                if not self.conn.poll(timeout_s):
                    break
                verdicts.append(bool(self.conn.recv()))
        except (EOFError, OSError):
            pass
        return verdicts

    def kill(self) -> None:
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


class FallbackPool:
    """A persistent, thread-safe pool of math-verify worker processes (spawn start method).

    A call holds one worker for its chunk of items; a worker that overruns the caller's limit
    on an item is killed and a fresh one started in its place. Workers start on demand, up to
    `capacity` (raised by verify_batch's `workers`). Waiting for a free or starting worker is
    not charged to any item's time limit.
    """

    def __init__(self, capacity: int, memory_bytes: int = WORKER_MEMORY_BYTES) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._memory_bytes = memory_bytes
        self._capacity = max(1, capacity)
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._starting = 0  # slots reserved by threads that are starting a worker
        self._closed = False
        self.owner_pid = os.getpid()

    def ensure_capacity(self, n: int) -> None:
        with self._cond:
            self._capacity = max(self._capacity, n)
            self._cond.notify_all()

    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._cond:
            return sorted(w.process.pid for w in self._all)

    def _start_worker(self) -> _Worker:
        """Start a worker in a slot already reserved in self._starting (outside the lock:
        a spawn start takes tens of milliseconds)."""
        try:
            worker = _Worker(self._ctx, self._memory_bytes)
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            closed = self._closed
            if not closed:
                self._all.add(worker)
        if closed:
            worker.kill()
            raise RuntimeError("the verifier's math-verify pool was shut down (interpreter exit)")
        return worker

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the verifier's math-verify pool was shut down (interpreter exit)")
                if self._idle:
                    return self._idle.pop()
                if len(self._all) + self._starting < self._capacity:
                    self._starting += 1
                    break
                self._cond.wait()
        return self._start_worker()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
        worker.stop(grace_s=0.5)

    def _replace(self, worker: _Worker, restart: bool = True) -> None:
        worker.kill()
        with self._cond:
            self._all.discard(worker)
            restart = restart and not self._closed
            if restart:
                self._starting += 1
            self._cond.notify()
        if restart:
            # Start the replacement now: it imports math-verify while we carry on.
            fresh = self._start_worker()
            self._release(fresh)

    def check(self, items: list[tuple[str, str]], timeout_s: float,
              start_timeout_s: float = WORKER_START_TIMEOUT_S) -> list[bool]:
        """math-verify's verdicts on (reference, text) pairs, in order, on one worker at a time.

        An item that takes over `timeout_s` is False; its worker is killed and replaced and the
        items after it go to the replacement.
        """
        verdicts: list[bool] = []
        while len(verdicts) < len(items):
            worker = self._acquire()
            try:
                worker.wait_ready(start_timeout_s)
            except BaseException:
                self._replace(worker, restart=False)  # it could not start: do not loop on it
                raise
            if not worker.process.is_alive():
                # Died while idle (e.g. the OOM killer): not this text's fault, use a fresh one.
                self._replace(worker)
                continue
            todo = items[len(verdicts) :]
            answered = worker.ask(todo, timeout_s)
            verdicts += answered
            if len(answered) == len(todo):
                self._release(worker)
            else:
                self._replace(worker)
                verdicts.append(False)  # the item that overran
        return verdicts

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
                worker.kill()  # busy in another thread at exit: do not wait for it


_POOL: FallbackPool | None = None
_POOL_LOCK = threading.Lock()


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fallback_pool() -> FallbackPool:
    """The process-wide math-verify pool, created on first use (one per process)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.owner_pid != os.getpid():
            _POOL = FallbackPool(_default_workers())
            atexit.register(_POOL.close)
            # A multiprocessing.Process child never runs atexit hooks: it runs multiprocessing's
            # finalizers, then joins its own (non-daemonic) children, our workers included.
            # A finalizer with an exit priority runs before that join.
            multiprocessing.util.Finalize(None, _POOL.close, exitpriority=10)
        return _POOL


def _forget_pool_after_fork() -> None:
    # A forked child must not share (or kill) its parent's workers, and the lock may have been
    # held by a thread that does not exist in the child.
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _check_timeout(timeout_s: float) -> None:
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise AttnRLError(
            f"verifier timeout_s must be a finite number of seconds > 0 (docs/method.md §9 uses 5.0), "
            f"got {timeout_s!r}."
        )


def _prepare(response: str, reference: str) -> tuple[bool | None, str]:
    """(rule verdict or None, the text math-verify should see)."""
    region = answer_region(response)
    if not region.strip():
        return False, ""
    verdict = rule_verdict(last_boxed(region), reference)
    return verdict, region[-FALLBACK_TAIL_CHARS:]


def is_correct(response: str, reference: str, timeout_s: float = 5.0) -> bool:
    """Is `response`'s final answer equal to `reference`? (docs/method.md §9; never raises on the text.)

    `timeout_s` bounds the math-verify fallback's work (its worker's start-up and waiting for a
    free worker are not charged to it); past it the answer counts as wrong.

    >>> is_correct("The answer is \\\\boxed{-\\\\frac{3}{4}}", "\\\\frac{-3}{4}")
    True
    >>> is_correct("<think>\\\\boxed{5}</think>", "5")                # nothing after </think>
    False
    """
    _check_timeout(timeout_s)
    verdict, text = _prepare(response, reference)
    if verdict is not None:
        return verdict
    return fallback_pool().check([(reference, text)], timeout_s)[0]


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
    Each item keeps its own `timeout_s`.

    >>> verify_batch(["\\\\boxed{2}", "\\\\boxed{3}", "no box"], ["2", "2", "2"])
    [True, False, False]
    """
    if len(responses) != len(references):
        raise ValueError(f"verify_batch got {len(responses)} responses but {len(references)} references")
    _check_timeout(timeout_s)
    if workers is not None and workers < 1:
        raise AttnRLError(f"verify_batch workers must be >= 1 (or None for all CPUs), got {workers!r}.")
    results: list[bool] = []
    pending: list[tuple[int, str]] = []
    for i, (response, reference) in enumerate(zip(responses, references)):
        verdict, text = _prepare(response, reference)
        results.append(bool(verdict))
        if verdict is None:
            pending.append((i, text))
    if not pending:
        return results
    pool = fallback_pool()
    items = [(references[i], text) for i, text in pending]
    n_threads = min(workers or _default_workers(), len(pending))
    if n_threads <= 1 or len(pending) < parallel_min_fallbacks:
        verdicts = pool.check(items, timeout_s)
    else:
        pool.ensure_capacity(n_threads)
        # A few chunks per worker: one round trip each, and a slow chunk does not hold up the end.
        size = -(-len(items) // (n_threads * chunks_per_worker))
        chunks = [items[k : k + size] for k in range(0, len(items), size)]
        with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="attnrl-verify") as threads:
            verdicts = [v for chunk in threads.map(lambda c: pool.check(c, timeout_s), chunks) for v in chunk]
    for (i, _), verdict in zip(pending, verdicts):
        results[i] = verdict
    return results
