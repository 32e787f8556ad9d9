"""Tests for the pivot world (attnrl_core/pivot_world.py), its registry entry (attnrl_core/worlds.py)
and the pivot hit rates (attnrl_core/pivots.py).

Answers are checked independently of the generator: each part's definition and the question's
formula are evaluated with ordinary precedence (Python's ast over Fractions).
"""

import ast
import operator
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from attnrl_core import data, pivot_world as pw
from attnrl_core.branch_plan import plan_branches
from attnrl_core.config import BranchConfig, DataConfig, ExpansionConfig, load_config
from attnrl_core.errors import AttnRLError
from attnrl_core.exploration import FCIRunningMean
from attnrl_core.pivots import pivot_hit_rates, response_hits
from attnrl_core.policy import build_tokenizer
from attnrl_core.prompt_groups import PromptGroup, Response
from attnrl_core.steps import decode_vocab, separator_mask, split_steps
from attnrl_core.verify import is_correct
from attnrl_core.worlds import world_for

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
CONFIG = "experiments/pivot.yaml"


def evaluate(expression: str, names: dict[str, Fraction] | None = None) -> Fraction:
    def walk(node):
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        if isinstance(node, ast.Name):
            return names[node.id]
        raise ValueError(ast.dump(node))

    return walk(ast.parse(expression, mode="eval").body)


def independent_answer(text: str) -> Fraction:
    match = re.fullmatch(r"Let (.+)\. Find ([a-z+\-]+)\.", text)
    parts = {name: evaluate(expr) for name, expr in re.findall(r"([a-z])=([0-9+\-*/()]+)", match.group(1))}
    return evaluate(match.group(2), parts)


@pytest.fixture(scope="module")
def train2k():
    return pw.generate_problems(2_000, seed=0, split="train")


@pytest.fixture(scope="module")
def heldout2k():
    return pw.generate_problems(2_000, seed=0, split="heldout")


# ------------------------------------------------------------------ determinism and splits


def test_streams_are_deterministic_and_depend_on_seed_split_and_index_alone():
    first = pw.generate_problems(100, seed=11)
    assert first == pw.generate_problems(100, seed=11)
    assert [p.problem for p in first] != [p.problem for p in pw.generate_problems(100, seed=12)]
    assert pw.generate_problems(10, seed=11, start=40) == first[40:50]
    assert pw.problem_at(77, seed=11) == first[77]
    assert [p.level for p in pw.generate_problems(6, levels=(2, 4), seed=1)] == [2, 4, 2, 4, 2, 4]
    # the solution (phrasing included) is a function of the problem text alone
    assert all(data.STEP_SEPARATOR.join(s for s, _ in pw.solve(p.problem)) == p.solution for p in first)


def test_splits_are_disjoint_by_construction(train2k, heldout2k):
    assert all(data.split_of(p.problem) == "train" for p in train2k)
    assert all(data.split_of(p.problem) == "heldout" for p in heldout2k)
    assert not {p.problem for p in train2k} & {p.problem for p in heldout2k}
    held = pw.heldout_set(200)
    assert sorted(p.level for p in held) == sorted([1, 2, 3, 4] * 50)
    assert len({p.problem for p in held}) == 200 and all(data.split_of(p.problem) == "heldout" for p in held)
    assert pw.heldout_set(200) == held and set(pw.heldout_set(40)) <= set(held)


def test_bad_levels_and_splits_fail_for_people():
    with pytest.raises(AttnRLError, match="levels"):
        pw.problem_at(0, levels=(0,))
    with pytest.raises(AttnRLError, match="levels"):
        pw.problem_at(0, levels=(9,))
    with pytest.raises(AttnRLError, match="split"):
        pw.problem_at(0, split="test")
    with pytest.raises(AttnRLError):
        pw.PivotWorld(min_ops=3, max_ops=2)


# ------------------------------------------------------------------ solutions


def test_every_solution_verifies_against_its_own_answer(train2k, heldout2k):
    for p in train2k[:1_000] + heldout2k[:500]:
        assert is_correct(p.solution, p.answer), p
        assert Fraction(p.answer) == independent_answer(p.problem), p.problem
        assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}")


def test_every_step_is_right_arithmetic(train2k):
    for p in train2k[:500]:
        for step in p.solution.split(data.STEP_SEPARATOR):
            body = step
            for lead in pw.LEADS[1:]:
                body = body.removeprefix(lead)
            if re.fullmatch(r"(?:[a-z]=)?\d+[-+*/]\d+=\d+", body):
                lhs, result = body.split("=")[-2:]
                assert evaluate(lhs) == int(result), step


