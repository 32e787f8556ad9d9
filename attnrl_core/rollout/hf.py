"""The "hf" rollout engine: an explicit KV-cached decoding loop over a transformers causal LM.

Why not `model.generate`: tree sampling needs per-prompt budgets, exact behaviour log-probs under
the sampled distribution, prefill-once-then-fan-out for n samples, and random streams that do not
depend on how rows were batched. A 40-line loop over `model(input_ids, cache=DynamicCache)` gives
all four directly.

How a call runs:
1. Rows are (prompt i, sample j) pairs; they are cut into micro-batches of at most
   `max_batch_size` rows.
2. Each micro-batch prefills its DISTINCT prompts once (left padded, position ids counted over
   real tokens only), then copies each prompt's KV cache and last logits to its sample rows. A
   prompt with n samples is encoded once, not n times.
3. Decoding appends one token per live row per step; a row leaves the batch (its cache rows are
   dropped) when it emits EOS (if `stop_at_eos`) or spends its budget.

Randomness and determinism: row (i, j) draws its uniforms u_0, u_1, ... from its own
torch.Generator seeded by `row_seed(seed, i, j)`, and token t is the inverse-CDF sample of u_t.
So a row's tokens depend only on (seed, i, j), its prompt and the weights -- not on which other
rows share its micro-batch, their padding, or `max_batch_size`. Guarantee on CPU: same seed + same
inputs + same max_batch_size -> identical tokens and log-probs, bit for bit. Changing
max_batch_size or the other prompts of the call changes the logits only by fp32 summation-order
noise (~1e-7), which flips a sampled token only when u_t falls within that distance of a CDF
boundary (not seen in the tests; possible in principle). On GPU, kernels may be
non-deterministic; the random streams stay the same.

`update_weights`: when the engine wraps the trainer's own model object, the weights are always
current; `update_weights(model)` is then a no-op and a state_dict of that model copies onto itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer

from attnrl_core.batching import pad_token_rows
from attnrl_core.errors import AttnRLError
from attnrl_core.rollout import Generation, SamplingParams, resolve_budgets, resolve_counts, resolve_prompt_index, row_seed


#: Decode with `_PreallocatedLayer` caches (False: transformers' DynamicLayer, which bench/rollout.py
#: times against it).
PREALLOCATED_KV_CACHE = True


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values sit in buffers sized for the whole call
    (the prompt plus the longest budget): a decoding step writes its one position in place, where
    DynamicLayer's torch.cat copies the whole cache every step (O(L^2) over a response: 28% of a
    pivot-world rollout's time on one CPU thread, profiled). `bench/rollout.py --threads 1
    --new-tokens 384`: 16 x 6 samples 1.59x faster (1.07x at 128 tokens). The model reads views
    of the filled part, the same values as before: tokens and log-probs are bit for bit those of
    DynamicLayer (tests/unit/test_rollout_hf.py).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            B, H, _, _ = key_states.shape
            self._keys = key_states.new_empty(B, H, self.capacity, key_states.shape[-1])  # (B, Hkv, capacity, D)
            self._values = value_states.new_empty(B, H, self.capacity, value_states.shape[-1])  # (B, Hkv, capacity, Dv)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise AttnRLError(f"hf engine: the KV cache was sized for {self.capacity} positions but the call reached {end}.")
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]  # (B, Hkv, L, D) views
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows at `indices` (repeats fan a row out), copying only the filled positions."""
        if not self.is_initialized:
            return
        for name in ("_keys", "_values"):
            buffer = getattr(self, name)
            kept = buffer.new_empty(len(indices), *buffer.shape[1:])  # (B', Hkv, capacity, D)
            kept[:, :, : self.length] = buffer[indices, :, : self.length]
            setattr(self, name, kept)
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]


