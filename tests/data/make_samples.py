"""Writes the sample and deliberately malformed data files used by tests/unit/test_data.py.

Run from the repository root: .venv/bin/python tests/data/make_samples.py
The problems are written for these tests (not copied from any benchmark); their answers are
correct. The files are committed, so tests never need to run this script.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent

# DeepScaleR style: problem, answer, optional solution / level / id.
TRAIN = [
    {"problem": "What is $3 + 4 \\cdot 2$?", "answer": "11"},
    {
        "problem": "Find the positive integer $n$ such that $n^2 = 144$.",
        "answer": "12",
        "solution": "Since $12^2 = 144$ and $n > 0$, we get $n = \\boxed{12}$.",
    },
    {
        "problem": "Simplify $\\frac{6}{8}$.",
        "answer": "\\frac{3}{4}",
        "solution": "Divide top and bottom by $2$: $\\boxed{\\frac{3}{4}}$.",
        "level": 1,
        "id": "dsr-simplify",
    },
    {"problem": "How many positive divisors does $36$ have?", "answer": "9"},
    {"problem": "Solve $2x \u2212 1 = 5$ for $x$ (note the Unicode minus).", "answer": "3"},
]

# AIME style: integer answers.
AIME = [
    {"id": "sample-aime-1", "problem": "The sum of three consecutive integers is $612$. Find the middle one.", "answer": 204},
    {"id": "sample-aime-2", "problem": "Find the remainder when $7^4$ is divided by $1000$.", "answer": 401},
    {"id": "sample-aime-3", "problem": "Find the number of ordered pairs of positive integers $(a, b)$ with $a + b = 20$.", "answer": 19},
]

# AMC style as some public copies store it: "question" and float answers.
AMC = [
    {"question": "What is $\\frac{1}{2} + \\frac{1}{3} + \\frac{1}{6}$?", "answer": 1.0},
    {"question": "A square has area $0.25$. What is its side length?", "answer": 0.5},
]

# MATH-500 style.
MATH500 = {
    "problem": [
        "Compute $\\dbinom{8}{3}$.",
        "What is the value of $\\sqrt{49} + \\sqrt{16}$?",
        "Simplify $\\frac{12}{18}$.",
    ],
    "solution": [
        "$\\dbinom{8}{3} = \\frac{8 \\cdot 7 \\cdot 6}{3 \\cdot 2 \\cdot 1} = \\boxed{56}$.",
        "$7 + 4 = \\boxed{11}$.",
        "Divide by $6$: $\\boxed{\\frac{2}{3}}$.",
    ],
    "answer": ["56", "11", "\\frac{2}{3}"],
    "subject": ["Counting & Probability", "Prealgebra", "Prealgebra"],
    "level": [2, 1, 1],
    "unique_id": ["sample/counting/1.json", "sample/prealgebra/2.json", "sample/prealgebra/3.json"],
}


def jsonl(name: str, lines: list[str]) -> None:
    (HERE / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def main() -> None:
    jsonl("train_sample.jsonl", [json.dumps(row) for row in TRAIN[:3]] + [""] + [json.dumps(row) for row in TRAIN[3:]])
    columns = ["problem", "answer", "solution", "level", "id"]
    pq.write_table(
        pa.table({c: [row.get(c) for row in TRAIN] for c in columns}),
        HERE / "train_sample.parquet",
    )
    jsonl("aime_sample.jsonl", [json.dumps(row) for row in AIME])
    jsonl("amc_sample.jsonl", [json.dumps(row) for row in AMC])
    pq.write_table(pa.table(MATH500), HERE / "math500_sample.parquet")

    ok = json.dumps({"problem": "What is $1 + 1$?", "answer": "2"})
    # Line 3 is broken; line 2 is blank and still counted.
    jsonl("bad_json.jsonl", [ok, "", '{"problem": "What is $2 + 2$?", "answer": "4"'])
    jsonl("missing_answer.jsonl", [ok, json.dumps({"problem": "What is $2 + 2$?", "solution": "4"})])
    jsonl("wrong_type.jsonl", [ok, json.dumps({"problem": "What is $2 + 2$?", "answer": [4]})])
    jsonl("empty_problem.jsonl", [ok, ok, json.dumps({"problem": "   ", "answer": "4"})])
    jsonl("not_object.jsonl", [json.dumps(["What is $1 + 1$?", "2"])])
    jsonl("empty.jsonl", ["", "  "])
    (HERE / "bad_utf8.jsonl").write_bytes(ok.encode() + b"\n" + b'{"problem": "caf\xe9", "answer": "1"}\n')
    # Row 2 has a null problem.
    pq.write_table(
        pa.table({"problem": ["What is $1 + 1$?", None], "answer": ["2", "4"]}),
        HERE / "bad_row.parquet",
    )
    # Row 1 has a list answer.
    pq.write_table(
        pa.table({"problem": ["What is $2 + 2$?"], "answer": pa.array([[4]], type=pa.list_(pa.int64()))}),
        HERE / "wrong_type.parquet",
    )
    (HERE / "corrupt.parquet").write_bytes(b"PAR1 this is not really a parquet file")


if __name__ == "__main__":
    main()