def test_solutions_are_long_and_fit_the_configured_lengths(train2k, heldout2k):
    cfg = load_config(CONFIG)
    tok = build_tokenizer(world_for(cfg.data).phrases)
    steps = [len(p.solution.split(data.STEP_SEPARATOR)) for p in train2k]
    assert min(steps) >= 11 and max(steps) <= 29 and 17 < sum(steps) / len(steps) < 21
    for p in train2k[:500] + heldout2k[:200]:
        prompt = len(tok(data.format_prompt(p.problem))["input_ids"])
        response = len(tok(p.solution)["input_ids"]) + 1  # + EOS
        assert prompt <= cfg.data.max_prompt_tokens and response <= cfg.data.max_response_tokens
        assert prompt + response <= cfg.model.tiny.max_position_embeddings
        assert set(p.problem + p.solution) <= {chr(c) for c in range(0x20, 0x7F)} | {"\n"}


def test_the_plan_sits_after_the_first_step_and_steps_follow_the_plan(train2k):
    for p in train2k[:500]:
        kinds = [kind for _, kind in pw.solve(p.problem)]
        assert kinds[0] == "open" and kinds.count("plan") == 1 and 2 <= kinds.index("plan") + 1 <= 4
        assert kinds[-1] == "answer" and kinds.count("combine") == pw.PivotWorld().needed_parts(p.level) - 1
    checks = sum("Check: " in p.solution for p in train2k) / len(train2k)
    assert abs(checks - 0.3) < 0.04


def test_flawed_demonstrations_leave_the_last_term_out_of_the_plan(train2k):
    rng = np.random.default_rng(0)
    hard = [p for p in train2k if p.level in (3, 4)][:300]
    for p in hard:
        demo = pw.make_demonstration(p, 1.0, rng=rng)
        formula = p.problem.split("Find ")[1][:-1]
        plan = next(s for s in demo.split(data.STEP_SEPARATOR) if s.startswith(pw.PLAN_LEAD))
        assert plan == f"{pw.PLAN_LEAD}T={formula[:-2]}."
        caught = "Check: " in demo
        assert caught == ("Check: " in p.solution)
        assert is_correct(demo, p.answer) == caught  # only a check repairs the flawed plan
        if caught:
            assert f"Missing {formula[-1]}." in demo
    easy = next(p for p in train2k if p.level == 1)
    assert pw.make_demonstration(easy, 1.0, rng=rng) == easy.solution  # flaw_levels (3, 4) only
    shared = np.random.default_rng(5)
    draws = [pw.make_demonstration(p, 0.6, rng=shared) != p.solution for p in hard]
    assert 0.45 < sum(draws) / len(draws) < 0.75


# ------------------------------------------------------------------ pivot labels


def test_pivot_labels_on_worked_examples():
    problem = "Let a=(12+7)*3, b=45-9+2, c=8*6. Find a-b."
    response = "\n\n".join([
        "Let me see.",            # 1 open
        "Hmm.",                   # 2 filler
        "Let me plan: T=a-b.",    # 3 plan      pivotal
        "12+7=19",                # 4 compute
        "Now a=19*3=57",          # 5 compute
        "Next, 45-9=36",          # 6 compute
        "b=36+2=38",              # 7 compute
        "Check: T=a-b. Good.",    # 8 check     pivotal
        "Then a-b=57-38=19",      # 9 combine   pivotal
        "The answer is \\boxed{19}",  # 10 answer
    ])
    assert pw.step_kinds(problem, response.split("\n\n")) == [
        "open", "filler", "plan", "compute", "compute", "compute", "compute", "check", "combine", "answer"
    ]
    assert pw.pivotal_steps(problem, response) == (3, 8, 9)
    # a policy's garbled steps are 'other'; a combination of a part the problem does not define is too
    assert pw.step_kinds(problem, ["a-b=57-", "a-z=57-38=19", "T=a=57", "Let me plan: T=a."]) == ["other", "other", "combine", "plan"]
    assert pw.step_kinds("Compute 1 + 2.", ["1 + 2 = 3", "Let me plan: T=a."]) == ["other", "plan"]


def test_recorded_pivots_are_the_labels_of_the_solution_text(train2k):
    for p in train2k[:1_000]:
        assert p.pivotal_steps == pw.pivotal_steps(p.problem, p.solution)
        kinds = [kind for _, kind in pw.solve(p.problem)]
        assert pw.step_kinds(p.problem, p.solution.split(data.STEP_SEPARATOR)) == kinds
    assert data.problem_at(0).pivotal_steps is None  # the arithmetic world records none


# ------------------------------------------------------------------ the registry and the old world


