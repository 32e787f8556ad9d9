"""The pivot world: long solutions whose few pivotal steps are known by construction (`data.world: pivot`).

A testbed for branch criteria, not a model of real reasoning: it puts planning, checking and
combination steps at places the generator knows, among many routine steps written in
interchangeable phrasings, so that a run can count how often a criterion's branch points land on
a pivotal step (`tree/pivot_hit_rate`). It shows whether an implementation of a criterion finds
the steps that matter HERE; whether real models have such steps is another question.

A problem defines several named parts, each a short chain of one-digit operations, and asks
for a signed sum of some of them, named in the order they are defined (one part is a
distractor the question does not use)::

    problem: "Let a=(2-1+7)*3, b=8+5+9, c=9*6+4-2, d=(2-1)*8. Find a+b-d."

The solution (steps separated by "\\n\\n", docs/method.md §1) reads, step by step:

    1    an opener ("Okay.")                                routine, several phrasings
    ..   0-2 filler steps ("Hmm.")                         routine, several phrasings
    p    the plan: "Let me plan: T=a+b-d."                 PIVOTAL: fixes which parts, how combined
    ..   the planned parts, in plan order, one operation per step ("2-1=1", "Then 1+7=8",
         "Next, a=8*3=24": the part's last step names it), each step with one of four
         equivalent leads ("", "Next, ", "Then ", "Now "; combinations after the first
         too)                                              routine
    (c)  sometimes a check of the plan against the question:
         "Check: T=a+b-d. Good."                           PIVOTAL: can catch a plan that left a part out
    ..   combination steps, referring back to the parts' results:
         "a+b=24+22=46", "46-d=46-8=38"                    PIVOTAL
    last "The answer is \\boxed{38}"

The warm start's planted flaw (`warmstart.flaw`, levels `warmstart.flaw_levels`) lives in the
plan: a flawed demonstration's plan leaves out the question's last term, and the rest follows
the plan, so its answer is wrong -- unless the demonstration has a check step, which then says
"Missing <name>.", computes that part and combines all of them (`make_demonstration`). The
steps at which re-sampling can repair a flawed plan are therefore the plan itself and the place
of the check (the first combination step, where a check could have been written).

Where the pivotal steps sit, and the zeroing rules of docs/method.md §2: response step 1 is
always the opener, never pivotal, so `fci.zero_first_step` (which zeroes step 1, and which no
step-start criterion may pick anyway) never hides one; the plan is response step 2, 3 or 4
(after 0-2 fillers), the check and the combination steps come late. No solution writes
"</think>", so `fci.zero_answer_summary` changes nothing here, and `fci.zero_prompt` only
concerns the prompt. The rules still matter through step 1's score: it enters ATB's quantile
threshold and the filter's mean FCI when it is not zeroed.

Level L: L + 2 needed parts (3-6 at levels 1-4) and one distractor; each part has 2-3
one-digit operations on values in 1..60, so that a ~1M-parameter model makes the routine steps
reliably and the outcome turns on the pivotal ones. Solutions have 11-29 steps (about 19 on
average); the parts are computed, and combined, in the order the problem defines them.

    >>> p = problem_at(30, seed=0, levels=(1,))
    >>> p.problem
    'Let a=(2-1+7)*3, b=8+5+9, c=9*6+4-2, d=(2-1)*8. Find a+b-d.'
    >>> p.answer, len(p.solution.split(STEP_SEPARATOR)), p.pivotal_steps
    ('38', 13, (2, 10, 11, 12))
    >>> for step in p.solution.split(STEP_SEPARATOR): print(step)
    Okay.
    Let me plan: T=a+b-d.
    Next, 2-1=1
    Then 1+7=8
    Next, a=8*3=24
    Next, 8+5=13
    b=13+9=22
    Next, 2-1=1
    Then d=1*8=8
    Check: T=a+b-d. Good.
    a+b=24+22=46
    46-d=46-8=38
    The answer is \\boxed{38}

Splits, streams and the held-out set work as in the arithmetic world (attnrl_core/data.py): a
problem's split is `data.split_of(text)`, problem i of a stream is a function of (seed, split, i)
alone, and the solution -- phrasing included -- is a function of the problem text alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from attnrl_core.data import (
    ANSWER_LEAD,
    SPLITS,
    STEP_SEPARATOR,
    SUFFIX,
    Problem,
    _apply,
    _expression_text,
    distinct_heldout,
    split_of,
)
from attnrl_core.errors import AttnRLError

PROBLEM_LEAD = "Let "
QUESTION_LEAD = ". Find "
PLAN_LEAD = "Let me plan: "
CHECK_LEAD = "Check: "
CHECK_GOOD = " Good."
CHECK_MISSING = " Missing "
TARGET = "T"
# Equivalent leads of routine steps ("" = none): interchangeable forks with no consequence.
LEADS = ("", "Next, ", "Then ", "Now ")
OPENERS = ("Let me think.", "Let me see.", "Okay.", "Let me read it.")
FILLERS = ("Hmm.", "Some parts are not needed.", "One part at a time.", "Each part is small.")
NAMES = "abcdefghi"

# Single tokens of the tiny tokenizer for this world (the arithmetic world's data.PHRASES are
# left as they are: its tokenizer and warm-start cache key do not change).
PHRASES: tuple[str, ...] = (
    STEP_SEPARATOR,
    SUFFIX,
    ANSWER_LEAD,
    PLAN_LEAD,
    CHECK_LEAD,
    "Let me ",
    "Next, ",
    "Then ",
    "Now ",
    QUESTION_LEAD,
)

# Kinds of steps; the pivotal ones are the steps the outcome turns on by construction.
KINDS = ("open", "filler", "plan", "compute", "check", "combine", "answer", "other")
PIVOTAL_KINDS = frozenset({"plan", "check", "combine"})


@dataclass(frozen=True)
class PivotWorld:
    """The knobs of the pivot world (config section `data.pivot` sets the first four).

    check_rate: probability that a solution checks its plan against the question before combining.
    max_fillers: filler steps between the opener and the plan: 0..max_fillers, uniform.
    distractors: parts the problem defines but the question does not use.
    min_ops / max_ops: operations per part, uniform in min_ops..max_ops.
    digit_max / value_max: a part starts from a digit 2..digit_max and adds, subtracts or (while
        its value is a single digit) multiplies by digits 1..digit_max; every value stays in
        1..value_max. Routine steps are one-digit arithmetic, so that a ~1M-parameter model can
        make them reliably: the outcome then turns on the pivotal steps, not on arithmetic slips.
    heldout_fraction: share of problem texts in the held-out split (data.split_of).
    """

    check_rate: float = 0.3
    max_fillers: int = 2
    distractors: int = 1
    min_ops: int = 2
    max_ops: int = 3
    digit_max: int = 9
    value_max: int = 60
    heldout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.check_rate <= 1.0:
            raise AttnRLError(f"pivot world: check_rate must be in [0, 1], got {self.check_rate!r}.")
        if self.max_fillers < 0 or self.distractors < 0:
            raise AttnRLError("pivot world: max_fillers and distractors must be >= 0.")
        if not 1 <= self.min_ops <= self.max_ops:
            raise AttnRLError(f"pivot world: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}.")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise AttnRLError("pivot world: heldout_fraction must be strictly between 0 and 1.")
        if not 2 <= self.digit_max <= 9 or self.value_max < 2 * self.digit_max:
            raise AttnRLError("pivot world: need 2 <= digit_max <= 9 and value_max >= 2 * digit_max.")

    def needed_parts(self, level: int) -> int:
        return level + 2

    @classmethod
    def from_config(cls, section) -> "PivotWorld":
        """From the `data.pivot` config section (check_rate, max_fillers, distractors, max_ops)."""
        return cls(**section.model_dump())


def max_level(world: PivotWorld) -> int:
    return len(NAMES) - world.distractors - 2


# ------------------------------------------------------------------------------ generation


def _validate(levels: Sequence[int], split: str, world: PivotWorld) -> tuple[int, ...]:
    levels = tuple(levels)
    top = max_level(world)
    if not levels or any(isinstance(l, bool) or not isinstance(l, int) or not 1 <= l <= top for l in levels):
        raise AttnRLError(
            f"data: the pivot world's levels must be integers in 1..{top} (level L asks for L + 2 parts), got {levels!r}."
        )
    if split not in SPLITS:
        raise AttnRLError(f"data: split must be one of {SPLITS}, got {split!r}.")
    return levels


def _part(rng: random.Random, world: PivotWorld) -> tuple[int, list[tuple[str, int]]]:
    """A start digit and one-digit operations, uniform over those that keep the value in range."""
    top = world.digit_max
    start = rng.randint(2, top)
    value, operations = start, []
    for _ in range(rng.randint(world.min_ops, world.max_ops)):
        feasible = [op for op, ok in (("+", value < world.value_max), ("-", value >= 2), ("*", value <= top and 2 * value <= world.value_max)) if ok]
        operator = rng.choice(feasible)
        if operator == "+":
            operand = rng.randint(1, min(top, world.value_max - value))
        elif operator == "-":
            operand = rng.randint(1, min(top, value - 1))
        else:
            operand = rng.randint(2, min(top, world.value_max // value))
        operations.append((operator, operand))
        value = int(_apply(Fraction(value), operator, operand))
    return start, operations


def _problem_text(rng: random.Random, level: int, world: PivotWorld) -> str:
    needed = world.needed_parts(level)
    names = NAMES[: needed + world.distractors]
    parts = {name: _part(rng, world) for name in names}
    values = {name: _value(*parts[name]) for name in names}
    terms, running = [], 0
    # the question names its parts in the order they are defined (the solution walks the problem
    # left to right); which part is the distractor is drawn
    for k, name in enumerate(sorted(rng.sample(names, needed))):
        sign = "+"
        if k and running - values[name] >= 1 and rng.random() < 0.5:
            sign = "-"
        running += values[name] if sign == "+" else -values[name]
        terms.append((sign, name))
    definitions = ", ".join(f"{name}={_expression_text(*parts[name]).replace(' ', '')}" for name in names)
    return f"{PROBLEM_LEAD}{definitions}{QUESTION_LEAD}{_formula(terms)}."


def _value(start: int, operations: Sequence[tuple[str, int]]) -> int:
    value = Fraction(start)
    for operator, operand in operations:
        value = _apply(value, operator, operand)
    return int(value)


def _formula(terms: Sequence[tuple[str, str]]) -> str:
    """[('+', 'b'), ('+', 'd'), ('-', 'a')] -> 'b+d-a'."""
    return "".join(name if k == 0 else f"{sign}{name}" for k, (sign, name) in enumerate(terms))


def problem_at(
    index: int,
    *,
    seed: int = 0,
    levels: Sequence[int] = (1, 2, 3, 4),
    split: str = "train",
    world: PivotWorld = PivotWorld(),
    max_draws: int = 10_000,
) -> Problem:
    """Problem `index` of the (seed, split) stream of the pivot world, with its solution and the
    1-based indices of its pivotal steps. Level = levels[index % len(levels)]."""
    levels = _validate(levels, split, world)
    if index < 0:
        raise AttnRLError(f"data: a stream index must be >= 0, got {index}.")
    level = levels[index % len(levels)]
    rng = random.Random(f"attnrl-pivot/{seed}/{split}/{index}")
    for _ in range(max_draws):
        text = _problem_text(rng, level, world)
        if split_of(text, world.heldout_fraction) == split:
            break
    else:
        raise AttnRLError(f"data: found no {split} problem of level {level} in {max_draws} draws.")
    steps = solve(text, world)
    answer = steps[-1][0][len(ANSWER_LEAD) : -1]
    return Problem(
        id=f"pivot-{split}-s{seed}-{index}",
        problem=text,
        answer=answer,
        level=level,
        solution=STEP_SEPARATOR.join(step for step, _ in steps),
        pivotal_steps=tuple(k for k, (_, kind) in enumerate(steps, start=1) if kind in PIVOTAL_KINDS),
    )


def generate_problems(
    n: int, levels: Sequence[int] = (1, 2, 3, 4), seed: int = 0, split: str = "train", *, start: int = 0, world: PivotWorld = PivotWorld()
) -> list[Problem]:
    """Problems start..start+n-1 of the (seed, split) stream (see data.generate_problems)."""
    if n < 0 or start < 0:
        raise AttnRLError(f"data: n and start must be >= 0, got n={n}, start={start}.")
    return [problem_at(i, seed=seed, levels=levels, split=split, world=world) for i in range(start, start + n)]


def heldout_set(n: int, levels: Sequence[int] = (1, 2, 3, 4), seed: int = 0, *, world: PivotWorld = PivotWorld()) -> list[Problem]:
    """The first n distinct held-out problems, balanced and interleaved by level (see data.heldout_set)."""
    levels = _validate(levels, "heldout", world)
    return distinct_heldout(n, levels, lambda i: problem_at(i, seed=seed, levels=levels, split="heldout", world=world))


# ------------------------------------------------------------------------------ solutions

_DEFINITION = re.compile(r"([a-z])=([0-9+\-*/()]+)")
_PROBLEM = re.compile(rf"^{PROBLEM_LEAD}(.+){re.escape(QUESTION_LEAD)}([a-z](?:[+-][a-z])*)\.$")
_TOKEN = re.compile(r"\d+|[-+*/]")


def parse_problem(text: str) -> tuple[dict[str, tuple[int, list[tuple[str, int]]]], list[tuple[str, str]]]:
    """(parts: name -> (start, [(operator, operand), ...]), terms: [(sign, name), ...]) of a
    pivot-world problem text; AttnRLError for any other text.

    >>> parse_problem("Let a=(12+7)*3, b=45-9. Find b-a.")
    ({'a': (12, [('+', 7), ('*', 3)]), 'b': (45, [('-', 9)])}, [('+', 'b'), ('-', 'a')])
    """
    match = _PROBLEM.match(text)
    if not match:
        raise AttnRLError(f"not a pivot-world problem: {text!r}")
    parts = {}
    for name, expression in _DEFINITION.findall(match.group(1)):
        pieces = _TOKEN.findall(expression)  # left-to-right chain: parentheses only restate the order
        parts[name] = (int(pieces[0]), [(pieces[k], int(pieces[k + 1])) for k in range(1, len(pieces) - 1, 2)])
    formula = match.group(2)
    terms = [("+", formula[0])] + [(formula[k], formula[k + 1]) for k in range(1, len(formula), 2)]
    if any(name not in parts for _, name in terms):
        raise AttnRLError(f"pivot-world problem asks for an undefined part: {text!r}")
    return parts, terms


def solve(text: str, world: PivotWorld = PivotWorld(), *, omit_last: bool = False) -> list[tuple[str, str]]:
    """The solution of a pivot-world problem as (step text, kind) pairs.

    Its phrasing (opener, fillers, leads) and whether it checks its plan are drawn from a
    generator seeded by the problem text, so the solution is a function of the text alone.
    omit_last=True writes the warm start's flawed demonstration: the plan leaves out the
    question's last term; with a check step the check catches it ("Missing x."), the part is
    computed after the check and the answer is right again; without one the answer is wrong.

    >>> text = "Let a=(12+7)*3, b=45-9+2, c=8*6. Find a-b."
    >>> [kind for _, kind in solve(text)]
    ['open', 'filler', 'plan', 'compute', 'compute', 'compute', 'compute', 'check', 'combine', 'answer']
    >>> for step, _ in solve(text, omit_last=True)[2:]: print(step)   # the check catches the flawed plan
    Let me plan: T=a.
    12+7=19
    Now a=19*3=57
    Check: T=a-b. Missing b.
    Now 45-9=36
    Next, b=36+2=38
    a-b=57-38=19
    The answer is \\boxed{19}
    >>> for step, _ in solve(text, PivotWorld(check_rate=0.0), omit_last=True)[2:]: print(step)  # no check: wrong
    Let me plan: T=a.
    12+7=19
    Now a=19*3=57
    T=a=57
    The answer is \\boxed{57}
    """
    parts, terms = parse_problem(text)
    style = random.Random(f"attnrl-pivot-style/{text}")
    opener = style.choice(OPENERS)
    fillers = [style.choice(FILLERS) for _ in range(style.randint(0, world.max_fillers))]
    checks = style.random() < world.check_rate
    # one lead per operation of every planned part and per combination, drawn whatever is omitted
    op_leads = {name: [style.choice(LEADS) for _ in parts[name][1]] for _, name in terms}
    combine_leads = [style.choice(LEADS) for _ in terms]
    planned = terms[:-1] if omit_last and len(terms) > 1 else list(terms)

    steps = [(opener, "open"), *[(f, "filler") for f in fillers], (f"{PLAN_LEAD}{TARGET}={_formula(planned)}.", "plan")]
    values = {}

    def compute(name: str) -> None:
        start, operations = parts[name]
        value = Fraction(start)
        for k, (operator, operand) in enumerate(operations):
            result = _apply(value, operator, operand)
            named = f"{name}=" if k == len(operations) - 1 else ""
            steps.append((f"{op_leads[name][k]}{named}{int(value)}{operator}{operand}={int(result)}", "compute"))
            value = result
        values[name] = int(value)

    for _, name in planned:
        compute(name)
    combined = list(planned)
    if checks:
        missing = [term for term in terms if term not in planned]
        verdict = f"{CHECK_MISSING}{missing[0][1]}." if missing else CHECK_GOOD
        steps.append((f"{CHECK_LEAD}{TARGET}={_formula(terms)}.{verdict}", "check"))
        for _, name in missing:
            compute(name)
        combined = list(terms)
    running = values[combined[0][1]]
    if len(combined) == 1:
        steps.append((f"{TARGET}={combined[0][1]}={running}", "combine"))
    for k, (sign, name) in enumerate(combined[1:], start=1):
        left = combined[0][1] if k == 1 else str(running)
        new = running + values[name] if sign == "+" else running - values[name]
        # the first combination has no lead: the place where a check may come is a 30/70 choice
        # (check or combine), not a check against four equally likely leads, which greedy
        # decoding would resolve to the check every time
        lead = combine_leads[k] if k > 1 else ""
        steps.append((f"{lead}{left}{sign}{name}={running}{sign}{values[name]}={new}", "combine"))
        running = new
    steps.append((f"{ANSWER_LEAD}{running}}}", "answer"))
    return steps


def make_demonstration(problem: Problem, flaw: float, flaw_levels: Sequence[int] = (3, 4), *, rng: np.random.Generator, world: PivotWorld = PivotWorld()) -> str:
    """The warm-start demonstration (config `warmstart.flaw`): the solution, except that for levels
    in `flaw_levels`, with probability `flaw`, its plan leaves out the question's last term
    (`solve(..., omit_last=True)`). One rng.random() draw per call, as in the arithmetic world.

    >>> p = problem_at(3, levels=(4,))
    >>> make_demonstration(p, 0.0, rng=np.random.default_rng(0)) == p.solution
    True
    """
    if not 0.0 <= flaw <= 1.0:
        raise AttnRLError(f"warmstart.flaw must be in [0, 1], got {flaw!r}.")
    flawed = rng.random() < flaw and problem.level in tuple(flaw_levels)
    return STEP_SEPARATOR.join(step for step, _ in solve(problem.problem, world, omit_last=flawed))


# --------------------------------------------------------------------------- pivot labels

_NUMBER = r"\d+"
_COMPUTE = re.compile(rf"^(?:[a-z]=)?{_NUMBER}[-+*/]{_NUMBER}={_NUMBER}$")
_COMBINE = re.compile(rf"^(?:([a-z])|{_NUMBER})[+-]([a-z])={_NUMBER}[+-]{_NUMBER}={_NUMBER}$")
_SINGLE = re.compile(rf"^{TARGET}=([a-z])={_NUMBER}$")


def step_kind(step: str, names: str | set[str] = NAMES) -> str:
    """The kind of one step (separator stripped) of a pivot-world response, read from its text:
    one of KINDS. `names` = the parts the problem defines (a combination must combine those).

    >>> [step_kind(s) for s in ("Let me plan: T=b+d.", "Then 71-b=71-36=35", "Now a=19*3=57", "12+7=19")]
    ['plan', 'combine', 'compute', 'compute']
    >>> [step_kind(s) for s in ("Check: T=b+d. Good.", "The answer is \\\\boxed{3}", "Hmm.", "71-=3")]
    ['check', 'answer', 'filler', 'other']
    """
    step = step.strip()
    if step.startswith(PLAN_LEAD):
        return "plan"
    if step.startswith(CHECK_LEAD):
        return "check"
    if step.startswith(ANSWER_LEAD):
        return "answer"
    if step in OPENERS:
        return "open"
    if step in FILLERS:
        return "filler"
    body = step
    for lead in LEADS[1:]:
        if body.startswith(lead):
            body = body[len(lead) :]
            break
    combine = _COMBINE.match(body) or _SINGLE.match(body)
    if combine and all(n in names for n in combine.groups() if n):
        return "combine"
    if _COMPUTE.match(body):
        return "compute"
    return "other"


def step_kinds(problem: str, steps: Sequence[str]) -> list[str]:
    """The kind of each step of a response to `problem` (steps as texts, separators stripped).
    A problem that is not a pivot-world text leaves only the kinds the text shows by itself."""
    try:
        names = set(parse_problem(problem)[0])
    except AttnRLError:
        names = set(NAMES)
    return [step_kind(step, names) for step in steps]


def pivotal_steps(problem: str, response: str) -> tuple[int, ...]:
    """1-based indices of the pivotal steps (plan, check, combination) of a response text, split
    at "\\n\\n" (docs/method.md §1). For a generated solution this is `Problem.pivotal_steps`.

    >>> pivotal_steps("Let a=2*3+1, b=5+5*2. Find a+b.",
    ...               "Okay.\\n\\nLet me plan: T=a+b.\\n\\na=2*3=6\\n\\n6+1=7\\n\\na+b=7+20=27\\n\\nThe answer is \\\\boxed{27}")
    (2, 5)
    """
    return tuple(k for k, kind in enumerate(step_kinds(problem, response.split(STEP_SEPARATOR)), start=1) if kind in PIVOTAL_KINDS)
