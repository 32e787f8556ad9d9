"""The policy update: PPO over root-to-leaf paths (docs/method.md §8), with torch and DeepSpeed backends.

A `PolicySample` is one training sequence: prompt + response tokens, the advantage of every
response token, and the behaviour log-probs known from sampling time. For a path that leaves
an initial response at branch point p, the first p response tokens keep the log-probs stored by
the scoring pass (they were sampled by that policy) and the continuation's are recomputed with
the current policy before the first optimizer step (docs/method.md §7: "prefix kept").

    sample = PolicySample(prompt_ids=[5, 6], response_ids=[7, 8, 9], advantages=[0.3, 0.3, -1.3],
                          stored_logprobs=[-0.2])        # response token 7 stored, 8 and 9 recomputed
    stats = trainer.update([sample], generator)          # one epoch, mini-batches, clipped PPO
"""

from __future__ import annotations

import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from attnrl_core.batching import balanced_shards, length_micro_batches, pad_token_rows
from attnrl_core.config import OptimConfig, TrainConfig
from attnrl_core.errors import AttnRLError
from attnrl_core.loss import ppo_loss


@dataclass
class PolicySample:
    prompt_ids: list[int]
    response_ids: list[int]
    advantages: list[float]
    stored_logprobs: list[float] = field(default_factory=list)  # behaviour log-probs of a response prefix


@dataclass
class UpdateStats:
    pg_loss: float
    kl: float
    entropy: float
    clip_frac_high: float
    clip_frac_low: float
    dual_clip_frac: float
    approx_kl: float
    grad_norm: float
    lr: float
    minibatches: int
    tokens: int


STAT_NAMES = ("pg_loss", "kl", "entropy", "clip_frac_high", "clip_frac_low", "dual_clip_frac", "approx_kl")  # token-weighted means


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process trains in; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# Seconds this process has spent inside the trainer's collectives: a rank's compute time is its
# call time less this (tasks/ranks.py reports the rest of a call as dispatch + communication).
_collective_seconds = 0.0


def collective_seconds() -> float:
    return _collective_seconds


@contextmanager
def _collective():
    """Time the torch.distributed collective inside the block into collective_seconds()."""
    global _collective_seconds
    start = time.perf_counter()
    try:
        yield
    finally:
        _collective_seconds += time.perf_counter() - start


def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> None:
    """Reduce `tensor` in place over the data-parallel group ('sum' or 'max')."""
    import torch.distributed as dist

    with _collective():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)


