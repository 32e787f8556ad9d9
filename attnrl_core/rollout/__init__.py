"""Rollout engines: one interface for sampling responses and continuations.

An engine turns token-id prompts into sampled token ids plus the behaviour log-prob of every
sampled token. A prompt may be a bare prompt (initial sampling, G responses) or a prompt plus a
partial response (tree continuations, T per branching point): for the engine both are just a
prefix to continue, and "T continuations of one prefix" is one prompt with `n = T`.

Engines (`make_engine(name, **kwargs)`):
- "hf": transformers in this process, CPU or GPU (`attnrl_core.rollout.hf.HFEngine`).
- "vllm": a vLLM generation server in its own environment, spoken to over local HTTP
  (`attnrl_core.rollout.vllm_client.VLLMEngine`).

Behaviour log-probs are taken under the distribution each token was SAMPLED from: the policy's
logits divided by the temperature, restricted to the top-k / top-p set and renormalised over it.
At temperature 1 with top_k = 0 and top_p = 1 that is exactly the policy's log-prob (what PPO's
ratio needs). Greedy decoding (temperature 0) samples from a point mass, whose log-prob (always 0)
says nothing; there the engines report the untempered policy log-prob log softmax(logits) of the
chosen token instead (vLLM's `processed_logprobs` does the same).

Example (a tiny random Qwen2 whose EOS id is 1)::

    engine = make_engine("hf", model=tiny_qwen2, eos_token_id=1)
    out = engine.generate([[5, 6, 7], [8, 9]], SamplingParams(n=2, max_new_tokens=4), seed=0)
    len(out), len(out[0])     # -> (2, 2): [prompt index][sample index]
    out[0][1]                 # -> Generation(token_ids=[12, 30, 1], logprobs=[-3.1, -2.7, -4.0],
                              #               finished=True)   (stopped at EOS after 3 tokens)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from attnrl_core.errors import AttnRLError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. One set per `generate` call: every prompt of the call shares it.

    n: samples per prompt. temperature: 0 means greedy (argmax). top_p: nucleus mass in (0, 1].
    top_k: keep the k most likely tokens, 0 = off (HF `generate` would silently apply 50; these
    engines never do). max_new_tokens: default budget per sample (generate may override it per
    prompt). stop_at_eos: stop a sample at its first EOS token (EOS kept in the output).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.n, int) and self.n >= 1):
            problems.append(f"n={self.n!r} must be an integer >= 1")
        if not self.temperature >= 0.0:
            problems.append(f"temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p!r} must lie in (0, 1]")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            problems.append(f"top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0):
            problems.append(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 0")
        if problems:
            raise AttnRLError("Invalid rollout sampling parameters: " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def for_rollout(cls, cfg, max_new_tokens: int) -> "SamplingParams":
        """Training-time sampling (initial responses and continuations alike) from the rollout
        config section; n and the budgets are given per prompt at generate time."""
        return cls(n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=max_new_tokens)


@dataclass
class Generation:
    """One sampled continuation.

    token_ids: generated tokens only (the EOS that ended it included).
    logprobs: behaviour log-prob of each token under the distribution it was sampled from
        (temperature, top-k, top-p applied and renormalised; greedy: untempered policy log-prob).
    finished: True when the sample stopped at an EOS token, False when it used its whole budget.
    """

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False


@runtime_checkable
class RolloutEngine(Protocol):
    #: True when `for_run` samples from the policy object it is given (no copy of the weights):
    #: under ZeRO-3, which partitions that object, such an engine is given a copy of its own.
    reads_policy_in_place: bool

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seed: int,
        max_new_tokens: list[int] | None = None,
        n: list[int] | None = None,
        prompt_index: list[int] | None = None,
    ) -> list[list[Generation]]:
        """Sample `params.n` (or `n[i]`) continuations of every prompt; returns [prompt index][sample index].

        `prompt_index`, when given, is the index each prompt's random streams are keyed by
        (`row_seed(seed, prompt_index[i], j)`; default: its position in `prompts`). A rank that
        generates its share of a larger call passes the prompts' places in the whole call, so
        sharding a call over ranks gives the same samples as one engine taking all of it.

        `n`, when given, is one sample count per prompt replacing `params.n`: one call can hold
        the G initial samples of new prompts AND the T continuations of branch points (docs/method.md §7).

        `max_new_tokens`, when given, is one budget per prompt replacing `params.max_new_tokens`
        (tree sampling truncates continuations so prefix + continuation respects the response
        length limit); a budget of 0 yields n empty, unfinished generations.
        """
        ...

    def update_weights(self, source: Any) -> None:
        """Make the engine sample from new policy weights: a state_dict or a checkpoint folder
        written by `save_pretrained`."""
        ...


def resolve_budgets(prompts: list[list[int]], params: SamplingParams, max_new_tokens: list[int] | None) -> list[int]:
    """Validate a generate call's prompts and return one token budget per prompt.

    >>> resolve_budgets([[1, 2], [3]], SamplingParams(max_new_tokens=8), None)
    [8, 8]
    >>> resolve_budgets([[1, 2], [3]], SamplingParams(max_new_tokens=8), [5, 0])
    [5, 0]
    """
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise AttnRLError(f"Rollout prompt {i} is empty: every prompt or prefix needs at least one token.")
    if max_new_tokens is None:
        return [params.max_new_tokens] * len(prompts)
    if len(max_new_tokens) != len(prompts):
        raise AttnRLError(
            f"max_new_tokens has {len(max_new_tokens)} budgets for {len(prompts)} prompts: give exactly one per prompt."
        )
    for i, budget in enumerate(max_new_tokens):
        if not (isinstance(budget, int) and budget >= 0):
            raise AttnRLError(f"max_new_tokens[{i}]={budget!r} must be an integer >= 0.")
    return list(max_new_tokens)


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Seed of the random stream of sample `sample_index` of prompt `prompt_index` (63 bits).

    SplitMix64 mixing, so neighbouring (seed, i, j) give unrelated streams. The hf engine seeds
    one torch.Generator per (prompt, sample); the vllm engine sends row_seed(seed, i, 0) as
    request i's seed (vLLM itself offsets it by the sample index).

    >>> row_seed(0, 0, 0) != row_seed(0, 0, 1) != row_seed(0, 1, 0) != row_seed(1, 0, 0)
    True
    """
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ prompt_index) ^ sample_index) >> 1


