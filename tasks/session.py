"""The long-lived state of one training run: its one owner.

A `TrainSession` holds the run's ranks (tasks/ranks.py: the policy, frozen reference, trainer
with its optimizer and rollout engine, in this process or on a Ray worker group) and its state
between iterations (iteration, problem stream cursor, FCI running mean, adaptive batch size, the
pending batch of the one-step pipeline, best checkpoint, counters). Every attribute is declared in `__init__`. Phases read the session and return typed
results (tasks/results.py); the flow hands those to the next phase and, once every phase of the
iteration succeeded, to `commit`, the only place the state between iterations changes. The
session is serialised only when a checkpoint is written (`capture`) and rebuilt from one
(`restore`), never copied to JSON in between.

The update phase must mutate the policy, so the ranks keep the weights + optimizer of before
its first attempt of an iteration and restore them on a retry (tasks/ranks.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from attnrl_core import data
from attnrl_core.adaptive_batch import AdaptiveBatchSize
from attnrl_core.config import Config
from attnrl_core.exploration import FCIRunningMean
from attnrl_core.policy import encode_prompt, load_policy, load_tokenizer
from attnrl_core.prompt_groups import PromptGroup, from_json, to_json
from attnrl_core.steps import decode_vocab
from attnrl_core.verify.pool import default_workers, fallback_pool
from tasks.phase import FaultInjector, phase_seed
from tasks.ranks import Rank, RankGroup
from tasks.results import BranchResult, RolloutResult


class TrainSession:
    """The ranks of a run and its state between iterations, built from the base policy and,
    when resuming, a checkpoint (`checkpoint` = (policy state_dict, optimizer state, state dict)).

    `ranks` does the heavy work (tasks/ranks.py): one in-process `Rank` with train.ranks 1, a
    Ray `RankGroup` with more; its `generate` also samples for evaluation."""

    def __init__(self, cfg: Config, base: str, mlflow_run_id: str, checkpoint: tuple[dict, dict, dict] | None = None) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        policy_state, optim_state, state = checkpoint or (None, None, None)
        self.faults = FaultInjector(cfg.train.fault)  # per-process bookkeeping, never checkpointed
        self.ranks: Rank | RankGroup
        if cfg.train.ranks == 1:
            self.ranks = Rank(cfg, base, policy_state, optim_state)
            self.tokenizer, self.vocab_texts = self.ranks.tokenizer, self.ranks.vocab_texts
        else:
            self.tokenizer = load_tokenizer(base)
            self.vocab_texts = decode_vocab(self.tokenizer)  # what branch planning reads of the vocabulary
            saved = (policy_state, optim_state) if policy_state is not None else None
            self.ranks = RankGroup(cfg, base, saved, self.faults)
        self.base = base
        # the state between iterations (captured into every checkpoint)
        self.iteration = 0  # last completed iteration
        self.problems = data.ProblemStream(cfg.data, fits=self._prompt_fits)
        self.running_mean = FCIRunningMean()
        self.batch = AdaptiveBatchSize.from_config(cfg.batch)
        self.pending: list[PromptGroup] = []  # one-step pipeline: sampled, scored and planned, trained next
        self.best: dict = {}  # {"iteration", "score", "name"} of the best evaluation so far
        self.generated_tokens = 0
        self.wall_seconds = 0.0
        self.mlflow_run_id = mlflow_run_id
        # the verifier's math-verify workers start now, in the background: a rollout's first
        # fallback answers must not spend their time limit waiting for them (verify/pool.py)
        fallback_pool().warm_up(default_workers())
        self._iteration_start = time.perf_counter()
        if state is not None:
            self.restore(state)

    def close(self) -> None:
        """End the ranks (a group's actors; a vLLM server of the run's engine)."""
        self.ranks.close()

    def save_policy(self, folder: Path) -> None:
        """The current policy as a from_pretrained folder (weights and tokenizer)."""
        if isinstance(self.ranks, Rank) and not self.cfg.train.partitions_parameters:
            policy = self.ranks.policy
        else:  # the weights live on the ranks (or in ZeRO-3 slices): a CPU copy of the model to write them from
            policy, _ = load_policy(self.base, self.cfg.model.model_copy(update={"device": "cpu"}))
            policy.load_state_dict(self.ranks.state_dicts()[0])
        policy.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def _prompt_fits(self, problem: data.Problem) -> bool:
        return len(encode_prompt(self.tokenizer, data.format_prompt(problem.problem))) <= self.cfg.data.max_prompt_tokens

    # -- checkpoints --------------------------------------------------------------------------
    def capture(self) -> dict:
        """The state between iterations as JSON-ready data (state.json of a checkpoint)."""
        return {
            "iteration": self.iteration,
            "cursor": self.problems.cursor,
            "running_mean": self.running_mean.state_dict(),
            "batch": self.batch.state_dict(),
            "pending": to_json(self.pending),
            "best": dict(self.best),
            "generated_tokens": self.generated_tokens,
            "wall_seconds": self.wall_seconds,
            "mlflow_run_id": self.mlflow_run_id,
            "config_hash": self.cfg.hash(),
        }

    def restore(self, state: dict) -> None:
        """Continue from a captured state (weights and optimizer are restored in __init__)."""
        self.iteration = state["iteration"]
        self.problems.cursor = state["cursor"]
        self.running_mean = FCIRunningMean.from_state_dict(state["running_mean"])
        if state["batch"]:
            self.batch.load_state_dict(state["batch"])
        self.pending = from_json(state["pending"])
        self.best = dict(state["best"])
        self.generated_tokens = state["generated_tokens"]
        self.wall_seconds = state["wall_seconds"]

    # -- randomness and retries ---------------------------------------------------------------
    def generator(self, iteration: int, phase: str) -> torch.Generator:
        return torch.Generator().manual_seed(phase_seed(self.cfg.seed, iteration, phase))

    def seed(self, iteration: int, phase: str) -> int:
        return phase_seed(self.cfg.seed, iteration, phase)

    # -- iteration boundaries -----------------------------------------------------------------
    @property
    def prompt_batch_size(self) -> int:
        return self.batch.prompts if self.cfg.batch.adaptive else self.cfg.batch.prompts

    def begin_iteration(self) -> None:
        self._iteration_start = time.perf_counter()
        self.ranks.timing()  # the iteration's own calls from here (not a base evaluation's)

    def commit(self, iteration: int, rolled: RolloutResult, plan: BranchResult) -> None:
        """Fold an iteration whose phases all succeeded into the state: it is now complete."""
        self.pending = rolled.next_pending
        if plan.running_mean is not None:
            self.running_mean = plan.running_mean
        self.problems.cursor = rolled.cursor
        if plan.valid_sequences is not None and self.cfg.batch.adaptive:
            self.batch.update(plan.valid_sequences)
        self.iteration = iteration
        self.generated_tokens += rolled.generated_tokens + plan.generated_tokens
        self.wall_seconds += time.perf_counter() - self._iteration_start
