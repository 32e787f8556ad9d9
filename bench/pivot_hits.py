"""Where each branch criterion puts its points on the base policy's own responses (pivot world).

    .venv/bin/python bench/pivot_hits.py [--config experiments/pivot.yaml] [--model PATH] [--prompts 96] [--set k=v ...]

No training: sample G responses per training prompt with the base policy (the cached warm start
of the config, or --model), score them once with the release's FCI zeroing rules on (the paper's
default) and once with them off (fci.zero_first_step / zero_answer_summary = false), then let
every criterion pick points in EVERY response (expansion uniform, no filter: the criterion
alone decides) and count, per criterion and rule setting (attnrl_core/pivots.py):

    pivot hit    responses with a point in a pivotal step (plan, check, combination)
    plan hit     responses with a point in the plan step
    flawed plan  the plan hit among responses whose plan leaves out a term of the question:
                 the one step whose re-sampling can repair them (besides a check)
    pivot pts    share of the points in pivotal steps; chance = the pivotal share of steps 2..T

The zeroing rules change only FCI's scores, so entropy, random and earliest read the same with
them on or off (printed once).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attnrl_core import data, pivot_world  # noqa: E402
from attnrl_core.branch_plan import plan_branches  # noqa: E402
from attnrl_core.config import load_config  # noqa: E402
from attnrl_core.exploration import FCIRunningMean  # noqa: E402
from attnrl_core.pivots import pivot_hit_rates, step_texts  # noqa: E402
from attnrl_core.policy import encode_prompt, load_policy  # noqa: E402
from attnrl_core.prompt_groups import PromptGroup, response_from_generation  # noqa: E402
from attnrl_core.rewards import assign_rewards  # noqa: E402
from attnrl_core.rollout import SamplingParams, make_engine  # noqa: E402
from attnrl_core.scoring import score_groups  # noqa: E402
from attnrl_core.steps import decode_vocab, separator_mask  # noqa: E402
from attnrl_core.worlds import world_for  # noqa: E402

CRITERIA = ("fci", "entropy", "random", "earliest")


def flawed_plan(problem: str, steps: list[str]) -> bool:
    """The response's first plan step names fewer terms than the question."""
    question = problem.split(pivot_world.QUESTION_LEAD)[-1].rstrip(".")
    plans = [s for s in steps if s.startswith(pivot_world.PLAN_LEAD)]
    return bool(plans) and plans[0] != f"{pivot_world.PLAN_LEAD}{pivot_world.TARGET}={question}." and question.startswith(
        plans[0][len(pivot_world.PLAN_LEAD) + 2 : -1]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/pivot.yaml")
    parser.add_argument("--model", default=None, help="base policy folder (default: the config's cached warm start)")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = load_config(args.config, args.overrides)
    world = world_for(cfg.data)
    if world.step_kinds is None:
        raise SystemExit(f"{args.config}: data.world {cfg.data.world!r} labels no pivotal steps (use data.world: pivot)")
    if args.model is None:
        from flows.warmstart import base_path

        args.model = str(base_path(cfg))
    model, tokenizer = load_policy(args.model, cfg.model)
    model.eval()
    vocab = decode_vocab(tokenizer)
    sep_mask, _ = separator_mask(tokenizer, vocab_size=model.config.vocab_size)
    problems, _ = data.ProblemStream(cfg.data).read(args.prompts)

    start = time.perf_counter()
    engine = make_engine("hf", model=model, eos_token_id=tokenizer.eos_token_id, max_batch_size=cfg.rollout.max_batch_size)
    prompts = [encode_prompt(tokenizer, data.format_prompt(p.problem)) for p in problems]
    params = SamplingParams.for_rollout(cfg.rollout, cfg.data.max_response_tokens)
    generations = engine.generate(prompts, params, seed=args.seed, n=[cfg.rollout.group_size] * len(prompts))
    groups = [
        PromptGroup(p.id, p.problem, p.answer, p.level, ids, [response_from_generation(g) for g in gens])
        for p, ids, gens in zip(problems, prompts, generations)
    ]
    assign_rewards(tokenizer, groups, [], timeout_s=cfg.verify.timeout_s)
    sampled = time.perf_counter() - start

    rules = {
        "on": cfg.fci.model_copy(update={"zero_prompt": True, "zero_first_step": True, "zero_answer_summary": True}),
        "off": cfg.fci.model_copy(update={"zero_first_step": False, "zero_answer_summary": False}),
    }
    responses = [r for g in groups for r in g.responses]
    accuracy = sum(r.reward for r in responses) / len(responses)
    print(f"{args.model}: {len(groups)} prompts x {cfg.rollout.group_size} samples at T={cfg.rollout.temperature} "
          f"({sampled:.0f} s), sample accuracy {accuracy:.1%}, mean length {sum(len(r.token_ids) for r in responses) / len(responses):.0f} tokens")
    by_level = {}
    for g in groups:
        by_level.setdefault(g.level, []).append(g.accuracy)
    print("sample accuracy by level: " + ", ".join(f"{lvl}: {sum(a) / len(a):.1%}" for lvl, a in sorted(by_level.items())))

    header = f"{'criterion':<10} {'rules':<5} {'pivot hit':>9} {'plan hit':>9} {'flawed plan':>12} {'pivot pts':>10} {'chance':>7}"
    print(header)
    print("-" * len(header))
    for rule, fci_cfg in rules.items():
        score_groups(model, groups, sep_mask, vocab, tokenizer.pad_token_id, fci_cfg, micro_batch=cfg.rollout.max_batch_size)
        texts = {id(r): step_texts([vocab[t] for t in r.token_ids], r.step_spans) for r in responses}
        flawed = [
            PromptGroup(g.problem_id, g.problem, g.answer, g.level, g.prompt_ids, [r for r in g.responses if flawed_plan(g.problem, texts[id(r)])])
            for g in groups
        ]
        for criterion in CRITERIA:
            if rule == "off" and criterion != "fci":
                continue  # the rules change FCI scores only
            branch = cfg.branch.model_copy(update={"criterion": criterion})
            expansion = cfg.expansion.model_copy(update={"fci_filter": False, "mode": "uniform"})
            plan_branches(groups, FCIRunningMean(), branch, expansion, torch.Generator().manual_seed(args.seed), vocab, cfg.data.max_response_tokens)
            rates = pivot_hit_rates(groups, world.step_kinds, world.pivotal_kinds, vocab)
            on_flawed = pivot_hit_rates([g for g in flawed if g.responses], world.step_kinds, world.pivotal_kinds, vocab)
            n_flawed = sum(len(g.responses) for g in flawed)
            print(
                f"{criterion:<10} {rule if criterion == 'fci' else 'any':<5} {rates['tree/pivot_hit_rate']:>9.1%} {rates['tree/plan_hit_rate']:>9.1%} "
                f"{on_flawed.get('tree/plan_hit_rate', float('nan')):>8.1%} ({n_flawed:>3}) {rates['tree/pivot_point_share']:>10.1%} {rates['tree/pivot_step_share']:>7.1%}"
            )


if __name__ == "__main__":
    main()