def all_reduce_max(value: int) -> int:
    """The largest `value` over the data-parallel group; one rank: itself."""
    if data_parallel_rank()[1] == 1:
        return value
    buffer = torch.tensor([value], dtype=torch.float64)  # (1,)
    _all_reduce(buffer, "max")
    return int(buffer.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    """`values` summed element-wise over the data-parallel group (fp64); one rank: themselves."""
    if data_parallel_rank()[1] == 1:
        return list(values)
    buffer = torch.tensor(values, dtype=torch.float64)  # (K,)
    _all_reduce(buffer)
    return buffer.tolist()


class NonFiniteLoss(AttnRLError):
    """The loss, gradient norm or weights became NaN/Inf: the run stops, the last checkpoint stays good."""


#: fp32 bytes of one chunk of response positions in `response_logprobs` (B x chunk x V x 4). The
#: full-vocabulary log-softmax, its exp and their gradients exist one chunk at a time, and the
#: backward pass recomputes them (activation checkpointing) instead of keeping them. Measured by
#: bench/gpu.py on one H200 (DS-R1-Distill-Qwen-1.5B's shape, bf16, KL on): one update over one
#: 1,024 + 8,192-token sequence with gradient checkpointing peaked 18.4 GiB above the weights and
#: Adam state chunked vs 22.0 GiB in one piece (0.84x; 0.63 vs 0.60 s); an update of 32 x 2,560
#: tokens in passes of 10,240 without checkpointing 50.2 vs 61.9 GiB (0.81x; 3.96 vs 3.75 s, the
#: two alternating, warm). Results are bit for bit the same (tests/unit/test_trainer.py); on a CPU
#: with a small vocabulary a pass is one chunk.
LOGPROB_CHUNK_BYTES = 1 * 2**30


def _position_logprobs(logits: torch.Tensor, pred_pos: torch.Tensor, targets: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, ...]:
    """fp32 log p(targets) (and entropy) of `logits` (B, L, V) at positions `pred_pos` (B, C)."""
    pred_logits = logits.gather(1, pred_pos[..., None].expand(-1, -1, logits.shape[-1])).float()  # (B, C, V)
    logp_all = torch.log_softmax(pred_logits, dim=-1)  # (B, C, V)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]  # (B, C)
    if not with_entropy:
        return (logp,)
    return logp, -(logp_all.exp() * logp_all).sum(-1)  # (B, C) each


def response_logprobs(
    model: torch.nn.Module, samples: Sequence[PolicySample], pad_token_id: int, with_entropy: bool = False,
    chunk_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-prob (and optionally entropy) of every response token under `model`.

    Returns logp (B, R), mask (B, R) and entropy (B, R) or None, R = longest response; rows are
    right-padded so positions need no shifting. The fp32 work runs over chunks of about
    `chunk_bytes` (None: LOGPROB_CHUNK_BYTES); under autograd each chunk keeps only its indices and is
    recomputed in the backward pass.

    Example: prompt [5, 6], response [7, 8] -> logp[0] = [log p(7 | 5 6), log p(8 | 5 6 7)].
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_token_rows([s.prompt_ids + s.response_ids for s in samples], pad_token_id)  # (B, L) each
    width = input_ids.shape[1]
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L, V), the model's dtype
    B, V = logits.shape[0], logits.shape[-1]
    r_max = max(len(s.response_ids) for s in samples)
    prompt_len = torch.tensor([len(s.prompt_ids) for s in samples], device=device)  # (B,)
    resp_len = torch.tensor([len(s.response_ids) for s in samples], device=device)  # (B,)
    offsets = torch.arange(r_max, device=device)  # (R,)
    mask = offsets[None, :] < resp_len[:, None]  # (B, R)
    # logits at position t predict token t+1: response token i sits at prompt_len + i
    pred_pos = (prompt_len[:, None] - 1 + offsets[None, :]).clamp(max=width - 2)  # (B, R)
    targets = input_ids.gather(1, (pred_pos + 1).clamp(max=width - 1))  # (B, R)
    chunk = max(1, (chunk_bytes or LOGPROB_CHUNK_BYTES) // (B * V * 4))
    recompute = torch.is_grad_enabled() and logits.requires_grad and chunk < r_max
    parts = []
    for c0 in range(0, r_max, chunk):
        args = (logits, pred_pos[:, c0 : c0 + chunk], targets[:, c0 : c0 + chunk], with_entropy)
        parts.append(checkpoint(_position_logprobs, *args, use_reentrant=False) if recompute else _position_logprobs(*args))
    logp = torch.cat([part[0] for part in parts], dim=1)  # (B, R)
    entropy = torch.cat([part[1] for part in parts], dim=1) if with_entropy else None  # (B, R)
    return logp, mask, entropy


class TorchTrainer:
    """AdamW + clipped PPO on a transformers causal LM (CPU or one GPU).

    The reference policy is the frozen initial policy (k3 KL, docs/method.md §8); it is only run when
    kl_coef > 0. `micro_batch_tokens` > 0 runs each mini-batch as length-sorted passes of about
    that many padded tokens whose gradients add up to the mini-batch's (`length_micro_batches`):
    the same update up to float rounding, with less compute spent on padding.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ref_model: torch.nn.Module | None,
        pad_token_id: int,
        optim: OptimConfig,
        train: TrainConfig | None = None,
    ) -> None:
        """`optim` holds every setting of the update (lr, clips, KL, mini-batches); `train` the
        backend's own (read by backends that have any: DeepSpeed's ZeRO stage and bf16)."""
        if optim.kl_coef > 0 and ref_model is None:
            raise ValueError("kl_coef > 0 needs a reference model")
        self.model, self.ref_model, self.pad_token_id = model, ref_model, pad_token_id
        if train is not None and train.gradient_checkpointing:  # acts in train mode only: the update's passes
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lr, self.grad_clip, self.minibatch_sequences = optim.lr, optim.grad_clip, optim.minibatch_sequences
        self.micro_batch_tokens = optim.micro_batch_tokens
        self.loss_args = dict(
            clip_low=optim.clip_low, clip_high=optim.clip_high, dual_clip_c=optim.dual_clip, kl_coef=optim.kl_coef, entropy_coef=optim.entropy_coef
        )
        self.optimizer = self._make_optimizer(optim.lr, optim.weight_decay)

    reduces_every_pass = False  # gradients are reduced once per mini-batch (_reduce_gradients)
    partitions_parameters = False  # every rank holds the whole model (ZeRO-3 does not: DeepSpeedTrainer)

    def _make_optimizer(self, lr: float, weight_decay: float):
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """Add this pass's gradients; `last` = the mini-batch's final pass."""
        loss.backward()

    def _optimizer_step(self) -> float:
        """Sum over the ranks, clip, step, clear the gradients; returns the norm before clipping."""
        self._reduce_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if not torch.isfinite(norm):
            raise NonFiniteLoss(f"The gradient norm became {norm.item()}; the run stops and keeps its last good checkpoint.")
        self.optimizer.step()
        self._zero_grad()
        return norm.item()

    def _passes(self, samples: Sequence[PolicySample], idx: list[int]) -> list[list[int]]:
        groups = length_micro_batches([len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in idx], self.micro_batch_tokens)
        return [[idx[k] for k in group] for group in groups]

    def _equal_passes(self, passes: list[list[int]], filler: list[int]) -> tuple[list[list[int]], int]:
        """`passes` made as many as every peer's where each pass communicates (ZeRO-2's backward
        reduce-scatters, ZeRO-3's forward gathers parameters): a rank with fewer appends passes
        of `filler` (one row), to run at weight 0. Returns (passes, how many real ones)."""
        real = len(passes)
        return passes + [filler] * (all_reduce_max(real) - real), real

    def _old_and_ref(self, samples: Sequence[PolicySample], rows: list[int]) -> tuple[list, list]:
        """Behaviour log-probs (stored prefix + current policy for the rest) and reference
        log-probs of the samples at `rows` (a rank's: only those it trains on); None elsewhere."""
        olds: list = [None] * len(samples)
        refs: list = [None] * len(samples)
        passes = [p for start in range(0, len(rows), self.minibatch_sequences) for p in self._passes(samples, rows[start : start + self.minibatch_sequences])]
        real = len(passes)
        if self.partitions_parameters:  # every forward gathers parameters with the peers
            passes, real = self._equal_passes(passes, rows[:1])
        with torch.no_grad():
            for p, chunk_rows in enumerate(passes):
                chunk = [samples[i] for i in chunk_rows]
                current, _, _ = response_logprobs(self.model, chunk, self.pad_token_id)  # (b, R)
                if p >= real:  # a filler pass: only there to gather parameters with the peers
                    continue
                ref = None
                if self.loss_args["kl_coef"] > 0:
                    ref, _, _ = response_logprobs(self.ref_model, chunk, self.pad_token_id)  # (b, R)
                for b, (i, s) in enumerate(zip(chunk_rows, chunk)):
                    n = len(s.response_ids)
                    old = current[b, :n].clone()
                    k = len(s.stored_logprobs)
                    if k:
                        old[:k] = torch.tensor(s.stored_logprobs, dtype=old.dtype, device=old.device)
                    olds[i] = old
                    refs[i] = None if ref is None else ref[b, :n].clone()
        return olds, refs

    def _shares(self, samples: Sequence[PolicySample], minibatches: list[list[int]]) -> list[tuple[list[int], float]]:
        """This rank's rows of each mini-batch (balanced by tokens over the data-parallel group)
        and the weight of its loss: 1, or 0 for a rank whose share is empty, which still runs one
        row so that it joins the gradient reduction with zeros. One rank: every row, weight 1."""
        rank, world = data_parallel_rank()
        if world == 1:
            return [(idx, 1.0) for idx in minibatches]
        out = []
        for idx in minibatches:
            shard = balanced_shards([len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in idx], world)[rank]
            out.append(([idx[k] for k in shard], 1.0) if shard else (idx[:1], 0.0))
        return out

    def _accumulate(self, samples, idx, rows, weight, olds, refs, totals: dict[str, float]) -> int:
        """Add the gradient of mini-batch `idx`'s loss over this rank's `rows` (the token mean
        divides by the whole mini-batch's token count: summed over ranks it is the mini-batch's
        gradient). Returns the response tokens it trained on."""
        n_tokens = sum(len(samples[i].response_ids) for i in idx)
        passes = self._passes(samples, rows)
        real = len(passes)
        if self.reduces_every_pass:
            passes, real = self._equal_passes(passes, rows[:1])
        weights = [weight] * real + [0.0] * (len(passes) - real)
        tokens = 0
        for p, (pass_rows, weight) in enumerate(zip(passes, weights)):
            logp, mask, entropy = response_logprobs(self.model, [samples[i] for i in pass_rows], self.pad_token_id, with_entropy=True)  # (b, R)
            r_max = logp.shape[1]

            def padded(values: list[torch.Tensor]) -> torch.Tensor:
                out = torch.zeros((len(values), r_max), dtype=logp.dtype, device=logp.device)  # (b, R)
                for b, row in enumerate(values):
                    out[b, : len(row)] = row
                return out

            old = padded([olds[i] for i in pass_rows])
            adv = padded([torch.tensor(samples[i].advantages, dtype=logp.dtype) for i in pass_rows])
            ref = padded([refs[i] for i in pass_rows]) if self.loss_args["kl_coef"] > 0 else None
            loss, stats = ppo_loss(logp, old, adv, mask, ref_logp=ref, entropy=entropy, num_tokens=n_tokens, **self.loss_args)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"The policy loss became {loss.item()} in a mini-batch of this update; the run stops "
                    "here and keeps its last good checkpoint. Lower optim.lr or check the data for degenerate samples."
                )
            self._backward(loss if weight == 1.0 else loss * weight, last=p == len(passes) - 1)
            if weight:
                for name in STAT_NAMES:
                    totals[name] = totals.get(name, 0.0) + float(getattr(stats, name)) * stats.tokens
                tokens += stats.tokens
        return tokens

    def update(self, samples: Sequence[PolicySample], generator: torch.Generator) -> UpdateStats:
        """One epoch over `samples` in seeded random order, `minibatch_sequences` per step.

        Data-parallel (torch.distributed initialised with N ranks, each calling this with the
        same samples and generator): every rank walks the same mini-batches, trains on its
        token-balanced share of each, and the gradients are summed before the step, so the N-rank
        update is the one-rank update up to float rounding; the statistics are the whole batch's."""
        if not samples:
            raise ValueError("update needs at least one sample")
        self.model.train()
        order = torch.randperm(len(samples), generator=generator).tolist()
        minibatches = [order[start : start + self.minibatch_sequences] for start in range(0, len(order), self.minibatch_sequences)]
        shares = self._shares(samples, minibatches)
        mine = sorted({i for rows, _ in shares for i in rows})  # one rank: every sample, in order
        olds, refs = self._old_and_ref(samples, mine)
        totals: dict[str, float] = {}
        tokens = 0
        grad_norms = []
        self._zero_grad()  # nothing left over from an attempt that failed half-way
        for idx, (rows, weight) in zip(minibatches, shares):
            tokens += self._accumulate(samples, idx, rows, weight, olds, refs, totals)
            grad_norms.append(self._optimizer_step())
        self.model.eval()
        # a finite loss can still take a step that overflows the weights (a huge lr): stop here,
        # before this update is committed or checkpointed
        if not self._weights_finite():
            raise NonFiniteLoss(
                "The policy weights became non-finite (NaN/Inf) in this update; the run stops here and keeps its "
                "last good checkpoint. Lower optim.lr or optim.grad_clip."
            )
        summed = all_reduce_sum([totals.get(name, 0.0) for name in STAT_NAMES] + [float(tokens)])
        tokens = int(summed[-1])
        means = {name: summed[k] / max(tokens, 1) for k, name in enumerate(STAT_NAMES)}
        return UpdateStats(
            **means,
            grad_norm=math.fsum(grad_norms) / len(grad_norms),
            lr=self.lr,
            minibatches=len(minibatches),
            tokens=tokens,
        )

    def gradient(self, samples: Sequence[PolicySample]) -> dict[str, torch.Tensor]:
        """The gradient of the PPO loss over `samples` taken as ONE mini-batch at the current
        weights, summed over the data-parallel group (what a step would apply, before clipping);
        the weights and the optimizer are left as they were."""
        self.model.train()
        idx = list(range(len(samples)))
        (rows, weight), = self._shares(samples, [idx])
        olds, refs = self._old_and_ref(samples, rows)
        self._zero_grad()
        self._accumulate(samples, idx, rows, weight, olds, refs, {})
        self._reduce_gradients()
        out = self._gradients()
        self._zero_grad()
        self.model.eval()
        return out

    def _gradients(self) -> dict[str, torch.Tensor]:
        return {name: p.grad.detach().clone() for name, p in self._module().named_parameters() if p.grad is not None}

    def _module(self) -> torch.nn.Module:
        return self.model

    def _weights_finite(self) -> bool:
        return all(torch.isfinite(p).all() for p in self.model.parameters())

    def weights(self) -> dict[str, torch.Tensor]:
        """The policy's whole state_dict (what a checkpoint and a rollout engine take)."""
        return self._module().state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self._module().load_state_dict(weights)

    def _reduce_gradients(self) -> None:
        """Sum the gradients over the data-parallel group (one flat all-reduce); one rank: nothing."""
        if data_parallel_rank()[1] == 1:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # (P,)
        _all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def _single_process_group() -> None:
    """A one-rank process group for DeepSpeed when no launcher set one up (torchrun and the
    deepspeed launcher export RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them
    DeepSpeed goes looking for MPI)."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    # auto-detection finds CUDA too, but warns on every CPU-only start
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def zero3_slice(full: torch.Tensor, size: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s slice of a parameter's whole value under ZeRO-3: the flattened tensor,
    zero-padded to equal slices of `size` values, slice r on rank r (fp32).

    >>> zero3_slice(torch.tensor([[1.0, 2.0, 3.0]]), size=2, rank=1)  # 3 values over 2 ranks
    tensor([3., 0.])
    """
    flat = torch.zeros(max(full.numel(), size * (rank + 1)), dtype=torch.float32)  # (>= (rank + 1) x size,)
    flat[: full.numel()] = full.reshape(-1).float()
    return flat.narrow(0, rank * size, size).clone()


_DROP = object()


def _plain(value):
    """`value` as what torch.load(weights_only=True) reads back — (detached) tensors, numbers, strings,
    lists, tuples and dicts of them (an IntEnum becomes its int) — or _DROP for anything else
    (objects, namedtuples).

    >>> import enum; Stage = enum.IntEnum("Stage", "optimizer gradients")
    >>> _plain({"stage": Stage.gradients, "groups": [1.0, ("a", None)]})
    {'stage': 2, 'groups': [1.0, ('a', None)]}
    >>> _plain({"scaler": object()}) is _DROP
    True
    """
    if isinstance(value, torch.Tensor):
        return value.detach()  # ZeRO hands out views of its flat buffers; deepcopy wants leaves
    if value is None:
        return value
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if type(value) in (list, tuple, dict):
        items = value.items() if type(value) is dict else enumerate(value)
        out = {k: _plain(v) for k, v in items}
        if any(v is _DROP for v in out.values()) or any(_plain(k) is _DROP for k in out):
            return _DROP
        return out if type(value) is dict else type(value)(out.values())
    return _DROP


class DeepSpeedTrainer(TorchTrainer):
    """The same PPO update through a DeepSpeed engine: ZeRO stage 0-3, optional bf16.

    Samples, mini-batches, the loss and the statistics are TorchTrainer's; the engine does the
    backward pass, the clipping and the optimizer step (torch's AdamW, so a fresh machine
    compiles no optimizer kernel). With one rank and fp32 an update equals TorchTrainer's up to
    float rounding. ZeRO-3 partitions the parameters of the model object it is given: each rank
    keeps 1/N of them and every forward gathers a layer's weights from the peers, so every rank
    runs as many passes as its peers (empty ones at weight 0), the rollout engine samples from
    a separate copy (tasks/ranks.py) and `weights()` gathers the whole state_dict for it.

        trainer = DeepSpeedTrainer(policy, reference, 0, cfg.optim, cfg.train)  # train.zero_stage, train.bf16
        stats = trainer.update(samples, generator)          # as TorchTrainer.update
    """

    def __init__(self, model: torch.nn.Module, ref_model: torch.nn.Module | None, pad_token_id: int,
                 optim: OptimConfig, train: TrainConfig | None = None) -> None:
        train = train or TrainConfig()
        if train.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3 (got {train.zero_stage})")
        self.zero_stage, self.bf16 = train.zero_stage, train.bf16
        # ZeRO-2/3 reduce-scatter the gradients in every backward pass, not only at the boundary
        self.reduces_every_pass = train.zero_stage >= 2
        self.partitions_parameters = train.zero_stage == 3
        super().__init__(model, ref_model, pad_token_id, optim, train)

    def _make_optimizer(self, lr: float, weight_decay: float):
        _single_process_group()
        import deepspeed

        config = {
            # batching is ours: each engine step is one of our mini-batches, already averaged
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.grad_clip,
            # stage 3: every parameter partitioned (none kept whole as "persistent"), so that the
            # memory gain is the whole model's and each rank's share has one layout
            "zero_optimization": {"stage": self.zero_stage, **({"stage3_param_persistence_threshold": 0} if self.zero_stage == 3 else {})},
            "bf16": {"enabled": self.bf16},
            "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True}},
            "steps_per_print": 2**31 - 1,
        }
        self.module = self.model  # the policy object the rollout engine and scoring share
        self.engine, optimizer, _, _ = deepspeed.initialize(model=self.model, model_parameters=self.model.parameters(), config=config)
        self.model = self.engine
        return optimizer

    def _zero_grad(self) -> None:
        self.engine.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        # our passes are the engine's gradient accumulation: reduce and step after the last one;
        # each pass's loss is already scaled to the mini-batch mean over all ranks' tokens, and
        # the engine AVERAGES gradients over the ranks, so the loss is scaled up by the world size
        # to make that average the sum the update needs
        self.engine.set_gradient_accumulation_boundary(last)
        world = data_parallel_rank()[1]
        self.engine.backward(loss * world if world > 1 else loss, scale_wrt_gas=False)

    def _module(self) -> torch.nn.Module:
        return self.module

    def _reduce_gradients(self) -> None:
        """The engine reduces (and partitions, ZeRO-2/3) the gradients itself at each boundary."""

    # -- ZeRO-3: each rank holds a slice of every parameter (p.ds_tensor, padded to equal slices) --
    def _gradients(self) -> dict[str, torch.Tensor]:
        if not self.partitions_parameters:
            return super()._gradients()
        from deepspeed.utils import safe_get_full_grad

        return {name: safe_get_full_grad(p).detach().reshape(p.ds_shape).clone() for name, p in self.module.named_parameters()}

    def _weights_finite(self) -> bool:
        if not self.partitions_parameters:
            return super()._weights_finite()
        bad = int(not all(torch.isfinite(p.ds_tensor).all() for p in self.module.parameters()))
        return all_reduce_max(bad) == 0  # all ranks stop together (one left alone would wait in a collective)

    def weights(self) -> dict[str, torch.Tensor]:
        """Under ZeRO-3 the whole state_dict gathered from every rank's slices, one parameter
        at a time (a collective: all ranks call it); tied names share one tensor as in the model."""
        if not self.partitions_parameters:
            return super().weights()
        import deepspeed

        gathered: dict[int, torch.Tensor] = {}
        full = {}
        for name, p in self.module.named_parameters(remove_duplicate=False):
            if id(p) not in gathered:
                with deepspeed.zero.GatheredParameters([p]):
                    gathered[id(p)] = p.data.detach().clone()
            full[name] = gathered[id(p)]
        return {k: full.get(k, v) for k, v in self.module.state_dict().items()}  # buffers are whole on every rank

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Under ZeRO-3 each rank keeps its slice of `weights` (the same on every rank: a
        collective); the fp32 masters follow in load_state_dict."""
        if not self.partitions_parameters:
            return super().load_weights(weights)
        import deepspeed

        for name, p in self.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):  # re-partitioned on exit
                p.data.copy_(weights[name])
        for name, buffer in self.module.named_buffers():
            if name in weights:
                buffer.copy_(weights[name])

    def _z3_state_dict(self) -> dict:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        optimizer = self.engine.optimizer
        inner = optimizer.optimizer
        stepped = all(flat in inner.state for flat in optimizer.fp32_partitioned_groups_flat)
        state, masters = {}, []
        for index, p in enumerate(self.module.parameters()):
            masters.append(safe_get_full_fp32_param(p).detach().reshape(p.ds_shape).float().clone())
            if stepped:
                flat = optimizer.fp32_partitioned_groups_flat[optimizer.grad_position[optimizer.get_param_id(p)][0]]
                state[index] = {
                    "step": inner.state[flat]["step"].clone(),
                    **{key: safe_get_full_optimizer_state(p, key).detach().reshape(p.ds_shape).float().clone() for key in ("exp_avg", "exp_avg_sq")},
                }
        group = {k: _plain(v) for k, v in inner.param_groups[0].items() if k != "params"}
        groups = [{**{k: v for k, v in group.items() if v is not _DROP}, "params": list(range(len(masters)))}]
        return {"optimizer": {"state": state, "param_groups": groups}, "fp32_masters": masters}

    def _z3_load_state_dict(self, state: dict) -> None:
        optimizer = self.engine.optimizer
        inner = optimizer.optimizer
        saved, masters = state["optimizer"]["state"], state.get("fp32_masters")
        for group in inner.param_groups:
            for key in ("lr", "betas", "eps", "weight_decay"):
                if key in state["optimizer"]["param_groups"][0]:
                    group[key] = state["optimizer"]["param_groups"][0][key]
        flats = optimizer.fp32_partitioned_groups_flat
        for flat in flats:  # the moments are rebuilt below, or there are none yet (saved before a step)
            inner.state.pop(flat, None)
        for index, p in enumerate(self.module.parameters()):
            # fp32 weights are their own masters (TorchTrainer's state carries none)
            master = zero3_slice(masters[index], p.ds_tensor.numel(), data_parallel_rank()[0]) if masters is not None else p.ds_tensor.detach().float()
            part = lambda key: optimizer._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)[0]  # noqa: E731
            part(None).data.copy_(master)
            if index in saved:
                flat = flats[optimizer.grad_position[optimizer.get_param_id(p)][0]]
                step = saved[index]["step"]
                inner.state.setdefault(flat, {
                    "step": step.clone() if torch.is_tensor(step) else torch.tensor(float(step)),
                    "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat),
                })  # fmt: skip
                for key in ("exp_avg", "exp_avg_sq"):
                    part(key).data.copy_(zero3_slice(saved[index][key], p.ds_tensor.numel(), data_parallel_rank()[0]))

    def _optimizer_step(self) -> float:
        norm = None
        if self.zero_stage == 0 and not self.bf16:
            # the engine clips plain fp32 gradients without keeping their norm
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])
        self.engine.step()  # clips, steps, zeroes the gradients
        norm = self.engine.get_global_grad_norm() if norm is None else norm
        norm = float(norm)
        if not math.isfinite(norm):
            raise NonFiniteLoss(f"The gradient norm became {norm}; the run stops and keeps its last good checkpoint.")
        return norm

    def state_dict(self) -> dict:
        """The optimizer state, independent of the world size: under ZeRO-1/2 every rank holds
        one slice of the flat fp32 master weights and Adam moments, so all ranks call this
        together (a collective) and get it consolidated per parameter, in torch AdamW's own
        format (the TorchTrainer's, loadable on any number of ranks), plus the fp32 masters."""
        if self.partitions_parameters:
            return self._z3_state_dict()
        optimizer = self.engine.optimizer
        if not hasattr(optimizer, "single_partition_of_fp32_groups"):
            # stage 0: the plain AdamW (fp32) or DeepSpeed's bf16 wrapper (one rank: TrainConfig refuses more).
            # Checkpoints are read back with torch.load(weights_only=True): keep the entries made
            # of tensors, numbers and strings (a ZeRO state also carries a loss-scaler object and
            # parameter-slice maps for universal checkpoints; loading needs neither)
            plain = {k: _plain(v) for k, v in optimizer.state_dict().items()}
            return {"optimizer": {k: v for k, v in plain.items() if v is not _DROP}}
        state, masters, groups, index = {}, [], [], 0
        for i, partition in enumerate(optimizer.single_partition_of_fp32_groups):
            inner = optimizer.optimizer.state.get(partition, {})
            flats = {name: self._gather_flat(optimizer, i, inner[name] if name in inner else torch.zeros_like(partition))
                     for name in ("exp_avg", "exp_avg_sq")}  # fmt: skip
            flats["master"] = self._gather_flat(optimizer, i, partition.detach())
            step = inner.get("step", torch.tensor(0.0))
            params = []
            for view in self._param_views(optimizer, i):
                if "exp_avg" in inner:
                    state[index] = {"step": step.clone(), "exp_avg": view(flats["exp_avg"]), "exp_avg_sq": view(flats["exp_avg_sq"])}
                masters.append(view(flats["master"]))
                params.append(index)
                index += 1
            group = {k: _plain(v) for k, v in optimizer.optimizer.param_groups[i].items() if k != "params"}
            groups.append({**{k: v for k, v in group.items() if v is not _DROP}, "params": params})
        return {"optimizer": {"state": state, "param_groups": groups}, "fp32_masters": masters}

    def load_state_dict(self, state: dict) -> None:
        if self.partitions_parameters:
            return self._z3_load_state_dict(state)
        optimizer = self.engine.optimizer
        if not hasattr(optimizer, "single_partition_of_fp32_groups"):
            if isinstance(optimizer, torch.optim.Optimizer):  # stage 0, fp32: the plain AdamW
                optimizer.load_state_dict(state["optimizer"])
            else:  # the bf16 wrapper takes one state per saved rank; fp32 masters from the state
                optimizer.load_state_dict([state["optimizer"]], load_from_fp32_weights=True)
            return
        if "param_groups" not in state["optimizer"]:  # a ZeRO state saved by one rank before states were consolidated
            optimizer.load_state_dict([state["optimizer"]], load_from_fp32_weights=True)
            return
        saved, masters = state["optimizer"]["state"], state.get("fp32_masters")
        index = 0
        for i, partition in enumerate(optimizer.single_partition_of_fp32_groups):
            group = state["optimizer"]["param_groups"][i]
            for key in ("lr", "betas", "eps", "weight_decay"):
                if key in group:
                    optimizer.optimizer.param_groups[i][key] = group[key]
            count = len(optimizer.bit16_groups[i])
            indices = range(index, index + count)
            index += count
            if masters is not None:
                partition.data.copy_(self._my_slice(optimizer, i, [masters[k] for k in indices]))
            else:  # fp32 weights are their own masters (TorchTrainer's state carries none)
                partition.data.copy_(self._my_slice(optimizer, i, [p.detach().float() for p in optimizer.bit16_groups[i]]))
            if any(k in saved for k in indices):
                first = saved[indices[0]]
                optimizer.optimizer.state[partition] = {
                    "step": first["step"].clone() if torch.is_tensor(first["step"]) else torch.tensor(float(first["step"])),
                    "exp_avg": self._my_slice(optimizer, i, [saved[k]["exp_avg"] for k in indices]),
                    "exp_avg_sq": self._my_slice(optimizer, i, [saved[k]["exp_avg_sq"] for k in indices]),
                }
            else:  # saved before the first step: no moments yet (not the ones of a step since)
                optimizer.optimizer.state.pop(partition, None)

    # ZeRO-1/2 layout: param group i is one flat buffer (each parameter at an aligned offset,
    # in DeepSpeed's round-robin order), cut into equal partitions, one per rank
    @staticmethod
    def _gather_flat(optimizer, i: int, mine: torch.Tensor) -> torch.Tensor:
        """Group i's whole flat buffer from every rank's partition `mine`."""
        world = data_parallel_rank()[1]
        if world == 1:
            return mine.detach().float().clone()
        import torch.distributed as dist

        parts = [torch.empty_like(mine) for _ in range(world)]
        with _collective():
            dist.all_gather(parts, mine.detach().contiguous())
        return torch.cat(parts).float()  # (padded group numel,)

    @staticmethod
    def _param_views(optimizer, i: int):
        """For each parameter of group i (model order): flat buffer -> that parameter's tensor."""
        metas, offsets = optimizer.round_robin_bit16_meta[i], optimizer.round_robin_bit16_offsets[i]
        views = []
        for param_index in range(len(optimizer.bit16_groups[i])):
            rr = optimizer.round_robin_bit16_indices[i][param_index]
            meta, offset = metas[rr], offsets[rr]
            views.append(lambda flat, o=offset, m=meta: flat.narrow(0, o, m.numel()).view(m.shape).clone())
        return views

    @staticmethod
    def _my_slice(optimizer, i: int, tensors: list[torch.Tensor]) -> torch.Tensor:
        """This rank's partition of group i's flat buffer holding `tensors` (model order)."""
        flat = torch.zeros(optimizer.bit16_groups_flat[i].numel(), dtype=torch.float32)  # (padded group numel,)
        for param_index, tensor in enumerate(tensors):
            rr = optimizer.round_robin_bit16_indices[i][param_index]
            flat.narrow(0, optimizer.round_robin_bit16_offsets[i][rr], tensor.numel()).copy_(tensor.reshape(-1))
        size = optimizer.partition_size[i]
        rank = data_parallel_rank()[0]
        return flat.narrow(0, rank * size, size).to(optimizer.single_partition_of_fp32_groups[i].device).clone()


TRAINERS = {"torch": TorchTrainer, "deepspeed": DeepSpeedTrainer}
