"""The verifier (docs/method.md §9): rule path, math-verify fallback in worker processes, hostile text.

The math-verify pool is started once for the module (the `pool` fixture: two workers, ~1-2 s)
and shared. Time bounds use TIMEOUT_S = 1.0 to keep the suite quick; SLACK_S absorbs a loaded,
shared CPU. A call's limit covers waiting for a worker that is still starting, so a test that
needs verdicts from a cold or just-replaced worker waits for it first (`ready`) or asks with a
generous limit (60 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl_core.errors import AttnRLError
from attnrl_core.verify import (
    FallbackPool,
    answer_region,
    exact_number,
    fallback_pool,
    is_correct,
    last_boxed,
    normalize_answer,
    rule_verdict,
    verify_batch,
)

REPO = Path(__file__).resolve().parent.parent.parent
TIMEOUT_S = 1.0
SLACK_S = 1.5
# math-verify hangs on these (it stops only at its own signal.alarm, i.e. never in a thread).
POWER_TOWER = "\\boxed{9^{9^{9^{9}}}}"
NESTED_FRACS = "\\boxed{" + "\\frac{1}{" * 200 + "2" + "}" * 200 + "}"


@pytest.fixture(scope="module")
def pool() -> FallbackPool:
    """The shared pool, with two workers started and ready (so timings exclude the spawn)."""
    ready(fallback_pool())
    assert is_correct("\\boxed{\\sqrt{4}}", "2")
    return fallback_pool()


def ready(pool: FallbackPool) -> None:
    """Wait until two workers are started and idle: a timeout's replacement may still be
    importing, and a call's limit would count the wait for it."""
    assert pool.warm_up(2, wait_s=60.0) >= 2
    assert pool.check([("1", "\\boxed{1}")], timeout_s=60.0) == [True]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child that is not yet reaped is a zombie: gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------------------------
# last_boxed, normalize_answer, exact_number: worked examples
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("The answer is \\boxed{19}", "19"),
        ("\\boxed{1} no wait \\boxed{2}.", "2"),  # the last box wins
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not structure
        ("\\boxed {7}", "7"),
        ("so \\boxed 7$.", "7"),  # MATH's "\boxed 7" shorthand
        ("\\fbox{7}", "7"),
        ("\\boxed{1} and \\fbox{2}", "2"),
        ("$\\boxed{12}$", "12"),
        ("no box", None),
        ("\\boxed{1} then \\boxed{2", None),  # the last box never closes
        ("\\boxedx{3}", None),  # another macro
        ("\\boxed{}", ""),
        ("\\boxed{" + "1" * 3000 + "}", None),  # longer than any answer
    ],
)
def test_last_boxed(text, want):
    assert last_boxed(text) == want


def test_answer_region_takes_text_after_last_think():
    assert answer_region("<think>\\boxed{1}</think>a</think>b") == "b"
    assert answer_region("no think") == "no think"