def resolve_prompt_index(prompts: list[list[int]], prompt_index: list[int] | None) -> list[int]:
    """The index each prompt's random streams are keyed by: `prompt_index` or the positions.

    >>> resolve_prompt_index([[1], [2]], None), resolve_prompt_index([[1], [2]], [4, 9])
    ([0, 1], [4, 9])
    """
    if prompt_index is None:
        return list(range(len(prompts)))
    if len(prompt_index) != len(prompts):
        raise AttnRLError(f"prompt_index has {len(prompt_index)} entries for {len(prompts)} prompts: give exactly one per prompt.")
    return list(prompt_index)


def resolve_counts(prompts: list[list[int]], params: SamplingParams, n: list[int] | None) -> list[int]:
    """One sample count per prompt: `n` if given (validated), else params.n for all.

    >>> resolve_counts([[1], [2]], SamplingParams(n=6), [6, 2])
    [6, 2]
    """
    if n is None:
        return [params.n] * len(prompts)
    if len(n) != len(prompts):
        raise AttnRLError(f"n has {len(n)} sample counts for {len(prompts)} prompts: give exactly one per prompt.")
    for i, count in enumerate(n):
        if not (isinstance(count, int) and count >= 1):
            raise AttnRLError(f"n[{i}]={count!r} must be an integer >= 1.")
    return list(n)


# name -> "module:class"; imported on demand so that asking for "hf" never imports the HTTP client
# and vice versa.
ENGINES = {
    "hf": "attnrl_core.rollout.hf:HFEngine",
    "vllm": "attnrl_core.rollout.vllm_client:VLLMEngine",
}


def engine_class(name: str) -> type:
    """The class registered under `name` (its `for_run(policy, tokenizer, base_path, cfg)`
    builds the engine of a training run)."""
    if name not in ENGINES:
        raise AttnRLError(f"Unknown rollout engine {name!r}: choose one of {sorted(ENGINES)}.")
    module_name, class_name = ENGINES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_engine(name: str, **kwargs: Any) -> RolloutEngine:
    """Build the rollout engine registered under `name` with its keyword arguments.

    make_engine("hf", model=tiny_qwen2, eos_token_id=1, max_batch_size=64)  # -> HFEngine
    make_engine("vllm", model_path="runs/ckpt/policy")                    # -> VLLMEngine (server)
    """
    return engine_class(name)(**kwargs)
