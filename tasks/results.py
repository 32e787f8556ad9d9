"""What each phase of an iteration hands to the next one (and, at the end, to the session's commit).

    rollout -> RolloutResult --score--> ScoreResult
                             --branch--> BranchResult --update--> UpdateResult

Results live in memory only: the flow passes them from task to task in its own process (phase
tasks persist nothing). A phase may fill fields of the prompt groups it is handed (scoring
fills log-probs and FCI, planning fills branch points); doing so again on a retry gives the same
values, so a retried phase is the same phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnrl_core.exploration import FCIRunningMean
from attnrl_core.ppo_samples import BatchSamples
from attnrl_core.prompt_groups import PromptGroup


@dataclass
class RolloutResult:
    """The batch trained on this iteration and the batch sampled for the next one."""

    current: list[PromptGroup]  # trained on this iteration (one_step_off: last iteration's, continued)
    next_pending: list[PromptGroup]  # one_step_off: sampled now, scored and planned now, trained next
    to_plan: list[PromptGroup]  # the freshly sampled groups: this iteration scores them and plans their branches
    cursor: int  # problem stream position after this iteration's prompts
    generated_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoreResult:
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class BranchResult:
    """The branch plan (and, on-policy, its continuations) and the PPO samples of `current`."""

    running_mean: FCIRunningMean | None  # updated FCI running mean (None: nothing was planned)
    batch: BatchSamples | None  # samples + trees of the training batch (None: nothing to train on yet)
    valid_sequences: int | None  # B'' for the adaptive batch size (None: no training batch)
    generated_tokens: int = 0  # on_policy continuations
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class UpdateResult:
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CheckpointResult:
    path: str  # the complete checkpoint folder
    sha256: str  # of its policy weights
    metrics: dict[str, float] = field(default_factory=dict)