@pytest.mark.parametrize(
    "raw, want",
    [
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\tfrac34", "\\frac{3}{4}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{72}", "\\frac{1}{72}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("3/4", "\\frac{3}{4}"),
        ("-3/4", "\\frac{-3}{4}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("45^\\circ", "45"),
        ("45^{\\circ}", "45"),
        ("\\$1,000.00", "1000"),
        ("1{,}000", "1000"),
        ("1\\,000", "1000"),
        ("50\\%", "50"),
        ("10\\text{ cm}^2", "10"),
        ("10 \\mbox{ inches}", "10"),
        ("\\text{(B)}", "(B)"),
        ("x = 3", "3"),
        ("y=2x+1", "2x+1"),
        ("+5", "5"),
        (".5", "0.5"),
        ("2.50", "2.5"),
        ("3.0", "3"),
        ("-0.0", "0"),
        ("{7}", "7"),
        ("  7 \n", "7"),
        ("1,2", "1,2"),  # a pair, not a thousands separator
        ("5.", "5"),
        ("\\displaystyle \\frac{3}{4}", "\\frac{3}{4}"),
    ],
)
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


@pytest.mark.parametrize(
    "s, want",
    [
        ("-17", (Fraction(-17), False)),
        ("0.75", (Fraction(3, 4), True)),
        ("\\frac{6}{8}", (Fraction(3, 4), False)),
        ("-\\frac{-3}{4}", (Fraction(3, 4), False)),
        ("\\frac{1}{0}", None),
        ("1e5", None),
        ("\\sqrt{4}", None),
        ("7" * 1001, None),  # over the digit cap: never handed to int()
    ],
)
def test_exact_number(s, want):
    assert exact_number(s) == want


def test_exact_number_refuses_huge_numbers_fast():
    t0 = time.perf_counter()
    assert exact_number("7" * 1_000_000) is None
    assert time.perf_counter() - t0 < 0.05


# ----------------------------------------------------------------------------------------------
# is_correct: the rule path (decided without math-verify)
# ----------------------------------------------------------------------------------------------

RULE_CASES = [
    # correct
    ("12 + 7 = 19\n\nThe answer is \\boxed{19}", "19", True),
    ("\\boxed{-17}", "-17", True),
    ("\\boxed{\\frac{3}{4}}", "3/4", True),
    ("\\boxed{3/4}", "\\frac{3}{4}", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{\\tfrac34}", "\\frac{3}{4}", True),
    ("\\boxed{\\frac12}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{.5}", "0.5", True),
    ("\\boxed{0.50}", "1/2", True),
    ("\\boxed{2.0}", "2", True),
    ("\\boxed{+5}", "5", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{\\$1,000.00}", "1000", True),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{45^\\circ}", "45", True),
    ("\\boxed{10\\text{ cm}}", "10", True),
    ("\\boxed{\\text{(B)}}", "(B)", True),
    ("\\boxed{x = 3}", "3", True),
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)", True),
    ("\\boxed{\\sqrt3}", "\\sqrt{3}", True),
    ("\\boxed{\\frac{-3}{4}}", "-\\frac{3}{4}", True),
    ("\\boxed{-\\frac{3}{4}}", "-3/4", True),
    ("\\boxed{\\frac{6}{8}}", "\\frac{3}{4}", True),
    ("\\boxed{ 7 }", "7", True),
    ("so \\boxed 7$.", "7", True),
    ("\\fbox{7}", "7", True),
    ("$\\boxed{12}$", "12", True),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", True),
    # the last box wins; </think>
    ("\\boxed{1}\n\nNo wait: \\boxed{2}", "2", True),
    ("\\boxed{2}\n\nNo wait: \\boxed{1}", "2", False),
    ("<think>maybe \\boxed{5}</think>The answer is \\boxed{6}", "6", True),
    ("<think>maybe \\boxed{5}</think>The answer is \\boxed{6}", "5", False),
    ("<think>a</think>b</think>\\boxed{3}", "3", True),
    # incorrect
    ("\\boxed{18}", "17", False),
    ("\\boxed{\\frac{3}{5}}", "\\frac{3}{4}", False),
    ("\\boxed{-17}", "17", False),
    ("\\boxed{3/4}", "4/3", False),
    ("\\boxed{\\frac{1}{2}}", "2", False),
    ("\\boxed{10}", "100", False),
    # empty
    ("", "1", False),
    ("   \n ", "1", False),
    ("<think>\\boxed{5}</think>", "5", False),
    ("<think>\\boxed{5}</think>   ", "5", False),
]


@pytest.mark.parametrize("response, reference, want", RULE_CASES)
def test_rule_path(response, reference, want):
    region = answer_region(response)
    if region.strip():
        assert rule_verdict(last_boxed(region), reference) is want  # decided without math-verify
    assert is_correct(response, reference) is want


# ----------------------------------------------------------------------------------------------
# is_correct: the math-verify fallback
# ----------------------------------------------------------------------------------------------

FALLBACK_CASES = [
    ("\\boxed{\\sqrt{4}}", "2", True),
    ("\\boxed{2x+2}", "2(x+1)", True),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", True),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{50\\%}", "0.5", True),  # math-verify reads 50% as 1/2 ...
    ("\\boxed{50\\%}", "\\frac{1}{2}", True),  # ... so the percent shortcut stays off
    ("\\boxed{0.333333}", "\\frac{1}{3}", True),  # math-verify rounds floats to 6 places
    ("The answer is 19.", "19", True),  # no \boxed: math-verify finds the number
    ("\\boxed{\\sqrt{5}}", "2", False),
    ("\\boxed{2x+3}", "2(x+1)", False),
    ("no answer here", "2", False),
    ("\\boxed{1} then \\boxed{2", "2", False),  # unbalanced last box
]


