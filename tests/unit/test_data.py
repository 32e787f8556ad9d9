"""Tests for attnrl_core.data: the synthetic arithmetic world and the dataset loaders.

The arithmetic is checked independently of the generator: the problem text is evaluated with
ordinary operator precedence (Python's ast over Fractions) and every step is recomputed.
"""

import ast
import doctest
import hashlib
import operator
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrl_core import data
from attnrl_core.data import (
    PHRASES,
    SUFFIX,
    MathWorld,
    Problem,
    format_prompt,
    generate_problems,
    heldout_set,
    load_benchmark,
    load_problems,
    make_demonstration,
    problem_at,
    split_of,
)
from attnrl_core.errors import AttnRLError

DATA = Path(__file__).parent.parent / "data"
REPO = Path(__file__).parent.parent.parent
OPERATION_STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)(?:/(\d+))?$")
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


# ------------------------------------------------------------------ independent checkers


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[begin:position]
    return None


def answer_value(answer: str) -> Fraction:
    match = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", answer)
    if match:
        value = Fraction(int(match.group(1)), int(match.group(2)))
        assert value.denominator != 1, f"{answer} should have been written as an integer"
        assert (value.numerator, value.denominator) == (int(match.group(1)), int(match.group(2))), (
            f"{answer} is not reduced"
        )
        return value
    assert re.fullmatch(r"\d+", answer), answer
    return Fraction(int(answer))