def sampling_logprobs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-probs of the distribution tokens are sampled from; excluded tokens get -inf.

    Order as in vLLM and HF: divide by the temperature, keep the top-k logits (ties at the k-th
    value kept), then keep the smallest most-likely set whose mass reaches top_p (the most likely
    token always stays), renormalise. temperature 0 (greedy) returns the untempered
    log_softmax(logits): the argmax is taken from it and its log-prob is the one reported.

    Worked example, probs [0.5, 0.3, 0.15, 0.05] (logits = their logs), top_p = 0.7: ascending
    cumulative mass [0.05, 0.2, 0.5, 1.0]; tokens whose cumulative mass is <= 1 - 0.7 = 0.3 go,
    leaving {0.5, 0.3} -> renormalised [0.625, 0.375, 0, 0]. With top_k = 1 instead: [1, 0, 0, 0].

    logits: (B, V) float. Returns (B, V) float32.
    """
    logits = logits.float()  # (B, V)
    if temperature == 0.0:
        return torch.log_softmax(logits, dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending, (B, V)
        mass_below = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        drop_sorted = mass_below <= 1.0 - top_p
        drop_sorted[:, -1] = False  # the most likely token always survives
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token index whose CDF interval contains u * total mass, one per row.

    A zero-probability token has an empty interval, so it is never chosen (rounding at the very
    top is clamped to the last token with positive mass).

    >>> inverse_cdf_sample(torch.tensor([[0.2, 0.0, 0.8]]), torch.tensor([0.1])).tolist()
    [0]
    >>> inverse_cdf_sample(torch.tensor([[0.2, 0.0, 0.8]]), torch.tensor([0.2])).tolist()
    [2]

    probs: (B, V) non-negative; uniforms: (B,) in [0, 1). Returns (B,) int64.
    """
    cdf = probs.double().cumsum(dim=-1)  # (B, V); fp64 so a 150k vocabulary sums without drift
    target = uniforms.double() * cdf[:, -1]  # (B,)
    index = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]  # (B,)
    last_positive = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)  # (B,)
    return torch.minimum(index, last_positive)


