"""Evaluation: avg@K and the unbiased pass@K, overall and per difficulty level.

    >>> pass_at_k(n=4, c=1, k=2)   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    >>> report = summarize([Scored(level=1, correct=2, samples=4), Scored(level=2, correct=0, samples=4)], k=4)
    >>> report.avg, report.pass_k, report.by_level[1].avg
    (0.25, 0.5, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from typing import Callable, Sequence

from attnrl_core.policy import encode_prompt
from attnrl_core.rollout import RolloutEngine, SamplingParams


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


@dataclass(frozen=True)
class Scored:
    """One problem's outcome: `correct` of `samples` sampled responses verified."""

    level: int | None
    correct: int
    samples: int


@dataclass
class LevelReport:
    problems: int
    avg: float  # avg@K: mean fraction of correct samples
    pass_k: float  # mean unbiased pass@K


@dataclass
class EvalReport:
    k: int
    problems: int
    avg: float
    pass_k: float
    by_level: dict[int, LevelReport] = field(default_factory=dict)
    samples: list[tuple[str, str, bool]] = field(default_factory=list)  # a few (prompt, response, correct) for people

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric names as tracked ('@' is not allowed in MLflow names, hence '_at_'):
        '<prefix>/avg_at_K', '<prefix>/pass_at_K', '<prefix>/level_L/avg_at_K', ..."""
        out = {f"{prefix}/avg_at_{self.k}": self.avg, f"{prefix}/pass_at_{self.k}": self.pass_k}
        for level, rep in self.by_level.items():
            out[f"{prefix}/level_{level}/avg_at_{self.k}"] = rep.avg
            out[f"{prefix}/level_{level}/pass_at_{self.k}"] = rep.pass_k
        return out


def _report(rows: Sequence[Scored], k: int) -> tuple[float, float]:
    avg = sum(r.correct / r.samples for r in rows) / len(rows)
    pk = sum(pass_at_k(r.samples, r.correct, k) for r in rows) / len(rows)
    return avg, pk


def summarize(rows: Sequence[Scored], k: int) -> EvalReport:
    """Aggregate per-problem outcomes into the overall and per-level report."""
    if not rows:
        raise ValueError("summarize needs at least one scored problem")
    avg, pk = _report(rows, k)
    levels = sorted({r.level for r in rows if r.level is not None})
    by_level = {}
    for level in levels:
        sub = [r for r in rows if r.level == level]
        lavg, lpk = _report(sub, k)
        by_level[level] = LevelReport(problems=len(sub), avg=lavg, pass_k=lpk)
    return EvalReport(k=k, problems=len(rows), avg=avg, pass_k=pk, by_level=by_level)


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    problems: Sequence,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    verify_batch: Callable[[list[str], list[str]], list[bool]],
    format_prompt: Callable[[str], str],
    keep_examples: int = 8,
) -> EvalReport:
    """Sample `samples` responses per problem, verify them, and summarise.

    `problems` are objects with `.problem`, `.answer` and `.level` (None for benchmark files).
    """
    prompts = [encode_prompt(tokenizer, format_prompt(p.problem)) for p in problems]
    params = SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens)
    generations = engine.generate(prompts, params, seed=seed)
    texts, refs = [], []
    for problem, gens in zip(problems, generations):
        for g in gens:
            texts.append(tokenizer.decode(g.token_ids, skip_special_tokens=True))
            refs.append(problem.answer)
    verdicts = verify_batch(texts, refs)
    rows = []
    for i, problem in enumerate(problems):
        ok = verdicts[i * samples : (i + 1) * samples]
        rows.append(Scored(level=problem.level, correct=sum(ok), samples=samples))
    report = summarize(rows, k=samples)
    report.samples = [
        (format_prompt(problems[i].problem), texts[i * samples], verdicts[i * samples])
        for i in range(min(keep_examples, len(problems)))
    ]
    return report
