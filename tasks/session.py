"""The long-lived state of one training run, and what every phase task shares.

Prefect tasks receive a small handle (the session id) and look the session up here: the policy,
the frozen reference, the optimizer and the rollout engine never travel through Prefect's result
store. Between iterations the run's serialisable state (`TrainState`) is all a checkpoint needs
besides weights and optimizer.

Retry semantics: a phase task may run twice for the same (run, iteration, phase). Phases read
their inputs from the session and write their outputs to `session.staged`, which the flow
commits only when the iteration's phases all succeeded; the update phase, which must mutate
the policy, snapshots weights + optimizer on its first attempt and restores them on a retry.
Every phase draws randomness from `phase_seed(run seed, iteration, phase)`, so a retry
reproduces the same result bit for bit on CPU.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from attnrl_core.adaptive_batch import AdaptiveBatchSize
from attnrl_core.config import Config
from attnrl_core.errors import AttnRLError
from attnrl_core.exploration import FCIRunningMean
from attnrl_core.tree_sampling import BranchSettings, PromptGroup, from_json, to_json

PHASES = ("rollout", "score", "branch", "update", "evaluate", "checkpoint")


def phase_seed(seed: int, iteration: int, phase: str) -> int:
    """A 63-bit seed from (run seed, iteration, phase): stable across processes and machines.

    >>> phase_seed(0, 3, "rollout") == phase_seed(0, 3, "rollout") != phase_seed(0, 4, "rollout")
    True
    """
    digest = hashlib.sha256(f"attnrl/{seed}/{iteration}/{phase}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient failures, never a deterministic user error
    (a NaN loss or a bad input fails the same way every time)."""
    try:
        state.result()
    except AttnRLError:
        return False
    except BaseException:  # noqa: BLE001 - any other failure is worth a retry
        return True
    return True