@pytest.mark.parametrize("response, reference, want", FALLBACK_CASES)
def test_fallback_path(pool, response, reference, want):
    assert rule_verdict(last_boxed(answer_region(response)), reference) is None  # math-verify decides
    assert is_correct(response, reference) is want


EXACT_PAIRS = [("17", "18"), ("-17", "17"), ("\\frac{3}{4}", "\\frac{4}{3}"), ("3/4", "\\frac{3}{5}"),
               ("\\frac{-1}{2}", "\\frac{1}{2}"), ("0", "-1"), ("\\frac{57}{8}", "7"), ("\\dfrac{2}{3}", "1")]


@pytest.mark.parametrize("boxed, reference", EXACT_PAIRS)
def test_wrong_exact_numbers_shortcut_agrees_with_math_verify(pool, boxed, reference):
    """The rule path rejects different exact numbers without math-verify: it must agree."""
    assert rule_verdict(boxed, reference) is False
    texts = [f"The answer is \\boxed{{{boxed}}}", f"The answer is \\boxed{{{reference}}}"]
    assert pool.check([(reference, t) for t in texts], timeout_s=30.0) == [False, True]


# ----------------------------------------------------------------------------------------------
# Hostile input: False, within the time limit, never raises, nothing executed
# ----------------------------------------------------------------------------------------------

