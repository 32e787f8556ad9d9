"""Problems: the synthetic step-by-step arithmetic world, and loaders for real data files.

The synthetic world is what the platform trains on by default (a ~1M-parameter character-level
Qwen2 on CPU). A problem is a chain of `level` operations applied left to right, written with
the fewest parentheses that make ordinary precedence agree with the left-to-right order:

    problem:  "Compute (12 + 7) * 3 - 5."
    solution: "12 + 7 = 19\\n\\n19 * 3 = 57\\n\\n57 - 5 = 52\\n\\nThe answer is \\\\boxed{52}"
    answer:   "52"

One operation per step, steps separated by "\\n\\n" (docs/method.md §1), the last step boxes the
answer. Some solutions (seeded) open with a planning step ("Let me do 3 steps.") and/or repeat
one operation in a checking step right after it ("Wait, let me check: 19 * 3 = 57."), so that
some steps are read again by later ones: those are the influential steps FCI should find.

Train / held-out split, disjoint by construction: a problem's split is a function of its text
alone -- the first 8 bytes of sha256(problem text), read as a fraction of 2**64, below
`heldout_fraction` means "heldout", else "train" (see `split_of`). The generator draws
candidates and keeps only those of the requested split, so no seed, cursor or level setting can
put a held-out text into training. Changing `heldout_fraction` changes the split, so it is part
of the world's definition, not a tuning knob.

Streams: problem `i` of a stream is generated from (seed, split, i) alone (`problem_at`), so a
trainer checkpoints an integer cursor and resumes exactly with `generate_problems(n, start=cursor)`.

A second world with long solutions and pivotal steps known by construction is
attnrl_core/pivot_world.py (`data.world: pivot`); attnrl_core/worlds.py names both, and the
helpers above that are not specific to arithmetic (`split_of`, `distinct_heldout`, `Problem`) serve
both.

Loaders (`load_problems`, `load_benchmark`) read JSONL and Parquet files with DeepScaleR /
AIME / AMC / MATH-500 style fields and stop at the first malformed row with an `AttnRLError`
that names the file, the line (JSONL) or row (Parquet), both counted from 1, and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from attnrl_core.errors import AttnRLError

# docs/method.md §10's prompt suffix; one backslash in the actual text.
SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."
STEP_SEPARATOR = "\n\n"
COMPUTE_LEAD = "Compute "
ANSWER_LEAD = "The answer is \\boxed{"
PLAN_LEAD = "Let me "
CHECK_LEAD = "Wait, let me check: "
FRACTION_LEAD = "\\frac{"

# Multi-character pieces the character-level tokenizer keeps as single tokens: everything the
# synthetic texts repeat verbatim. Every other character is printable ASCII (0x20-0x7E) or "\n".
PHRASES: tuple[str, ...] = (
    STEP_SEPARATOR,
    SUFFIX,
    COMPUTE_LEAD,
    ANSWER_LEAD,
    PLAN_LEAD,
    CHECK_LEAD,
    FRACTION_LEAD,
)

SPLITS = ("train", "heldout")
# "a op b = c" with c an integer or a reduced fraction "p/q"; the checking step reuses it.
_OPERATION_STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+(?:/\d+)?)$")


@dataclass(frozen=True)
class Problem:
    """One problem. Synthetic ones carry a level (= number of operations) and a solution;
    loaded ones carry whatever the file gives (level and solution may be None).

    >>> p = Problem("train-s0-0", "Compute 12 + 7.", "19", 1,
    ...             "12 + 7 = 19\\n\\nThe answer is \\\\boxed{19}")
    >>> p.solution.split("\\n\\n")
    ['12 + 7 = 19', 'The answer is \\\\boxed{19}']
    """

    id: str
    problem: str
    answer: str
    level: int | None = None
    solution: str | None = None
    # 1-based indices of the solution's pivotal steps, where a world knows them by construction
    # (attnrl_core/pivot_world.py); None elsewhere.
    pivotal_steps: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MathWorld:
    """The knobs of the synthetic world. With the defaults a 4-operation solution is at most
    158 characters (3-digit values, 2-digit operands, plan + check + fraction all at once) and
    its problem at most 33, short enough for a ~1M-parameter char-level model.
    The level-1 held-out split holds 851 distinct problems: `heldout_set` can hold at most that
    many level-1 problems (levels 2+ have tens of thousands).

    number_max: largest starting number / addend / subtrahend, per level (index level-1; levels
        past the tuple use its last entry). Grows with the level: harder levels, bigger numbers.
    factor_max: multipliers and divisors are 2..factor_max (kept small: single digits).
    value_max: every intermediate value stays in 1..value_max (and every value is a positive
        integer except a fractional final answer), which bounds the step length.
    fraction_levels: levels whose LAST operation may be an inexact division, giving a reduced
        fraction answer boxed as \\frac{p}{q}. Elsewhere divisions are exact.
    plan_rate / check_rate: probability of a planning step / a checking step (independent).
    heldout_fraction: share of all problem texts that belong to the held-out split.
    """

    number_max: tuple[int, ...] = (50, 60, 80, 99)
    factor_max: int = 9
    value_max: int = 999
    fraction_levels: tuple[int, ...] = (4,)
    plan_rate: float = 0.3
    check_rate: float = 0.3
    heldout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.number_max or any(not isinstance(m, int) or m < 1 for m in self.number_max):
            raise AttnRLError(
                f"math world: number_max must be a non-empty list of integers >= 1 (one per "
                f"level), got {self.number_max!r}."
            )
        if not isinstance(self.factor_max, int) or self.factor_max < 2:
            raise AttnRLError(
                f"math world: factor_max must be an integer >= 2, got {self.factor_max!r}."
            )
        if not isinstance(self.value_max, int) or self.value_max < max(
            max(self.number_max), 2 * self.factor_max
        ):
            raise AttnRLError(
                f"math world: value_max must be an integer >= max(number_max) and >= "
                f"2 * factor_max, got {self.value_max!r}."
            )
        for name in ("plan_rate", "check_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise AttnRLError(f"math world: {name} must be in [0, 1], got {rate!r}.")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise AttnRLError(
                "math world: heldout_fraction must be strictly between 0 and 1 (both splits "
                f"must be non-empty), got {self.heldout_fraction!r}."
            )

    def operand_max(self, level: int) -> int:
        return self.number_max[min(level, len(self.number_max)) - 1]


def format_prompt(problem: str) -> str:
    """The prompt the policy sees (docs/method.md §10).

    >>> format_prompt("Compute 12 + 7.")
    "Compute 12 + 7. Let's think step by step and output the final answer within \\\\boxed{}."
    """
    return f"{problem} {SUFFIX}"


def split_of(problem_text: str, heldout_fraction: float = MathWorld.heldout_fraction) -> str:
    """"train" or "heldout", decided by a stable hash of the problem text alone.

    >>> split_of("Compute 12 + 7.")   # same answer on every machine and Python run
    'train'
    """
    digest = hashlib.sha256(problem_text.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "heldout" if position < heldout_fraction else "train"


def _number_text(value: Fraction) -> str:
    """Plain text of a value inside a step: "19" or "57/8"."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _answer_text(value: Fraction) -> str:
    """The reference answer / boxed text: "19" or "\\frac{57}{8}"."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{FRACTION_LEAD}{value.numerator}}}{{{value.denominator}}}"


def _draw_operation(
    rng: random.Random, value: int, level: int, is_last: bool, world: MathWorld
) -> tuple[str, int]:
    """One (operator, operand) applicable to the positive integer `value`, uniform over the
    operators that keep the next value in range."""
    top = world.operand_max(level)
    exact_divisors = [d for d in range(2, world.factor_max + 1) if value % d == 0]
    fraction_allowed = is_last and level in world.fraction_levels
    feasible = []
    if value < world.value_max:
        feasible.append("+")
    if value >= 2:
        feasible.append("-")
    if 2 * value <= world.value_max:
        feasible.append("*")
    if exact_divisors or fraction_allowed:
        feasible.append("/")
    operator = rng.choice(feasible)
    if operator == "+":
        return operator, rng.randint(1, min(top, world.value_max - value))
    if operator == "-":
        return operator, rng.randint(1, min(top, value - 1))  # stays >= 1
    if operator == "*":
        return operator, rng.randint(2, min(world.factor_max, world.value_max // value))
    if fraction_allowed:
        return operator, rng.randint(2, world.factor_max)
    return operator, rng.choice(exact_divisors)


def _apply(value: Fraction, operator: str, operand: int) -> Fraction:
    if operator == "+":
        return value + operand
    if operator == "-":
        return value - operand
    if operator == "*":
        return value * operand
    return value / operand


def _expression_text(start: int, operations: Sequence[tuple[str, int]]) -> str:
    """Left-to-right chain with the fewest parentheses: wrap the expression so far only when a
    * or / follows a top-level + or -.

    >>> _expression_text(12, [("+", 7), ("*", 3), ("-", 5), ("/", 4)])
    '((12 + 7) * 3 - 5) / 4'
    """
    expression, top_level_additive = str(start), False
    for operator, operand in operations:
        if operator in "*/" and top_level_additive:
            expression = f"({expression})"
        expression = f"{expression} {operator} {operand}"
        top_level_additive = operator in "+-"
    return expression


def _validate_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels or any(
        isinstance(level, bool) or not isinstance(level, int) or level < 1 for level in levels
    ):
        raise AttnRLError(
            f"data: levels must be a non-empty list of integers >= 1 (level = number of "
            f"operations), got {levels!r}."
        )
    return levels


def _validate_split(split: str) -> None:
    if split not in SPLITS:
        raise AttnRLError(f"data: split must be one of {SPLITS}, got {split!r}.")


def problem_at(
    index: int,
    *,
    seed: int = 0,
    levels: Sequence[int] = (1, 2, 3, 4),
    split: str = "train",
    world: MathWorld = MathWorld(),
    max_draws: int = 10_000,
) -> Problem:
    """Problem `index` of the (seed, split) stream: generated from (seed, split, index) alone,
    so any element can be recomputed without the ones before it. Its level is
    levels[index % len(levels)] (every window of len(levels) problems is balanced).

    >>> p = problem_at(0, seed=0, levels=(2,))
    >>> p.problem, p.solution
    ('Compute (32 - 25) / 7.', '32 - 25 = 7\\n\\n7 / 7 = 1\\n\\nThe answer is \\\\boxed{1}')
    """
    levels = _validate_levels(levels)
    _validate_split(split)
    if index < 0:
        raise AttnRLError(f"data: a stream index must be >= 0, got {index}.")
    level = levels[index % len(levels)]
    # str seeds are hashed with sha512 by `random`: stable across processes, unlike hash().
    rng = random.Random(f"attnrl-math/{seed}/{split}/{index}")
    for _ in range(max_draws):
        start = rng.randint(1, world.operand_max(level))
        operations, values = [], [Fraction(start)]
        for position in range(level):
            # Only the last operation can leave a fraction, so values[-1] is an integer here.
            operator, operand = _draw_operation(
                rng, values[-1].numerator, level, position == level - 1, world
            )
            operations.append((operator, operand))
            values.append(_apply(values[-1], operator, operand))
        text = f"{COMPUTE_LEAD}{_expression_text(start, operations)}."
        if split_of(text, world.heldout_fraction) == split:
            break
    else:
        raise AttnRLError(
            f"data: found no {split} problem of level {level} in {max_draws} draws; "
            f"heldout_fraction={world.heldout_fraction} leaves that split (almost) empty."
        )

    steps = [
        f"{_number_text(values[k])} {operator} {operand} = {_number_text(values[k + 1])}"
        for k, (operator, operand) in enumerate(operations)
    ]
    # Drawn after the text is fixed, so plan_rate / check_rate never change which problems a
    # stream holds, only how their solutions read.
    has_plan = rng.random() < world.plan_rate
    has_check = rng.random() < world.check_rate
    checked = rng.randrange(level)
    if has_check:
        steps.insert(checked + 1, f"{CHECK_LEAD}{steps[checked]}.")
    if has_plan:
        steps.insert(0, f"{PLAN_LEAD}do {level} step{'' if level == 1 else 's'}.")
    answer = _answer_text(values[-1])
    steps.append(f"{ANSWER_LEAD}{answer}}}")
    return Problem(
        id=f"{split}-s{seed}-{index}",
        problem=text,
        answer=answer,
        level=level,
        solution=STEP_SEPARATOR.join(steps),
    )


def generate_problems(
    n: int,
    levels: Sequence[int] = (1, 2, 3, 4),
    seed: int = 0,
    split: str = "train",
    *,
    start: int = 0,
    world: MathWorld = MathWorld(),
) -> list[Problem]:
    """Problems start..start+n-1 of the (seed, split) stream. A trainer keeps `cursor`, calls
    generate_problems(batch, start=cursor) and adds `batch` to the cursor: resuming from a
    checkpointed cursor replays the exact same problems. Duplicated texts can occur (sampling
    with replacement); use `heldout_set` for a fixed evaluation set of distinct problems.

    >>> [p.level for p in generate_problems(5, levels=(1, 3), seed=7)]
    [1, 3, 1, 3, 1]
    >>> generate_problems(2, seed=7, start=3) == generate_problems(5, seed=7)[3:]
    True
    """
    if n < 0 or start < 0:
        raise AttnRLError(f"data: n and start must be >= 0, got n={n}, start={start}.")
    return [
        problem_at(index, seed=seed, levels=levels, split=split, world=world)
        for index in range(start, start + n)
    ]


def heldout_set(
    n: int,
    levels: Sequence[int] = (1, 2, 3, 4),
    seed: int = 0,
    *,
    world: MathWorld = MathWorld(),
    draws_per_problem: int = 50,
) -> list[Problem]:
    """A fixed evaluation set: the first n DISTINCT problems of the held-out stream, with
    n // len(levels) per level (the first n % len(levels) levels get one more), interleaved
    by level. With the same seed, a smaller set is a subset of a larger one.

    >>> s = heldout_set(8, levels=(1, 2, 3, 4))
    >>> sorted(p.level for p in s), all(split_of(p.problem) == "heldout" for p in s)
    ([1, 1, 2, 2, 3, 3, 4, 4], True)
    """
    levels = _validate_levels(levels)
    return distinct_heldout(
        n, levels, lambda index: problem_at(index, seed=seed, levels=levels, split="heldout", world=world), draws_per_problem
    )


def distinct_heldout(
    n: int, levels: tuple[int, ...], heldout_at: Callable[[int], Problem], draws_per_problem: int = 50
) -> list[Problem]:
    """The first n distinct problems of a held-out stream `heldout_at(index)` whose level is
    levels[index % len(levels)], n // len(levels) per level (the first levels one more): the
    selection rule of `heldout_set`, shared by every synthetic world."""
    if len(set(levels)) != len(levels):
        raise AttnRLError(f"data: heldout_set needs distinct levels, got {levels!r}.")
    quota = {level: n // len(levels) + (k < n % len(levels)) for k, level in enumerate(levels)}
    chosen: list[Problem] = []
    seen: set[str] = set()
    for index in range(draws_per_problem * n + 100 * len(levels)):
        level = levels[index % len(levels)]
        if quota[level] == 0:
            continue
        candidate = heldout_at(index)
        if candidate.problem in seen:
            continue
        seen.add(candidate.problem)
        chosen.append(candidate)
        quota[level] -= 1
        if len(chosen) == n:
            return chosen
    short = {level: left for level, left in quota.items() if left}
    raise AttnRLError(
        f"data: could not find {n} distinct held-out problems; still missing {short} "
        f"(level: count). Those levels have too few distinct problems in the held-out split: "
        f"ask for fewer, raise number_max for those levels, or raise heldout_fraction."
    )


def synthetic_heldout(data_cfg) -> list[Problem]:
    """The held-out set of the data config section's world (`data.world`): data.heldout_size
    problems at data.levels, seeded by data.seed."""
    from attnrl_core.worlds import world_for  # worlds imports this module

    return world_for(data_cfg).heldout_set(data_cfg.heldout_size, levels=data_cfg.levels, seed=data_cfg.seed)


def make_demonstration(
    problem: Problem,
    flaw: float,
    flaw_levels: Sequence[int] = (3, 4),
    *,
    rng: np.random.Generator,
) -> str:
    """The warm-start demonstration for `problem` (config `warmstart.flaw`): its solution, except
    that for levels in `flaw_levels`, with probability `flaw`, it stops one operation early and
    boxes the value the last operation would have started from (the result of the
    second-to-last operation; for a one-operation problem, the starting number). Planning and
    checking steps before the dropped operation are kept. One rng.random() draw per call.

    >>> p = Problem("x", "Compute (12 + 7) * 3 - 5.", "52", 3,
    ...     "12 + 7 = 19\\n\\n19 * 3 = 57\\n\\n57 - 5 = 52\\n\\nThe answer is \\\\boxed{52}")
    >>> make_demonstration(p, 1.0, rng=np.random.default_rng(0))
    '12 + 7 = 19\\n\\n19 * 3 = 57\\n\\nThe answer is \\\\boxed{57}'
    """
    if not 0.0 <= flaw <= 1.0:
        raise AttnRLError(f"warmstart.flaw must be in [0, 1], got {flaw!r}.")
    if problem.solution is None:
        raise AttnRLError(
            f"problem {problem.id!r} has no solution: warm-start demonstrations need a "
            f"'solution' field for every problem."
        )
    flawed = rng.random() < flaw and problem.level in tuple(flaw_levels)
    if not flawed:
        return problem.solution
    steps = problem.solution.split(STEP_SEPARATOR)
    operation_steps = [k for k, step in enumerate(steps) if _OPERATION_STEP.match(step)]
    if not operation_steps:
        raise AttnRLError(
            f"problem {problem.id!r}: cannot plant the warm-start flaw, its solution has no "
            f"step of the form 'a + b = c' (the flaw is defined for the synthetic math format)."
        )
    last = operation_steps[-1]
    value_before_last = _OPERATION_STEP.match(steps[last]).group(1)
    return STEP_SEPARATOR.join([*steps[:last], f"{ANSWER_LEAD}{value_before_last}}}"])


# ----------------------------------------------------------------------------------- loaders

# Field names accepted per role. Training files follow DeepScaleR exactly; benchmark files come
# in several spellings (AIME 2024: Problem/Answer/ID, AIME 2025 and AMC: question/answer,
# MATH-500: problem/answer/level/unique_id).
_TRAIN_FIELDS = {
    "problem": ("problem",),
    "answer": ("answer",),
    "solution": ("solution",),
    "level": ("level",),
    "id": ("id",),
}
_BENCHMARK_FIELDS = {
    "problem": ("problem", "Problem", "question", "Question"),
    "answer": ("answer", "Answer"),
    "solution": ("solution", "Solution"),
    "level": ("level", "Level"),
    "id": ("id", "ID", "unique_id"),
}
_LEVEL_TEXT = re.compile(r"^(?:Level\s+)?(\d+)$")


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, row) for every record: where = "line 3" (JSONL, blank lines skipped but
    counted) or "row 3" (Parquet), counted from 1."""
    if not path.is_file():
        raise AttnRLError(
            f"data file not found: {path} (resolved to {path.resolve()}). Check the path in "
            f"the config or on the command line."
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise AttnRLError(
                        f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte "
                        f"{error.start})."
                    ) from None
                if not line.strip():
                    continue
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise AttnRLError(
                        f"{path}, line {number}: invalid JSON ({error.msg} at column "
                        f"{error.colno}). Each line must be one JSON object such as "
                        f'{{"problem": "...", "answer": "..."}}.'
                    ) from None
    elif suffix == ".parquet":
        import pyarrow.parquet  # only Parquet readers pay for the import

        try:
            table = pyarrow.parquet.read_table(path)
        except Exception as error:  # pyarrow raises several types for a corrupt file
            raise AttnRLError(f"{path}: not a readable Parquet file ({error}).") from None
        for number, row in enumerate(table.to_pylist(), start=1):
            yield f"row {number}", row
    else:
        raise AttnRLError(
            f"{path}: unsupported data file type {path.suffix!r}; use .jsonl (one JSON object "
            f"per line) or .parquet."
        )


def _pick(row: dict, names: Sequence[str]) -> object:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def _row_to_problem(
    row: object, where: str, path: Path, fields: dict[str, tuple[str, ...]]
) -> Problem:
    def fail(what: str) -> AttnRLError:
        return AttnRLError(
            f"{path}, {where}: {what}. Each row needs a non-empty string "
            f"{' / '.join(map(repr, fields['problem']))} and an answer "
            f"({' / '.join(map(repr, fields['answer']))}: string or number)."
        )

    if not isinstance(row, dict):
        raise fail(f"expected a JSON object, got {type(row).__name__}")
    present = ", ".join(sorted(map(str, row))) or "none"

    def absent(role: str) -> AttnRLError:
        if any(name in row for name in fields[role]):
            return fail(f"field '{role}' is null")
        return fail(f"missing field '{role}' (fields present: {present})")

    problem = _pick(row, fields["problem"])
    if problem is None:
        raise absent("problem")
    if not isinstance(problem, str):
        raise fail(f"field 'problem' must be a string, got {type(problem).__name__}")
    if not problem.strip():
        raise fail("empty problem")

    answer = _pick(row, fields["answer"])
    if answer is None:
        raise absent("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise fail(f"field 'answer' must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise fail(f"field 'answer' is {answer}")
        answer = int(answer) if answer.is_integer() else answer  # 3.0 from a float column -> "3"
    answer = str(answer).strip()
    if not answer:
        raise fail("empty answer")

    solution = _pick(row, fields["solution"])
    if solution is not None and not isinstance(solution, str):
        raise fail(f"field 'solution' must be a string, got {type(solution).__name__}")

    level = _pick(row, fields["level"])
    if isinstance(level, str):
        # MATH writes "Level 3" (and "Level ?" when unknown: kept as no level).
        match = _LEVEL_TEXT.match(level.strip())
        level = int(match.group(1)) if match else None
    elif level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise fail(f"field 'level' must be an integer, got {type(level).__name__}")

    identifier = _pick(row, fields["id"])
    if identifier is None:
        identifier = f"{path.stem}-{where.split()[-1]}"
    elif isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
        raise fail(f"field 'id' must be a string or an integer, got {type(identifier).__name__}")

    return Problem(
        id=str(identifier), problem=problem, answer=answer, level=level, solution=solution
    )


def _load(path: str | Path, fields: dict[str, tuple[str, ...]]) -> list[Problem]:
    path = Path(path)
    problems = [_row_to_problem(row, where, path, fields) for where, row in _rows(path)]
    if not problems:
        raise AttnRLError(f"{path}: the file holds no problems.")
    return problems


def load_problems(path: str | Path) -> list[Problem]:
    """Training problems from a DeepScaleR-style .jsonl or .parquet file: fields `problem` and
    `answer` (required; a numeric answer becomes its text), `solution`, `level`, `id`
    (optional; id defaults to "<file stem>-<line or row number>"). Other fields are ignored.

    >>> p = load_problems("tests/data/train_sample.jsonl")[0]
    >>> p.id, p.problem, p.answer, p.level, p.solution
    ('train_sample-1', 'What is $3 + 4 \\\\cdot 2$?', '11', None, None)
    """
    return _load(path, _TRAIN_FIELDS)


def load_benchmark(path: str | Path) -> list[Problem]:
    """Evaluation problems (AIME / AMC / MATH-500 style) from .jsonl or .parquet. Also accepts
    the spellings those sets use: Problem/question, Answer, Solution, Level ("Level 3" -> 3),
    ID/unique_id. Integer answers (AIME) become strings: 204 -> "204".

    >>> load_benchmark("tests/data/aime_sample.jsonl")[0].answer
    '204'
    """
    return _load(path, _BENCHMARK_FIELDS)


class ProblemStream:
    """The training problems as an endless stream read through a cursor (the checkpoint keeps it).

    Synthetic (`data.train: synthetic`, world `data.world`): problem i is a function of
    (data.seed, i). A file: epoch
    e is a permutation of the file seeded by (data.seed, e). Problems that `fits` rejects (a
    prompt longer than data.max_prompt_tokens) are skipped. Reading does not move the cursor:
    the caller commits the returned one when its iteration completes, so a retried phase reads
    the same problems again.

    >>> from attnrl_core.config import DataConfig
    >>> stream = ProblemStream(DataConfig(levels=[1]))
    >>> problems, cursor = stream.read(2)
    >>> [p.problem for p in problems], cursor, stream.cursor
    (['Compute 32 - 25.', 'Compute 13 - 4.'], 2, 0)
    """

    def __init__(self, cfg, fits=lambda problem: True, cursor: int = 0) -> None:
        from attnrl_core.worlds import world_for  # worlds imports this module

        self.cfg = cfg  # the data config section
        self.fits = fits
        self.cursor = cursor  # index of the next problem of the stream
        self.pool = None if cfg.train == "synthetic" else load_problems(cfg.train)
        self.world = world_for(cfg)  # data.world: which synthetic world

    def _at(self, index: int) -> Problem:
        if self.pool is None:
            return self.world.problem_at(index, seed=self.cfg.seed, levels=self.cfg.levels)
        epoch, offset = divmod(index, len(self.pool))
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.pool))
        return self.pool[int(order[offset])]

    def read(self, count: int) -> tuple[list[Problem], int]:
        """The next `count` problems that fit, and the cursor after them."""
        out, cursor = [], self.cursor
        while len(out) < count:
            problem = self._at(cursor)
            cursor += 1
            if self.fits(problem):
                out.append(problem)
        return out, cursor