def test_worlds_registry_keeps_the_arithmetic_world_as_it_was():
    arith = world_for(DataConfig())
    assert arith.phrases == ("\n\n", data.SUFFIX, "Compute ", "The answer is \\boxed{", "Let me ", "Wait, let me check: ", "\\frac{")
    assert arith.step_kinds is None and arith.problem_at(5) == data.problem_at(5)
    assert data.synthetic_heldout(DataConfig(heldout_size=40)) == data.heldout_set(40)
    pivot = world_for(DataConfig(world="pivot"))
    assert set(pw.PHRASES) >= {"\n\n", data.SUFFIX, data.ANSWER_LEAD} and pivot.phrases == pw.PHRASES
    assert data.synthetic_heldout(DataConfig(world="pivot", heldout_size=40)) == pw.heldout_set(40)
    stream = data.ProblemStream(DataConfig(world="pivot", levels=[2]))
    assert stream.read(3)[0] == pw.generate_problems(3, levels=(2,), seed=0)
    corpus = "".join(data.format_prompt(p.problem) + p.solution for p in pw.generate_problems(400, seed=0))
    assert all(piece in corpus for piece in pw.PHRASES)


# ------------------------------------------------------------------ pivot hit rates


def tokenized_group(problem: data.Problem):
    tok = build_tokenizer(pw.PHRASES)
    ids = tok(problem.solution, add_special_tokens=False)["input_ids"]
    mask, _ = separator_mask(tok)
    spans = [list(s) for s in split_steps(ids, mask)]
    resp = Response(ids, [0.0] * len(ids), step_spans=spans)
    prompt = tok(data.format_prompt(problem.problem), add_special_tokens=False)["input_ids"]
    return PromptGroup(problem.id, problem.problem, problem.answer, problem.level, prompt, [resp]), decode_vocab(tok)


def test_pivot_hit_rates_on_a_hand_made_batch():
    problem = pw.problem_at(11, levels=(1,))  # opener, 2 fillers, plan = step 4; pivots (4, 12, 13, 14) of 15 steps
    group, vocab = tokenized_group(problem)
    resp = group.responses[0]
    starts = [s for s, _ in resp.step_spans]
    other = PromptGroup("q", problem.problem, problem.answer, 1, group.prompt_ids, [Response(list(resp.token_ids), [0.0] * len(resp.token_ids), step_spans=resp.step_spans)])
    resp.branch_points = [starts[3], starts[5]]  # the plan (hit) and a computation step
    other.responses[0].branch_points = [starts[1], starts[4] - 1]  # a filler, and the separator ending the plan: no hit
    unbranched = PromptGroup("u", problem.problem, problem.answer, 1, group.prompt_ids, [Response(list(resp.token_ids), [0.0] * len(resp.token_ids), step_spans=resp.step_spans)])
    world = world_for(DataConfig(world="pivot"))
    rates = pivot_hit_rates([group, other, unbranched], world.step_kinds, world.pivotal_kinds, vocab)
    assert rates["tree/pivot_hit_rate"] == 0.5 and rates["tree/plan_hit_rate"] == 0.5
    assert rates["tree/pivot_point_share"] == 0.25
    assert rates["tree/pivot_step_share"] == pytest.approx(4 / 14)  # 4 of steps 2..15 are pivotal
    assert pivot_hit_rates([unbranched], world.step_kinds, world.pivotal_kinds, vocab) == {}
    # a point inside the plan's text (not only its start) hits it too
    inside = response_hits([starts[3] + 5], resp.step_spans, [vocab[t] for t in resp.token_ids],
                           pw.step_kinds(problem.problem, problem.solution.split("\n\n")), pw.PIVOTAL_KINDS)
    assert inside.plan_points == 1


def test_criteria_points_on_a_solution_and_where_they_land():
    """earliest takes steps 2-3 (two fillers here: the plan is step 4); ATB on scores that peak at
    the plan and the check takes those two; the first response step is never a point."""
    problem = pw.problem_at(11, levels=(1,))
    assert problem.pivotal_steps == (4, 12, 13, 14)
    group, vocab = tokenized_group(problem)
    resp = group.responses[0]
    T = len(resp.step_spans)
    scores = [0.0, 9.0] + [0.0] * (T - 1)  # step 1 (the opener) is never a point, whatever its score
    scores[4] = 1.0  # the plan (response step 4)
    scores[12] = 0.8  # the check
    resp.step_fci, resp.token_entropy, resp.token_logprobs = scores, [0.5] * len(resp.token_ids), [-0.5] * len(resp.token_ids)
    resp.reward = 0.0
    world = world_for(DataConfig(world="pivot"))
    rates = {}
    for criterion in ("fci", "earliest"):
        plan_branches([group], FCIRunningMean(), BranchConfig(criterion=criterion, min_token_offset=0, min_token_gap=0),
                      ExpansionConfig(fci_filter=False, mode="uniform"), torch.Generator().manual_seed(0), vocab)
        rates[criterion] = pivot_hit_rates([group], world.step_kinds, world.pivotal_kinds, vocab)
    assert rates["fci"]["tree/plan_hit_rate"] == 1.0 and rates["fci"]["tree/pivot_point_share"] == 1.0
    assert rates["earliest"]["tree/pivot_hit_rate"] == 0.0