class HFEngine:
    """Rollout engine over a transformers causal LM (the `RolloutEngine` protocol).

    model: a loaded causal LM (e.g. the trainer's own policy object) or a folder to load one from.
    eos_token_id: id or ids that end a sample; default the model config's eos_token_id.
    pad_token_id: id written into left padding (never attended to); default config's pad id or 0.
    max_batch_size: most rows (prompt, sample) decoded together.

    Example::

        engine = HFEngine(policy, eos_token_id=1, max_batch_size=64)
        out = engine.generate([[4, 9, 9]], SamplingParams(n=3, max_new_tokens=5), seed=7)
        [len(g.token_ids) for g in out[0]]    # -> e.g. [5, 2, 5]: the second hit EOS (id 1)
    """

    reads_policy_in_place = True

    @classmethod
    def for_run(cls, policy: torch.nn.Module, tokenizer, base_path: str, cfg) -> "HFEngine":
        """The engine of a training run: samples with the trainer's own model object (always
        current, no weight sync); `cfg` is the rollout config section."""
        return cls(model=policy, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_batch_size=cfg.max_batch_size)

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        max_batch_size: int = 256,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = _load_causal_lm(Path(model), dtype=None)
        self.model = model
        config = model.config
        eos = config.eos_token_id if eos_token_id is None else eos_token_id
        self.eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = pad_token_id if pad_token_id is not None else getattr(config, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        if max_batch_size < 1:
            raise AttnRLError(f"HFEngine max_batch_size={max_batch_size} must be >= 1.")
        self.max_batch_size = max_batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seed: int,
        max_new_tokens: list[int] | None = None,
        n: list[int] | None = None,
        prompt_index: list[int] | None = None,
    ) -> list[list[Generation]]:
        """Sample params.n (or n[i]) continuations per prompt; returns [prompt index][sample index].

        See the module docstring for batching, randomness and the determinism guaranteed;
        `prompt_index` keys the random streams (RolloutEngine.generate).
        """
        budgets = resolve_budgets(prompts, params, max_new_tokens)
        counts = resolve_counts(prompts, params, n)
        keys = resolve_prompt_index(prompts, prompt_index)
        self._check_context_length(prompts, budgets)
        results = [[Generation() for _ in range(counts[i])] for i in range(len(prompts))]
        # greedy samples of one prompt are all the same sequence: decode one, copy it to the rest
        decoded = [1 if params.greedy else c for c in counts]
        rows = [(i, j) for i in range(len(prompts)) if budgets[i] > 0 for j in range(decoded[i])]
        was_training = self.model.training
        self.model.eval()  # the trainer may share this object; dropout must be off while sampling
        try:
            with torch.inference_mode():
                for start in range(0, len(rows), self.max_batch_size):
                    micro_batch = rows[start : start + self.max_batch_size]
                    self._decode(prompts, micro_batch, budgets, params, seed, results, keys)
        finally:
            self.model.train(was_training)
        for per_prompt, count in zip(results, decoded):
            first = per_prompt[0]
            for j in range(count, len(per_prompt)):
                per_prompt[j] = Generation(list(first.token_ids), list(first.logprobs), first.finished)
        return results

    def _decode(self, prompts, rows, budgets, params, seed, results, keys) -> None:
        device = self.device
        distinct = list(dict.fromkeys(i for i, _ in rows))
        slot = {i: s for s, i in enumerate(distinct)}
        input_ids, attention_mask = pad_token_rows([prompts[i] for i in distinct], self.pad_token_id, side="left")  # (U, P) each
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # positions count real tokens only, so a left-padded prompt sees the same RoPE phases as alone
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (U, P)

        cache = DynamicCache(config=self.model.config)
        budget = torch.tensor([budgets[i] for i, _ in rows], device=device)  # (R,)
        horizon = int(budget.max())
        if PREALLOCATED_KV_CACHE:  # full-attention layers write into buffers of prompt + horizon positions
            cache.layers = [_PreallocatedLayer(input_ids.shape[1] + horizon) if type(layer) is DynamicLayer else layer for layer in cache.layers]
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        # fan each distinct prompt's prefill out to its sample rows: encoded once, decoded n times
        to_slot = torch.tensor([slot[i] for i, _ in rows], device=device)  # (R,)
        cache.batch_select_indices(to_slot)
        logits = out.logits[to_slot, -1]  # (R, V)
        attention_mask = attention_mask[to_slot]  # (R, P)
        next_position = position_ids[to_slot, -1] + 1  # (R,)

        uniforms = torch.zeros((len(rows), horizon), dtype=torch.float64)  # (R, horizon)
        if not params.greedy:
            for r, (i, j) in enumerate(rows):
                stream = torch.Generator().manual_seed(row_seed(seed, keys[i], j))
                uniforms[r, : budgets[i]] = torch.rand(budgets[i], generator=stream, dtype=torch.float64)
        uniforms = uniforms.to(device)
        eos = torch.tensor(self.eos_token_ids if params.stop_at_eos else [], dtype=torch.long, device=device)

        live = torch.arange(len(rows), device=device)  # (A,) row index of each live batch entry
        steps = []  # per step: (live rows, tokens, log-probs, ended at EOS)
        for t in range(horizon):
            logprobs = sampling_logprobs(logits, params.temperature, params.top_k, params.top_p)  # (A, V)
            if params.greedy:
                tokens = logits.argmax(dim=-1)  # (A,)
            else:
                tokens = inverse_cdf_sample(logprobs.exp(), uniforms[live, t])  # (A,)
            token_logprobs = logprobs.gather(-1, tokens[:, None])[:, 0]  # (A,)
            hit_eos = torch.isin(tokens, eos)  # (A,)
            steps.append((live, tokens, token_logprobs, hit_eos))
            done = hit_eos | (budget[live] <= t + 1)  # (A,)
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero()[:, 0]  # (A',)
                cache.batch_select_indices(keep)
                live, tokens = live[keep], tokens[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)  # (A, P+t+1)
            out = self.model(
                input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position[:, None],
                cache=cache, use_cache=True,
            )  # fmt: skip
            logits = out.logits[:, -1]  # (A, V)
            next_position = next_position + 1

        for live, tokens, token_logprobs, hit_eos in steps:
            for r, token, lp, ended in zip(live.tolist(), tokens.tolist(), token_logprobs.tolist(), hit_eos.tolist()):
                i, j = rows[r]
                generation = results[i][j]
                generation.token_ids.append(token)
                generation.logprobs.append(lp)
                generation.finished = ended

    def _check_context_length(self, prompts: list[list[int]], budgets: list[int]) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        vocab = self.model.config.vocab_size
        for i, (prompt, budget) in enumerate(zip(prompts, budgets)):
            if limit is not None and len(prompt) + budget > limit:
                raise AttnRLError(
                    f"Rollout prompt {i} has {len(prompt)} tokens and a budget of {budget} new tokens, "
                    f"{len(prompt) + budget} in all, beyond the model's max_position_embeddings={limit}: "
                    "shorten the prompt/response length limits."
                )
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise AttnRLError(f"Rollout prompt {i} holds a token id outside the model's vocabulary [0, {vocab}).")

    def update_weights(self, source: Any) -> None:
        """Load new policy weights: a module, a state_dict, or a folder written by save_pretrained.

        Passing the engine's own model object is a no-op (shared with the trainer: already current).
        """
        if source is self.model:
            return
        if isinstance(source, torch.nn.Module):
            source = source.state_dict()
        elif isinstance(source, (str, os.PathLike)):
            source = _load_causal_lm(Path(source), dtype=self.model.dtype).state_dict()
        if not isinstance(source, Mapping):
            raise AttnRLError(
                f"update_weights got a {type(source).__name__}: pass a model, a state_dict or a checkpoint folder path."
            )
        with torch.no_grad():
            missing, unexpected = self.model.load_state_dict(dict(source), strict=False)
        if missing or unexpected:
            raise AttnRLError(
                "update_weights: the new weights do not match the rollout model "
                f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]}); "
                "was the checkpoint saved from a different architecture?"
            )


def _load_causal_lm(folder: Path, dtype: torch.dtype | None) -> torch.nn.Module:
    if not (folder / "config.json").is_file():
        raise AttnRLError(
            f"No model checkpoint at {folder}: expected a folder written by save_pretrained (config.json + weights)."
        )
    kwargs = {} if dtype is None else {"dtype": dtype}
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
