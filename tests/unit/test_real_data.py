"""Problems from the packages that ship them (GSM8K originals, fresh GSM-symbolic problems, CHAMP)
and the verifier on CHAMP's free-text reference answers."""

import json


from attnrl_core import data
from attnrl_core.real_data import champ_problems, gsm8k_originals, gsm_symbolic_training, write_jsonl
from attnrl_core.verify import reference_forms, verify_batch


def test_gsm8k_originals_are_the_100_test_questions_with_numeric_answers(tmp_path):
    rows = gsm8k_originals()
    assert len(rows) == 100 and len({r["problem"] for r in rows}) == 100
    assert all(r["answer"].lstrip("-").replace(".", "", 1).isdigit() for r in rows)
    assert all("<<" not in r["solution"] and "####" not in r["solution"] for r in rows)
    problems = data.load_benchmark(write_jsonl(rows, tmp_path / "gsm8k.jsonl"))
    assert problems[0].answer == rows[0]["answer"] and problems[0].level is None


def test_training_problems_are_fresh_instances_never_the_originals():
    originals = {r["problem"] for r in gsm8k_originals()}
    rows = gsm_symbolic_training(9, seed=0, templates=[0, 1, 2])
    assert len(rows) == 9 and not ({r["problem"] for r in rows} & originals)
    assert len({r["problem"] for r in rows}) == 9
    assert rows == gsm_symbolic_training(9, seed=0, templates=[0, 1, 2])  # seeded
    assert rows != gsm_symbolic_training(9, seed=1, templates=[0, 1, 2])


def test_champ_keeps_free_text_answers(tmp_path):
    rows = champ_problems()
    assert len(rows) == 270
    answers = {r["answer"] for r in rows}
    assert "C(10, 5), or equivalently 252" in answers and "2^(n-1)" in answers
    loaded = data.load_benchmark(write_jsonl(rows, tmp_path / "champ.jsonl"))
    assert [p.answer for p in loaded] == [r["answer"] for r in rows]  # verbatim
    assert json.loads((tmp_path / "champ.jsonl").read_text().splitlines()[0])["category"]


def test_free_text_references_accept_each_exact_form_and_nothing_approximate():
    cases = [
        ("\\boxed{252}", "C(10, 5), or equivalently 252", True),
        ("\\boxed{\\binom{10}{5}}", "C(10, 5), or equivalently 252", True),
        ("\\boxed{251}", "C(10, 5), or equivalently 252", False),
        ("\\boxed{\\frac{5}{14}}", "5/14, or approximately 35.7%", True),
        ("\\boxed{35.7\\%}", "5/14, or approximately 35.7%", False),  # an approximation is not the answer
        ("\\boxed{2^{n-1}}", "2^(n-1)", True),
        ("\\boxed{2^{n}}", "2^(n-1)", False),
        ("\\boxed{0}", "0 is the only possible value", True),
        ("\\boxed{999}", "999 (i.e., all except for one value)", True),
        ("\\boxed{\\text{No such values}}", "No such values", True),
        ("\\boxed{No}", "Yes", False),
    ]
    assert verify_batch([c[0] for c in cases], [c[1] for c in cases], timeout_s=30.0) == [c[2] for c in cases]


def test_every_champ_reference_and_each_of_its_forms_verifies_against_itself_boxed():
    rows = champ_problems()
    refs, responses = [], []
    for r in rows:
        for form in reference_forms(r["answer"]):
            refs.append(r["answer"])
            responses.append("The answer is \\boxed{" + form + "}")
    assert len(responses) == 270 + 53  # 47 references name 53 further exact forms
    assert all(verify_batch(responses, refs, timeout_s=30.0))
    assert reference_forms("17") == ["17"]  # a plain reference is its only form: verdicts as before