def phase_task(name: str):
    """A phase as a Prefect task: not cached (the session is the state), retried unless the
    failure is a user error, and reporting its own compute time as metric `time/<name>` so the
    flow can tell orchestration overhead from work."""

    def wrap(fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            metrics = fn(*args, **kwargs)
            metrics[f"time/{name}"] = time.perf_counter() - start
            return metrics

        return task(name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)(timed)

    return wrap


class InjectedFault(RuntimeError):
    """Raised once by fault injection (train.fault / ATTNRL_FAULT) to exercise retries."""


@dataclass
class TrainState:
    """Everything between iterations that is not weights or optimizer (JSON-serialisable)."""

    iteration: int = 0  # last completed iteration
    cursor: int = 0  # next index of the training problem stream
    running_mean: dict = field(default_factory=lambda: FCIRunningMean().state_dict())
    batch: dict = field(default_factory=dict)  # AdaptiveBatchSize state
    pending: list = field(default_factory=list)  # one-step pipeline: scored + planned batch (JSON)
    best: dict = field(default_factory=dict)  # {"iteration", "score", "path"}
    generated_tokens: int = 0
    wall_seconds: float = 0.0
    mlflow_run_id: str = ""
    config_hash: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Staged:
    """Outputs of the current iteration's phases, committed together at its end."""

    current: list[PromptGroup] = field(default_factory=list)  # the batch trained on this iteration
    next_pending: list[PromptGroup] = field(default_factory=list)
    running_mean: FCIRunningMean | None = None
    cursor: int | None = None
    generated_tokens: int = 0
    valid_sequences: int | None = None
    samples: list = field(default_factory=list)  # PolicySample list for the update
    trees: list = field(default_factory=list)  # PromptTree (or None) per group of `current`
    metrics: dict[str, float] = field(default_factory=dict)


class TrainSession:
    """Heavy objects of a run + its TrainState. Built by the train flow, found by handle."""

    def __init__(self, cfg: Config, policy, reference, tokenizer, engine, trainer, state: TrainState):
        self.cfg, self.policy, self.reference, self.tokenizer = cfg, policy, reference, tokenizer
        self.engine, self.trainer, self.state = engine, trainer, state
        self.handle = uuid.uuid4().hex
        self.staged = Staged()
        self.batch = AdaptiveBatchSize(
            initial_prompts=cfg.batch.prompts,
            target_sequences=cfg.batch.target_sequences,
            lam=cfg.batch.smoothing,
            rule=cfg.batch.formula,
            min_prompts=cfg.batch.min_prompts,
            max_prompts=cfg.batch.max_prompts,
            max_growth=cfg.batch.max_growth,
        )
        if state.batch:
            self.batch.load_state_dict(state.batch)
        self.running_mean = FCIRunningMean.from_state_dict(state.running_mean)
        self.pending: list[PromptGroup] = from_json(state.pending)
        from attnrl_core.steps import decode_vocab, separator_mask

        self.vocab_texts = decode_vocab(tokenizer)
        self.sep_mask, self.sep_rule = separator_mask(tokenizer, vocab_size=policy.config.vocab_size)
        self._snapshot: tuple[int, Any] | None = None
        self._faults_fired: set[tuple[str, int]] = set()
        self.branch_settings = BranchSettings(
            criterion=cfg.branch.criterion,
            num_points=cfg.branch.num_points,
            rho=cfg.branch.rho,
            min_token_offset=cfg.branch.min_token_offset,
            min_token_gap=cfg.branch.min_token_gap,
            max_response_tokens=cfg.data.max_response_tokens,
            fci_filter=cfg.expansion.fci_filter,
            filter_strict=cfg.expansion.strict,
            rounding=cfg.expansion.rounding,
            mode=cfg.expansion.mode,
        )

    # -- randomness, faults, retries --------------------------------------------------------
    def generator(self, iteration: int, phase: str) -> torch.Generator:
        return torch.Generator().manual_seed(phase_seed(self.cfg.seed, iteration, phase))

    def seed(self, iteration: int, phase: str) -> int:
        return phase_seed(self.cfg.seed, iteration, phase)

    def maybe_fail(self, phase: str, iteration: int) -> None:
        """Fault injection: `train.fault` or ATTNRL_FAULT = 'phase@iteration' fails that phase's
        FIRST attempt at that iteration (after it has done its work), then lets retries pass."""
        spec = os.environ.get("ATTNRL_FAULT") or self.cfg.train.fault
        if not spec:
            return
        for item in spec.split(","):
            name, _, at = item.strip().partition("@")
            if name == phase and at.isdigit() and int(at) == iteration and (phase, iteration) not in self._faults_fired:
                self._faults_fired.add((phase, iteration))
                raise InjectedFault(f"injected fault in phase {phase!r} at iteration {iteration} (first attempt)")

    def snapshot_or_restore(self, iteration: int) -> None:
        """First update attempt of an iteration: remember weights + optimizer; a retry: restore."""
        if self._snapshot is not None and self._snapshot[0] == iteration:
            weights, optim = self._snapshot[1]
            self.policy.load_state_dict(weights)
            self.trainer.load_state_dict(copy.deepcopy(optim))
            return
        weights = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        self._snapshot = (iteration, (weights, copy.deepcopy(self.trainer.state_dict())))

    # -- iteration boundaries ---------------------------------------------------------------
    def begin_iteration(self) -> None:
        self.staged = Staged()
        self._iteration_start = time.perf_counter()

    def commit_iteration(self, iteration: int) -> None:
        """Fold the staged outputs into the state: the iteration is now complete."""
        st = self.staged
        self.pending = st.next_pending
        if st.running_mean is not None:
            self.running_mean = st.running_mean
        if st.cursor is not None:
            self.state.cursor = st.cursor
        if st.valid_sequences is not None and self.cfg.batch.adaptive:
            self.batch.update(st.valid_sequences)
        self.state.iteration = iteration
        self.state.generated_tokens += st.generated_tokens
        self.state.wall_seconds += time.perf_counter() - self._iteration_start
        self.state.running_mean = self.running_mean.state_dict()
        self.state.batch = self.batch.state_dict()
        self.state.pending = to_json(self.pending)
        self._snapshot = None

    @property
    def prompt_batch_size(self) -> int:
        return self.batch.prompts if self.cfg.batch.adaptive else self.cfg.batch.prompts


SESSIONS: dict[str, TrainSession] = {}


def register(session: TrainSession) -> str:
    SESSIONS[session.handle] = session
    return session.handle


def get(handle: str) -> TrainSession:
    try:
        return SESSIONS[handle]
    except KeyError:
        raise RuntimeError(f"no live training session {handle!r} in this process") from None
