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
from attnrl_core.rollout import RolloutEngine, SamplingParams, row_seed


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
    generated_tokens: int = 0  # tokens the engine generated for this report

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


# called after each engine call of an evaluation with (problems done, problems in all, tokens generated so far)
ProgressCallback = Callable[[int, int, int], None]


def chunk_seed(seed: int, start: int) -> int:
    """Seed of the engine call that starts at problem `start`: the evaluation's own seed for
    the first (so a one-call evaluation samples exactly as before), a mixed one for the others.

    >>> chunk_seed(7, 0), chunk_seed(7, 256) != chunk_seed(7, 512)
    (7, True)
    """
    return seed if start == 0 else row_seed(seed, start, 1)


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
    top_p: float = 1.0,
    rows_per_call: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> EvalReport:
    """Sample `samples` responses per problem, verify them, and summarise.

    `problems` are objects with `.problem`, `.answer` and `.level` (None for benchmark files).
    The problems go to the engine in calls of about `rows_per_call` decoded sequences (greedy
    decodes one per problem, sampling `samples`); None = one call. `on_progress(done, total,
    tokens)` follows each call.
    """
    prompts = [encode_prompt(tokenizer, format_prompt(p.problem)) for p in problems]
    params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    decoded = 1 if params.greedy else samples  # sequences the engine really generates per problem
    per_call = len(prompts) if rows_per_call is None else max(1, rows_per_call // decoded)
    texts, refs, verdicts, tokens = [], [], [], 0
    if on_progress is not None:
        on_progress(0, len(prompts), 0)
    for start in range(0, len(prompts), per_call):
        chunk = slice(start, start + per_call)
        generations = engine.generate(prompts[chunk], params, seed=chunk_seed(seed, start))
        chunk_texts, chunk_refs = [], []
        for problem, gens in zip(problems[chunk], generations):
            tokens += sum(len(g.token_ids) for g in gens[:decoded])
            for g in gens:
                chunk_texts.append(tokenizer.decode(g.token_ids, skip_special_tokens=True))
                chunk_refs.append(problem.answer)
        verdicts += verify_batch(chunk_texts, chunk_refs)
        texts += chunk_texts
        refs += chunk_refs
        if on_progress is not None:
            on_progress(min(start + per_call, len(prompts)), len(prompts), tokens)
    rows = []
    for i, problem in enumerate(problems):
        ok = verdicts[i * samples : (i + 1) * samples]
        rows.append(Scored(level=problem.level, correct=sum(ok), samples=samples))
    report = summarize(rows, k=samples)
    report.generated_tokens = tokens
    report.samples = [
        (format_prompt(problems[i].problem), texts[i * samples], verdicts[i * samples])
        for i in range(min(keep_examples, len(problems)))
    ]
    return report


def objective_value(eval_cfg, reports: dict[str, EvalReport]) -> float:
    """The value of `eval_cfg.objective` (an EvalConfig's) over the reports of one evaluation:
    one benchmark's avg@K / pass@K, or the mean over several.

    >>> from attnrl_core.config import EvalConfig
    >>> reports = {"a": EvalReport(k=1, problems=2, avg=0.5, pass_k=0.5), "b": EvalReport(k=4, problems=3, avg=0.2, pass_k=0.6)}
    >>> objective_value(EvalConfig(benchmarks=["a.jsonl", "b.jsonl"], objective=["a", "b"]), reports)
    0.35
    >>> objective_value(EvalConfig(benchmarks=["a.jsonl", "b.jsonl"], objective={"benchmarks": ["b"], "metric": "pass"}), reports)
    0.6
    """
    values = [reports[b.key].avg if eval_cfg.objective.metric == "avg" else reports[b.key].pass_k for b in eval_cfg.objective_sets()]
    return sum(values) / len(values)