def evaluate(problem_text: str) -> Fraction:
    """Value of "Compute <expr>." under ordinary precedence, exactly."""
    assert problem_text.startswith("Compute ") and problem_text.endswith(".")

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](value(node.left), value(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        return Fraction(node.value)

    return value(ast.parse(problem_text[len("Compute ") : -1], mode="eval").body)


def check_problem(p: Problem) -> None:
    """Everything a synthetic problem promises, checked from its text alone."""
    assert p.answer == last_boxed(p.solution)
    assert evaluate(p.problem) == answer_value(p.answer)
    steps = p.solution.split("\n\n")
    assert all(steps) and not p.solution.endswith("\n")
    assert steps[-1] == f"The answer is \\boxed{{{p.answer}}}"
    value, operations = None, []
    for step in steps[:-1]:
        if step.startswith("Let me "):
            assert step == f"Let me do {p.level} step{'s' if p.level > 1 else ''}."
            assert not operations, "the plan comes first"
        elif step.startswith("Wait, let me check: "):
            assert step[len("Wait, let me check: ") : -1] == operations[-1], "checks the step before"
            assert step.endswith(".")
        else:
            match = OPERATION_STEP.match(step)
            assert match, step
            left, op, right, num, den = match.groups()
            left, right = Fraction(int(left)), Fraction(int(right))
            result = Fraction(int(num), int(den) if den else 1)
            assert BINARY[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}[op]](left, right) == result, step
            assert den is None or (result.denominator == int(den) != 1), f"unreduced: {step}"
            if value is not None:
                assert left == value, "operations chain left to right"
            value = result
            operations.append(step)
    assert len(operations) == p.level
    assert value == answer_value(p.answer)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def train10k():
    return generate_problems(10_000, seed=0, split="train")


@pytest.fixture(scope="module")
def heldout10k():
    return generate_problems(10_000, seed=0, split="heldout")


# ------------------------------------------------------------------ generator


def test_worked_example_problem_zero():
    p = problem_at(0, seed=0, levels=(2,))
    assert p == Problem(
        id="train-s0-0",
        problem="Compute (32 - 25) / 7.",
        answer="1",
        level=2,
        solution="32 - 25 = 7\n\n7 / 7 = 1\n\nThe answer is \\boxed{1}",
    )


def test_same_seed_same_problems_and_different_seed_different():
    first = generate_problems(200, seed=11)
    assert first == generate_problems(200, seed=11)
    other = generate_problems(200, seed=12)
    assert sum(a.problem != b.problem for a, b in zip(first, other)) > 150


def test_splits_are_disjoint_by_construction(train10k, heldout10k):
    train_texts = {p.problem for p in train10k}
    heldout_texts = {p.problem for p in heldout10k}
    assert not train_texts & heldout_texts
    assert all(split_of(t) == "train" for t in train_texts)
    assert all(split_of(t) == "heldout" for t in heldout_texts)
    # Another seed's training stream cannot reach the held-out texts either.
    assert not {p.problem for p in generate_problems(2_000, seed=5)} & heldout_texts


def test_split_of_is_a_stable_hash_of_the_text():
    def position(text):
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64

    assert split_of("Compute 12 + 7.") == "train"  # position 0.678
    assert split_of("Compute 12 + 7.", heldout_fraction=0.7) == "heldout"
    # The rule, on every level-1 addition text; about heldout_fraction of them are held out.
    texts = [f"Compute {a} + {b}." for a in range(1, 51) for b in range(1, 51)]
    assert all(split_of(t) == ("heldout" if position(t) < 0.2 else "train") for t in texts)
    share = sum(split_of(t) == "heldout" for t in texts) / len(texts)
    assert 0.18 < share < 0.22


def test_every_level_present_in_cyclic_order(train10k):
    assert [p.level for p in train10k[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert {p.level for p in train10k} == {1, 2, 3, 4}
    assert [p.level for p in generate_problems(6, levels=(2, 5), seed=1)] == [2, 5, 2, 5, 2, 5]


def test_fraction_answers_only_at_the_top_level(train10k):
    by_level = {level: [p for p in train10k if p.level == level] for level in (1, 2, 3, 4)}
    for level in (1, 2, 3):
        assert not any("frac" in p.answer for p in by_level[level])
    share = sum("\\frac{" in p.answer for p in by_level[4]) / len(by_level[4])
    assert 0.1 < share < 0.3


def test_every_solution_is_right(train10k, heldout10k):
    for p in train10k + heldout10k:
        check_problem(p)


def test_numbers_grow_with_the_level(train10k):
    def largest_start(level):
        return max(int(re.match(r"Compute \(*(\d+)", p.problem).group(1)) for p in train10k if p.level == level)

    assert [largest_start(level) for level in (1, 2, 3, 4)] == [50, 60, 80, 99]


def test_texts_are_printable_ascii_and_within_budget(train10k, heldout10k):
    allowed = {chr(c) for c in range(0x20, 0x7F)} | {"\n"}
    for p in train10k + heldout10k:
        assert set(p.problem + p.solution + p.answer + format_prompt(p.problem)) <= allowed
        assert len(p.solution) <= 160
        assert len(p.problem) <= 60
    longest = max(len(p.solution) for p in train10k + heldout10k if p.level == 4)
    assert 130 < longest <= 158  # 158 is the worst case the defaults allow


def test_planning_and_checking_steps_at_their_rates(train10k):
    plans = sum("\n\nLet me " in "\n\n" + p.solution for p in train10k) / len(train10k)
    checks = sum("Wait, let me check: " in p.solution for p in train10k) / len(train10k)
    assert abs(plans - 0.3) < 0.03 and abs(checks - 0.3) < 0.03
    bare = generate_problems(200, seed=0, world=MathWorld(plan_rate=0.0, check_rate=0.0))
    assert not any("Let me" in p.solution or "check" in p.solution for p in bare)
    # The plan/check draws come after the text: switching them off keeps the same problems.
    assert [p.problem for p in bare] == [p.problem for p in train10k[:200]]


def test_prompt_template_matches_spec():
    assert SUFFIX == "Let's think step by step and output the final answer within \\boxed{}."
    assert SUFFIX.count("\\") == 1 and len(SUFFIX) == 69
    assert format_prompt("Compute 12 + 7.") == (
        "Compute 12 + 7. Let's think step by step and output the final answer within \\boxed{}."
    )


def test_phrases_are_few_distinct_ascii_pieces_that_the_texts_use(train10k):
    assert len(PHRASES) <= 10 and len(set(PHRASES)) == len(PHRASES)
    assert all(len(piece) > 1 and piece.isascii() for piece in PHRASES)
    corpus = "".join(format_prompt(p.problem) + p.solution for p in train10k[:2_000])
    for piece in PHRASES:
        assert piece in corpus, piece


# ------------------------------------------------------------------ streams and held-out set


def test_stream_element_depends_on_seed_and_index_alone():
    whole = generate_problems(50, seed=3)
    assert generate_problems(10, seed=3, start=20) == whole[20:30]
    assert problem_at(37, seed=3) == whole[37]
    # Resume from a checkpointed cursor: batches of 7 replay the uninterrupted stream.
    cursor, replay = 0, []
    while cursor < 49:
        replay += generate_problems(7, seed=3, start=cursor)
        cursor += 7
    assert replay == whole[:49]
    assert problem_at(10**9, seed=3).id == "train-s3-1000000000"


def test_heldout_set_is_balanced_distinct_and_held_out():
    problems = heldout_set(402)
    counts = {level: sum(p.level == level for p in problems) for level in (1, 2, 3, 4)}
    assert counts == {1: 101, 2: 101, 3: 100, 4: 100}
    assert len({p.problem for p in problems}) == 402
    assert all(split_of(p.problem) == "heldout" for p in problems)
    assert heldout_set(402) == problems
    assert set(heldout_set(100)) <= set(problems)
    assert heldout_set(40, seed=1) != heldout_set(40, seed=0)


def test_heldout_set_reports_an_exhausted_level():
    tiny = MathWorld(number_max=(3, 60, 80, 99))
    with pytest.raises(AttnRLError, match=r"missing \{1: \d+\}"):
        heldout_set(40, levels=(1, 2), world=tiny)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    index=st.integers(0, 10**7),
    levels=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    split=st.sampled_from(["train", "heldout"]),
)
def test_property_any_stream_element_is_consistent(seed, index, levels, split):
    p = problem_at(index, seed=seed, levels=levels, split=split)
    assert p.level == levels[index % len(levels)]
    assert split_of(p.problem) == split
    check_problem(p)


def test_bad_arguments_are_user_errors():
    with pytest.raises(AttnRLError, match="levels"):
        generate_problems(3, levels=(0, 2))
    with pytest.raises(AttnRLError, match="levels"):
        generate_problems(3, levels=())
    with pytest.raises(AttnRLError, match="split"):
        generate_problems(3, split="test")
    with pytest.raises(AttnRLError, match="heldout_fraction"):
        MathWorld(heldout_fraction=0.0)
    with pytest.raises(AttnRLError, match="plan_rate"):
        MathWorld(plan_rate=1.5)
    with pytest.raises(AttnRLError, match="factor_max"):
        MathWorld(factor_max=1)
    with pytest.raises(AttnRLError, match="value_max"):
        MathWorld(value_max=50, number_max=(60,))


# ------------------------------------------------------------------ warm-start flaw

WORKED = Problem(
    "x", "Compute (12 + 7) * 3 - 5.", "52", 3,
    "Let me do 3 steps.\n\n12 + 7 = 19\n\n19 * 3 = 57\n\nWait, let me check: 19 * 3 = 57."
    "\n\n57 - 5 = 52\n\nWait, let me check: 57 - 5 = 52.\n\nThe answer is \\boxed{52}",
)


def test_flawed_demonstration_worked_example():
    demo = make_demonstration(WORKED, 1.0, (3, 4), rng=np.random.default_rng(0))
    assert demo == (
        "Let me do 3 steps.\n\n12 + 7 = 19\n\n19 * 3 = 57\n\nWait, let me check: 19 * 3 = 57."
        "\n\nThe answer is \\boxed{57}"
    )


def test_flaw_zero_gives_the_clean_solution(train10k):
    rng = np.random.default_rng(0)
    assert all(make_demonstration(p, 0.0, (3, 4), rng=rng) == p.solution for p in train10k[:500])


def test_flaw_rate_levels_and_intermediate_value(train10k):
    rng = np.random.default_rng(1)
    problems = train10k[:4_000]  # 2,000 of levels 3-4
    flawed = {3: 0, 4: 0}
    for p in problems:
        demo = make_demonstration(p, 0.6, (3, 4), rng=rng)
        if p.level not in (3, 4):
            assert demo == p.solution
            continue
        if demo == p.solution:
            continue
        flawed[p.level] += 1
        operations = [s for s in p.solution.split("\n\n") if OPERATION_STEP.match(s)]
        intermediate = OPERATION_STEP.match(operations[-2]).group(4)  # result of 2nd-to-last op
        assert last_boxed(demo) == intermediate != p.answer
        kept = demo.split("\n\n")[:-1]
        assert p.solution.startswith("\n\n".join(kept) + "\n\n")
        assert [s for s in kept if OPERATION_STEP.match(s)] == operations[:-1]  # exactly one op dropped
    assert abs(sum(flawed.values()) / 2_000 - 0.6) < 0.045
    assert min(flawed.values()) > 400  # both flaw levels are hit


def test_flaw_is_seeded():
    problems = generate_problems(400, levels=(3, 4), seed=2)
    first = [make_demonstration(p, 0.5, (3, 4), rng=np.random.default_rng(9)) for p in problems]
    again = [make_demonstration(p, 0.5, (3, 4), rng=np.random.default_rng(9)) for p in problems]
    assert first == again
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(10)
    assert [make_demonstration(p, 0.5, (3, 4), rng=rng_a) for p in problems] != [
        make_demonstration(p, 0.5, (3, 4), rng=rng_b) for p in problems
    ]


def test_flaw_on_a_one_operation_problem_boxes_the_starting_number():
    p = Problem("y", "Compute 20 + 36.", "56", 1, "20 + 36 = 56\n\nThe answer is \\boxed{56}")
    assert make_demonstration(p, 1.0, (1,), rng=np.random.default_rng(0)) == "The answer is \\boxed{20}"


def test_flaw_errors_are_user_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(AttnRLError, match=r"warmstart.flaw must be in \[0, 1\], got 1.5"):
        make_demonstration(WORKED, 1.5, (3, 4), rng=rng)
    with pytest.raises(AttnRLError, match="has no solution"):
        make_demonstration(Problem("z", "What is 1+1?", "2", 3), 0.5, (3, 4), rng=rng)
    free_form = Problem("w", "What is 1+1?", "2", 3, "One and one make \\boxed{2}.")
    with pytest.raises(AttnRLError, match="'w'.*no step of the form"):
        make_demonstration(free_form, 1.0, (3, 4), rng=rng)


# ------------------------------------------------------------------ loaders


def test_load_training_jsonl_and_parquet_agree():
    from_jsonl = load_problems(DATA / "train_sample.jsonl")
    from_parquet = load_problems(DATA / "train_sample.parquet")
    assert [p.id for p in from_jsonl] == [
        "train_sample-1", "train_sample-2", "dsr-simplify", "train_sample-5", "train_sample-6"
    ]  # default ids use the 1-based line number; line 4 is blank
    assert [p.id for p in from_parquet] == [
        "train_sample-1", "train_sample-2", "dsr-simplify", "train_sample-4", "train_sample-5"
    ]
    strip = [(p.problem, p.answer, p.level, p.solution) for p in from_jsonl]
    assert strip == [(p.problem, p.answer, p.level, p.solution) for p in from_parquet]
    assert from_jsonl[2] == Problem(
        "dsr-simplify", "Simplify $\\frac{6}{8}$.", "\\frac{3}{4}", 1,
        "Divide top and bottom by $2$: $\\boxed{\\frac{3}{4}}$.",
    )
    assert from_jsonl[4].problem == "Solve $2x \u2212 1 = 5$ for $x$ (note the Unicode minus)."


def test_load_benchmarks_convert_numeric_answers():
    aime = load_benchmark(DATA / "aime_sample.jsonl")
    assert [(p.id, p.answer, p.level) for p in aime] == [
        ("sample-aime-1", "204", None), ("sample-aime-2", "401", None), ("sample-aime-3", "19", None)
    ]
    amc = load_benchmark(str(DATA / "amc_sample.jsonl"))  # "question" field, float answers
    assert [(p.id, p.answer) for p in amc] == [("amc_sample-1", "1"), ("amc_sample-2", "0.5")]
    assert amc[0].problem.startswith("What is $\\frac{1}{2}")
    math500 = load_benchmark(DATA / "math500_sample.parquet")
    assert [(p.id, p.answer, p.level) for p in math500] == [
        ("sample/counting/1.json", "56", 2),
        ("sample/prealgebra/2.json", "11", 1),
        ("sample/prealgebra/3.json", "\\frac{2}{3}", 1),
    ]


def test_benchmark_spellings_of_level(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text(
        '{"Problem": "a?", "Answer": 7, "Level": "Level 3", "ID": 12}\n'
        '{"problem": "b?", "answer": "x", "level": "Level ?"}\n'
    )
    assert [(p.id, p.problem, p.answer, p.level) for p in load_benchmark(path)] == [
        ("12", "a?", "7", 3), ("math-2", "b?", "x", None)
    ]


@pytest.mark.parametrize(
    "name, where, what",
    [
        ("bad_json.jsonl", "line 3", "invalid JSON"),
        ("missing_answer.jsonl", "line 2", "missing field 'answer' (fields present: problem, solution)"),
        ("wrong_type.jsonl", "line 2", "field 'answer' must be a string or a number, got list"),
        ("empty_problem.jsonl", "line 3", "empty problem"),
        ("not_object.jsonl", "line 1", "expected a JSON object, got list"),
        ("bad_utf8.jsonl", "line 2", "not valid UTF-8"),
        ("bad_row.parquet", "row 2", "field 'problem' is null"),
        ("wrong_type.parquet", "row 1", "field 'answer' must be a string or a number, got list"),
    ],
)
def test_malformed_rows_name_file_line_and_fault(name, where, what):
    for loader in (load_problems, load_benchmark):
        with pytest.raises(AttnRLError) as caught:
            loader(DATA / name)
        message = str(caught.value)
        assert f"{name}, {where}: " in message and what in message, message
        assert "\n" not in message


def test_training_loader_wants_deepscaler_field_names():
    with pytest.raises(AttnRLError, match=r"amc_sample.jsonl, line 1: missing field 'problem'"):
        load_problems(DATA / "amc_sample.jsonl")


def test_file_level_errors(tmp_path):
    with pytest.raises(AttnRLError, match=r"data file not found: .*nope\.jsonl"):
        load_problems(tmp_path / "nope.jsonl")
    with pytest.raises(AttnRLError, match="corrupt.parquet: not a readable Parquet file"):
        load_benchmark(DATA / "corrupt.parquet")
    with pytest.raises(AttnRLError, match="empty.jsonl: the file holds no problems"):
        load_problems(DATA / "empty.jsonl")
    with pytest.raises(AttnRLError, match=r"unsupported data file type '\.py'"):
        load_problems(DATA / "make_samples.py")


def test_docstring_examples_hold(monkeypatch):
    monkeypatch.chdir(REPO)
    result = doctest.testmod(data)
    assert result.attempted >= 10 and result.failed == 0