HOSTILE = {
    "nested_braces_100kB": "\\boxed{" + "{" * 100_000,
    "closing_braces_100kB": "}" * 100_000 + "\\boxed{",
    "million_digit_box": "\\boxed{" + "7" * 1_000_000 + "}",
    "million_digit_text": "The answer is " + "7" * 1_000_000,
    "thousand_digit_box": "\\boxed{" + "7" * 1500 + "}",
    "python_in_box": "\\boxed{__import__('os').system('touch {pwned}')}",
    "python_bare": "__import__('os').system('touch {pwned}')",
    "unbalanced_latex": "\\boxed{\\frac{1}{\\sqrt{2} \\left( \\right",
    "nul_bytes": "\\boxed{7\x00}\x00\x00",
    "surrogates": "\\boxed{\ud800\udfff}",
    "frac_chain_nested": NESTED_FRACS,
    "frac_chain_long": "\\boxed{" + "+".join(f"\\frac{{1}}{{{i}}}" for i in range(1, 3000)) + "}",
    "frac_heads": "\\frac{" * 30_000,
    "boxed_heads": "\\boxed{" * 50_000,
    "power_tower": POWER_TOWER,
    "dollars": "$" * 100_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_false_and_bounded(pool, tmp_path, name):
    pwned = tmp_path / "pwned"
    response = HOSTILE[name].replace("{pwned}", str(pwned))
    ready(pool)
    t0 = time.perf_counter()
    verdict = is_correct(response, "7" if "7" in response else "3", timeout_s=TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    assert verdict is False
    assert elapsed < TIMEOUT_S + SLACK_S, f"{name} took {elapsed:.2f} s"
    assert not pwned.exists()


def test_timeout_kills_and_replaces_the_stuck_worker(pool):
    ready(pool)
    before = set(pool.pids())
    t0 = time.perf_counter()
    assert pool.check([("3", POWER_TOWER)], timeout_s=TIMEOUT_S) == [False]
    elapsed = time.perf_counter() - t0
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S
    after = set(pool.pids())
    killed = before - after
    assert len(killed) == 1 and not any(alive(pid) for pid in killed)
    assert len(after) == len(before)  # a replacement was started at once
    assert is_correct("\\boxed{\\sqrt{9}}", "3")  # and it works


def test_items_after_a_hung_one_go_to_the_replacement(pool):
    ready(pool)
    items = [("4", "\\boxed{\\sqrt{16}}"), ("3", POWER_TOWER),
             ("5", "\\boxed{\\sqrt{25}}"), ("5", "\\boxed{6}")]
    assert pool.check(items, timeout_s=TIMEOUT_S) == [True, False, True, False]


def test_time_limit_holds_in_worker_threads(pool):
    """Prefect runs tasks in threads: math-verify's signal.alarm would raise there."""
    ready(pool)
    jobs = [(POWER_TOWER, "3", False), ("\\boxed{\\sqrt{16}}", "4", True), ("\\boxed{2x+2}", "2(x+1)", True),
            ("\\boxed{19}", "19", True)]

    def timed(job):
        t0 = time.perf_counter()
        verdict = is_correct(job[0], job[1], timeout_s=TIMEOUT_S)
        return verdict, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as threads:
        results = list(threads.map(timed, jobs))
    total = time.perf_counter() - t0
    assert [v for v, _ in results] == [want for _, _, want in jobs]
    # One hung case holds one worker for TIMEOUT_S; the others run on the rest of the pool
    # (or after it, on its replacement).
    assert results[0][1] < TIMEOUT_S + SLACK_S
    assert total < 2 * TIMEOUT_S + 3 * SLACK_S


COLD_TIMEOUT_S = 2.0
COLD_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from attnrl_core.verify import fallback_pool, is_correct
    CASES = [("\\\\boxed{2\\\\pi}", "\\\\pi"), ("\\\\boxed{(2, 1)}", "(1,2)")]  # both need math-verify

    def calls(k):
        out = []
        for response, reference in (CASES[k % 2], CASES[(k + 1) % 2]):
            t0 = time.perf_counter()
            verdict = is_correct(response, reference, timeout_s=float(sys.argv[1]))
            out.append((verdict, time.perf_counter() - t0))
        return out

    if __name__ == "__main__":
        with ThreadPoolExecutor(max_workers=4) as threads:  # as Prefect runs tasks
            results = [r for rs in threads.map(calls, range(4)) for r in rs]
        later = fallback_pool().check([("\\\\pi", "\\\\boxed{\\\\pi}")], timeout_s=60.0)
        print(json.dumps({"calls": results, "later": later}), flush=True)
    """
)


def run_script(tmp_path, source: str, *args: str) -> subprocess.CompletedProcess:
    """Run `source` as a fresh Python (a cold pool); a hang fails the test, workers included."""
    script = tmp_path / "script.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the script hung")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_time_limit_holds_on_a_cold_pool_in_worker_threads(tmp_path):
    """The pool's start-up (1-2 s quiet, 10+ s busy) counts against the call's limit: each call
    returns on time (False if no worker was ready), and the workers finish starting for later."""
    proc = run_script(tmp_path, COLD_CHILD, str(COLD_TIMEOUT_S))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["calls"]) == 8
    for verdict, elapsed in report["calls"]:
        assert verdict is False  # 2pi != pi, (2,1) != (1,2): wrong, on time or not
        assert elapsed < COLD_TIMEOUT_S + SLACK_S, report["calls"]
    assert report["later"] == [True]


def test_a_call_waiting_for_a_busy_worker_returns_on_time():
    busy = FallbackPool(capacity=1)
    try:
        assert busy.warm_up(1, wait_s=60.0) == 1
        with ThreadPoolExecutor(max_workers=1) as thread:
            hung = thread.submit(busy.check, [("3", POWER_TOWER)], TIMEOUT_S)
            time.sleep(0.2)  # the tower holds the only worker, then its replacement starts
            t0 = time.perf_counter()
            verdicts = busy.check([("4", "\\boxed{\\sqrt{16}}")], timeout_s=TIMEOUT_S)
            elapsed = time.perf_counter() - t0
            assert hung.result() == [False]
        assert verdicts in ([False], [True])
        assert elapsed < TIMEOUT_S + SLACK_S
    finally:
        busy.close()


IMPORT_CHILD = textwrap.dedent(
    """
    import multiprocessing, os, threading
    hooks = []
    register_at_fork = os.register_at_fork
    def spy(**kw):
        hooks.append(kw)
        register_at_fork(**kw)
    os.register_at_fork = spy

    def ours():
        return [h for h in hooks if any((getattr(f, "__module__", None) or "").startswith("attnrl_core") for f in h.values())]

    import attnrl_core.verify as verify
    assert ours() == [] and threading.active_count() == 1 and multiprocessing.active_children() == []
    assert verify.is_correct("\\\\boxed{7}", "7")  # the rule path needs no pool
    assert ours() == [] and threading.active_count() == 1 and multiprocessing.active_children() == []
    verify.fallback_pool()  # creating the pool registers the fork hook, and still starts nothing
    assert len(ours()) == 1 and multiprocessing.active_children() == []
    verify.fallback_pool()
    assert len(ours()) == 1
    print("ok")
    """
)


def test_import_registers_and_starts_nothing(tmp_path):
    proc = run_script(tmp_path, IMPORT_CHILD)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


# ----------------------------------------------------------------------------------------------
# verify_batch
# ----------------------------------------------------------------------------------------------

BATCH = [(r, ref) for r, ref, _ in RULE_CASES + FALLBACK_CASES]


@pytest.mark.parametrize("workers, parallel_min", [(1, 8), (2, 1)])
def test_verify_batch_equals_is_correct(pool, workers, parallel_min):
    responses, references = [r for r, _ in BATCH], [ref for _, ref in BATCH]
    want = [w for _, _, w in RULE_CASES + FALLBACK_CASES]
    got = verify_batch(responses, references, workers=workers, parallel_min_fallbacks=parallel_min)
    assert got == want


def test_verify_batch_with_a_hung_item(pool):
    ready(pool)
    responses = [POWER_TOWER] + ["\\boxed{\\sqrt{%d}}" % (k * k) for k in range(10)]
    references = ["3"] + [str(k) for k in range(10)]
    t0 = time.perf_counter()
    got = verify_batch(responses, references, timeout_s=TIMEOUT_S, workers=2, parallel_min_fallbacks=1)
    assert got == [False] + [True] * 10
    assert time.perf_counter() - t0 < TIMEOUT_S + 2 * SLACK_S


def test_verify_batch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        verify_batch(["a", "b"], ["a"])
    with pytest.raises(AttnRLError, match="workers must be >= 1"):
        verify_batch(["a"], ["a"], workers=0)
    with pytest.raises(AttnRLError, match="timeout_s"):
        is_correct("\\boxed{1}", "1", timeout_s=0)
    with pytest.raises(AttnRLError, match="timeout_s"):
        verify_batch(["a"], ["a"], timeout_s=float("nan"))


def test_verify_batch_empty():
    assert verify_batch([], []) == []


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

fractions = st.builds(Fraction, st.integers(-10**6, 10**6), st.integers(1, 10**4))


def spellings(value: Fraction) -> list[str]:
    """Ways a model writes the same exact number."""
    p, q = value.numerator, value.denominator
    sign, ap = ("-" if p < 0 else ""), abs(p)
    out = [f"\\frac{{{p}}}{{{q}}}", f"{sign}\\dfrac{{{ap}}}{{{q}}}", f"{p}/{q}",
           f"{sign}\\frac{{{ap * 3}}}{{{q * 3}}}"]
    if q == 1:
        out += [str(p), f"{p}.0", f"+{p}" if p >= 0 else str(p), f"{p:,}"]
    if 10**6 % q == 0:  # terminating decimal
        out.append(f"{float(value):.6f}")
    return out


@settings(max_examples=200, deadline=None)
@given(value=fractions, other=fractions, pick=st.integers(0, 10))
def test_spellings_of_the_same_number_agree(value, other, pick):
    forms = spellings(value)
    boxed = forms[pick % len(forms)]
    reference = forms[0] if value.denominator > 1 else str(value.numerator)
    assert rule_verdict(boxed, reference) is True
    if other != value:
        verdict = rule_verdict(boxed, f"{other.numerator}/{other.denominator}")
        # different numbers: decided False, or left to math-verify when a decimal is involved
        # ("3.0" normalises to the integer "3", compared exactly)
        assert verdict is (None if "." in normalize_answer(boxed) else False)


LATEXISH = st.sampled_from(list("\\{}$%.,=+-/^ 0123456789boxedfractext\n\x00"))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=LATEXISH, max_size=400))
def test_rule_path_never_raises(text):
    assert isinstance(normalize_answer(text), str)
    boxed = last_boxed(text)
    assert boxed is None or isinstance(boxed, str)
    assert rule_verdict(boxed, "\\frac{3}{4}") in (True, False, None)
    assert rule_verdict(text[:50], text[50:100]) in (True, False, None)


def test_rule_path_is_linear_on_long_hostile_text():
    texts = ["\\boxed{" + "\\frac{" * 20_000, "\\text{" * 20_000 + "}" * 20_000,
             "{" * 200_000 + "}" * 200_000, "\\frac1" * 50_000, "1,000" * 40_000]
    for text in texts:
        t0 = time.perf_counter()
        normalize_answer(text)
        rule_verdict(last_boxed(text), "3")
        assert time.perf_counter() - t0 < 1.0, text[:20]


# ----------------------------------------------------------------------------------------------
# Processes: no stray workers at exit (clean or SIGKILL), a fresh pool after fork
# ----------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from attnrl_core.verify import fallback_pool, is_correct
    if __name__ == "__main__":
        assert is_correct("\\\\boxed{\\\\sqrt{4}}", "2", timeout_s=60.0)  # a cold pool: wait for it
        print(" ".join(map(str, fallback_pool().pids())), flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_no_worker_outlives_its_parent(tmp_path, how):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == (0 if how == "exit" else -signal.SIGKILL), proc.stderr
    if how == "exit":
        assert time.perf_counter() - t0 < 60  # atexit stopped the workers (no hang on join)
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    deadline = time.time() + 5.0  # a SIGKILLed parent's workers notice within ~1 s
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


PROCESS_CHILD = textwrap.dedent(
    """
    import multiprocessing, sys
    from attnrl_core.verify import fallback_pool, is_correct

    def work(queue):
        queue.put((is_correct("\\\\boxed{\\\\sqrt{9}}", "3", timeout_s=60.0), fallback_pool().pids()))

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        queue = ctx.Queue()
        child = ctx.Process(target=work, args=(queue,))
        child.start()
        verdict, pids = queue.get(timeout=60)
        child.join(timeout=30)
        print(verdict, child.exitcode, " ".join(map(str, pids)), flush=True)
    """
)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_multiprocessing_child_that_used_the_pool_exits(tmp_path, start_method):
    # A multiprocessing.Process child skips atexit; before the Finalize hook it hung at exit,
    # joining the pool's workers that nobody had told to stop.
    script = tmp_path / "process_child.py"
    script.write_text(PROCESS_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), start_method], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung child and its workers with it
        proc.communicate()
        pytest.fail("the script or its multiprocessing child hung at exit")
    assert proc.returncode == 0, err
    verdict, exitcode, *pids = out.split()
    assert (verdict, exitcode) == ("True", "0")  # exitcode None = still hanging after 30 s
    assert pids and not any(alive(int(p)) for p in pids)


def test_a_worker_that_died_while_idle_is_replaced_not_blamed(pool):
    ready(pool)
    for pid in pool.pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    # Generous limits: the replacements' start-up counts against them.
    assert is_correct("\\boxed{\\sqrt{25}}", "5", timeout_s=60.0)
    squares = ["\\boxed{\\sqrt{%d}}" % (k * k) for k in range(10)]
    got = verify_batch(squares, [str(k) for k in range(10)], timeout_s=60.0, workers=2, parallel_min_fallbacks=1)
    assert got == [True] * 10
    assert all(alive(p) for p in pool.pids())


def test_docstring_examples():
    import doctest

    import attnrl_core.verify
    import attnrl_core.verify.answer
    import attnrl_core.verify.pool
    import attnrl_core.verify.worker

    for module in (attnrl_core.verify, attnrl_core.verify.answer, attnrl_core.verify.pool, attnrl_core.verify.worker):
        assert doctest.testmod(module).failed == 0, module.__name__


def _fallback_in_daemon(_):
    try:
        is_correct("\\boxed{\\sqrt{4}}", "2")
    except AttnRLError as exc:
        return str(exc)
    return "no error"


def test_daemonic_process_gets_a_clear_error():
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as daemons:
        message = daemons.map(_fallback_in_daemon, [0])[0]
    assert "daemonic process" in message
    assert is_correct("\\boxed{7}", "7")  # the rule path needs no worker


def test_forked_child_gets_its_own_pool(pool):
    parent_pool = fallback_pool()
    ready(parent_pool)
    pids = parent_pool.pids()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse (or stop) the parent's workers
        child_pool = fallback_pool()
        ok = child_pool is not parent_pool and child_pool.owner_pid == os.getpid() and child_pool.pids() == []
        parent_pool.close()  # what the inherited atexit hook does when a forked child exits
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert fallback_pool() is parent_pool and parent_pool.pids() == pids and all(alive(p) for p in pids)
    assert is_correct("\\boxed{\\sqrt{36}}", "6")
