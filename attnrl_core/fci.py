"""Forward Context Influence (FCI), docs/method.md §2, in one streaming forward pass of the policy.

One call of `score` runs the policy once over prompt+response and returns, per sequence, the raw
FCI of every step, plus per-token log-probs and entropies (the PPO behaviour log-probs and the
TreeRL entropy criterion come from the same pass).

Why streaming: the formula needs every layer's and head's full token attention A^{l,h} (L x L),
which transformers only hands out from its eager path (all layers at once: L^2 x heads x layers,
3.2 GB at L=4096 for a 12-head, 4-layer model). Instead a custom attention function is plugged
into transformers' attention-interface registry for the duration of the pass. Per layer it walks
over blocks of query rows, computes their softmax exactly as eager attention does (post-RoPE
q/k, grouped-query keys shared by every query head of the group, softmax in fp32), uses those
probabilities both for the layer's output (probs @ V, so the model's output is unchanged) and for
the FCI sums, and drops them. Scratch is B x heads x chunk x L, never heads x L x L.

The FCI sums are taken without ever forming the step-to-step matrix alpha. With w_t = 1/|S_j|
for a query token t of step j, and step(u) = k for a key token u of step k,

    y[k] = sum_{j >= k+delta} alpha[j,k]
         = (1/|S_k|) * sum_{u in S_k} z[u],   z[u] = sum_{t : step(t) - step(u) >= delta} w_t A[t,u]

and each layer pools z over the key steps once. Because steps are contiguous and ordered, the
admissible keys of a query row form a prefix [0, key_end(t)) with key_end(t) = end of step
(step(t) - delta), shared by all rows of its step. So a block of query rows, grouped by step
(G groups, a few for real reasoning steps), adds to z with one thin matmul,
(G x rows) step weights @ (rows x keys) probabilities, then a prefix mask per group: the
probabilities are read once more and never copied, and keys past the block's last key_end are
never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from attnrl_core.errors import AttnRLError

#: Name under which the scoring attention is registered in transformers' AttentionInterface.
FCI_ATTENTION = "attnrl_fci"

#: How many query rows a block holds when `chunk_size` is None: as many as keep one fp32 block of
#: scores (B x heads x rows x L x 4 bytes) within `DEFAULT_BLOCK_BYTES`, but at least
#: `MIN_BLOCK_ROWS` and at most L / 8 (and L). Why (measured on this 2-core AMD EPYC, 1 MiB L2 per
#: core, 32 MiB L3, one thread, CPU time of a whole scoring pass at L=4096; see bench/fci.py):
#: - a block is swept several times (scores, mask, softmax, probs @ V, step-weighted sums), so it pays to keep it in cache: the tiny policy ran 0.47/0.46/0.45 s at 32/48/64 rows but
#:   0.61 s at 128 and 0.70 s at 256 (plain SDPA forward 0.39-0.41 s);
#: - below ~32 rows the per-block overhead (a dozen kernel calls) and thin matmuls dominate: the
#:   12-head model ran 5.4-5.8 s at 16-21 rows, 5.0 s at 32-64 rows (plain 4.8 s);
#: - rows <= L/8 keep the wasted upper triangle of the diagonal block under ~12%: at L=512 one
#:   512-row block took 2x the time of 64-row blocks.
#: The scratch is two such blocks (scores and probs, allocated once per call): 2 MiB blocks keep it
#: ~4-5 MiB for the tiny policy.
DEFAULT_BLOCK_BYTES = 2 * 2**20
MIN_BLOCK_ROWS = 32
#: The same budget on a CUDA device. There a block costs a dozen kernel launches whatever its size,
#: and memory is plentiful, so blocks are as large as the L / 8 cap allows. Measured by bench/gpu.py
#: on one H200 (DS-R1-Distill-Qwen-1.5B's shape, bf16, L = 1024 + 8192, B = 1): 32-row blocks (the
#: CPU rule) 2.66 s = 25.7x a plain SDPA forward; 256 rows 0.39 s (3.8x); 1024 rows 0.32 s (3.1x,
#: peak 0.69x the plain forward's); 2048 rows 0.35 s (3.3x, 0.85x memory).
CUDA_BLOCK_BYTES = 512 * 2**20


def block_bytes(device: torch.device) -> int:
    """The scratch budget of one fp32 block on `device` (DEFAULT_BLOCK_BYTES or CUDA_BLOCK_BYTES).

    >>> block_bytes(torch.device("cpu")) == DEFAULT_BLOCK_BYTES
    True
    """
    return CUDA_BLOCK_BYTES if device.type == "cuda" else DEFAULT_BLOCK_BYTES

AGGREGATES = ("max", "mean")


@dataclass
class StepLayout:
    """Where the steps of each sequence lie, in the form the streaming sums need.

    All tensors are (B, L) or (B, S) with S = the largest number of steps in the batch; pad
    tokens and missing steps carry neutral values (weight 0, key slot S which is dropped).

    row_weight[b, t]:  1/|S_j| for a real token t of step j, 0 for pads.
    row_key_end[b, t]: keys u < row_key_end count for query t (steps <= step(t) - delta); 0 if none.
    key_step[b, u]:    step index of key u, S for pads (a dummy slot).
    step_scale[b, k]:  1/|S_k| for a real step, 0 for missing ones.
    num_steps[b]:      S_b.

    Example (L=5, left pad of 1, steps [1,2) [2,4) [4,5), delta=1):
        row_weight  = [0, 1, .5, .5, 1]     row_key_end = [0, 0, 2, 2, 4]
        key_step    = [3, 0, 1, 1, 2]       step_scale  = [1, .5, 1]
    """

    row_weight: torch.Tensor  # (B, L) fp32
    row_key_end: torch.Tensor  # (B, L) long
    key_step: torch.Tensor  # (B, L) long
    step_scale: torch.Tensor  # (B, S) fp32
    num_steps: list[int]


@dataclass
class FCIResult:
    """Output of `score`.

    step_fci[b]:        (S_b,) fp32, raw FCI of each step of sequence b (step 0 = prompt), before any
                        zeroing rule (branching applies those).
    token_logprobs:     (B, L) fp32, [b, t] = log p(x_t | x_<t); 0 at t=0, at pads and at the first
                        real token of a left-padded row (nothing predicts it).
    token_entropy:      (B, L) fp32, entropy of the full next-token distribution that predicted x_t
                        (same alignment and zeros as token_logprobs).
    """

    step_fci: list[torch.Tensor]
    token_logprobs: torch.Tensor
    token_entropy: torch.Tensor


def step_layout(
    step_spans: Sequence[Sequence[Sequence[int]]],
    attention_mask: torch.Tensor,
    delta: int = 4,
) -> StepLayout:
    """Check the step spans against the padding and turn them into the streaming layout.

    step_spans[b] is a list of [start, end) absolute positions; they must be contiguous, in order,
    non-empty, and cover exactly the real (mask 1) tokens of row b, which must themselves be one
    contiguous block (left or right padding). Raises AttnRLError naming the row and span otherwise.

    >>> lay = step_layout([[(1, 2), (2, 4), (4, 5)]], torch.tensor([[0, 1, 1, 1, 1]]), delta=1)
    >>> lay.row_key_end.tolist(), lay.key_step.tolist(), lay.num_steps
    ([[0, 0, 2, 2, 4]], [[3, 0, 1, 1, 2]], [3])
    """
    if not isinstance(delta, int) or isinstance(delta, bool) or delta < 0:
        raise AttnRLError(f"FCI delta must be an integer >= 0 (docs/method.md §2 default 4); got {delta!r}.")
    B, L = attention_mask.shape
    if len(step_spans) != B:
        raise AttnRLError(
            f"step_spans has {len(step_spans)} rows but the batch has {B} sequences; give one list "
            "of [start, end) step spans per sequence."
        )
    device = attention_mask.device
    real = attention_mask.bool().cpu()
    S = max((len(spans) for spans in step_spans), default=0)
    row_weight = torch.zeros(B, L)
    row_key_end = torch.zeros(B, L, dtype=torch.long)
    key_step = torch.full((B, L), S, dtype=torch.long)
    step_scale = torch.zeros(B, max(S, 1))
    num_steps = []
    for b, spans in enumerate(step_spans):
        positions = real[b].nonzero().flatten()
        if len(positions) == 0 or len(spans) == 0:
            raise AttnRLError(
                f"sequence {b} has no real tokens or no steps; every sequence needs at least the "
                "prompt step (step 0) covering its non-pad tokens."
            )
        first, last = int(positions[0]), int(positions[-1]) + 1
        if last - first != len(positions):
            raise AttnRLError(
                f"attention_mask row {b} has holes: its real tokens must be one contiguous block "
                "(left or right padding only)."
            )
        bounds = [(int(s), int(e)) for s, e in spans]
        expected_start = first
        for i, (s, e) in enumerate(bounds):
            if s != expected_start or e <= s:
                raise AttnRLError(
                    f"step_spans[{b}][{i}] = [{s}, {e}) is not valid: steps must be non-empty and "
                    f"contiguous, this one should start at {expected_start}; the real tokens of "
                    f"row {b} are [{first}, {last})."
                )
            expected_start = e
        if expected_start != last:
            raise AttnRLError(
                f"step_spans[{b}] ends at {expected_start} but the real tokens of row {b} end at "
                f"{last}: the steps must cover every non-pad token."
            )
        starts = torch.tensor([s for s, _ in bounds])
        ends = torch.tensor([e for _, e in bounds])
        lengths = ends - starts
        steps = torch.repeat_interleave(torch.arange(len(bounds)), lengths)  # (n_real,)
        key_step[b, first:last] = steps
        row_weight[b, first:last] = 1.0 / lengths[steps].float()
        # keys of steps <= step(t) - delta form the prefix [0, end of step (step(t) - delta))
        source = steps - delta
        row_key_end[b, first:last] = torch.where(source >= 0, ends[source.clamp(min=0)], 0)
        step_scale[b, : len(bounds)] = 1.0 / lengths.float()
        num_steps.append(len(bounds))
    return StepLayout(
        row_weight=row_weight.to(device),
        row_key_end=row_key_end.to(device),
        key_step=key_step.to(device),
        step_scale=step_scale[:, :S].to(device),
        num_steps=num_steps,
    )


@dataclass
class RowGroups:
    """Query rows [row_start, row_end) grouped by step: the rows of a step share w_t and key_end.

    weight[b, g, c]: w_t (= 1/|S_j|) if row t = row_start + c belongs to the block's g-th step
                     of row b, else 0 (pads: 0).
    key_end[b, g]:   keys u < key_end count for the g-th step (steps <= its step - delta).
    key_limit:       the largest key_end: keys at or past it never count for this block.
    """

    weight: torch.Tensor  # (B, G, C) fp32
    key_end: torch.Tensor  # (B, G) long
    key_limit: int


def row_groups(layout: StepLayout, row_start: int, row_end: int) -> RowGroups:
    """Group the query rows of one block by step (see RowGroups).

    Example (steps [0,1) [1,3), delta=1, the whole 3-row block): rows 0 | 1 2
        weight = [[1, 0, 0], [0, .5, .5]]   key_end = [0, 1]   key_limit = 1
    """
    steps = layout.key_step[:, row_start:row_end]  # (B, C), pads hold S
    weight = layout.row_weight[:, row_start:row_end]  # (B, C), pads hold 0
    key_end = layout.row_key_end[:, row_start:row_end]  # (B, C)
    real = weight > 0
    first = torch.where(real, steps, steps.max()).amin(dim=1, keepdim=True)  # (B, 1) first step here
    group = torch.where(real, steps - first, 0)  # (B, C), pads join group 0 with weight 0
    G = int(group.max()) + 1
    B, C = weight.shape
    group_weight = weight.new_zeros(B, G, C).scatter_(1, group[:, None, :], weight[:, None, :])
    group_end = key_end.new_zeros(B, G).scatter_reduce_(1, group, key_end, "amax")  # pads add 0
    return RowGroups(weight=group_weight, key_end=group_end, key_limit=int(key_end.max()))


def accumulate_key_influence(probs: torch.Tensor, groups: RowGroups, key_influence: torch.Tensor) -> None:
    """Add one block of attention rows to z[u] = sum_t w_t A[t,u] [step(t) - step(u) >= delta].

    probs: (B, H, C, K) attention probabilities of the block's query rows over keys [0, K) (read
    only); groups: `row_groups` of the same rows; key_influence: (B, H, >=K) fp32, updated in place.

    Example (one head, the 3x3 causal A below, steps [0,1) [1,3), delta=1, groups as in
    `row_groups`):
        A = [[1, 0, 0], [.5, .5, 0], [.2, .3, .5]]
        pooled = weight @ A[:, :1] = [[1], [.5*.5 + .5*.2]] = [[1], [.35]]
        z[0] += 1 * [0 < 0] + .35 * [0 < 1] = .35
    """
    K = min(groups.key_limit, probs.shape[3])
    if K == 0:
        return
    pooled = torch.matmul(groups.weight[:, None], probs[..., :K])  # (B, H, G, K)
    keys = torch.arange(K, device=probs.device)
    admissible = keys < groups.key_end[:, :, None]  # (B, G, K): prefix of keys per step
    key_influence[..., :K] += pooled.mul_(admissible[:, None]).sum(dim=2)  # (B, H, K)


def pool_key_influence(key_influence: torch.Tensor, layout: StepLayout) -> torch.Tensor:
    """y[b, h, k] = (1/|S_k|) sum_{u in S_k} z[b, h, u]: (B, H, L) -> (B, H, S).

    Example: z = [.35, 0, 0] with key steps [0, 1, 1] -> y = [.35, 0] (the 3x3 example above:
    y[0] = alpha[1, 0] = (.5 + .2) / (2 * 1) = .35).
    """
    B, H, L = key_influence.shape
    S = layout.step_scale.shape[1]
    index = layout.key_step[:, None, :].expand(B, H, L)  # (B, H, L), pads -> dummy slot S
    sums = key_influence.new_zeros(B, H, S + 1).scatter_add_(2, index, key_influence)  # (B, H, S+1)
    return sums[..., :S] * layout.step_scale[:, None, :]  # (B, H, S)


class _FCIAccumulator:
    """Per-call state handed to the attention function through the model's forward kwargs."""

    def __init__(self, layout: StepLayout, key_padding: torch.Tensor | None, chunk_size, aggregate):
        self.layout = layout
        self.key_padding = key_padding  # (B, 1, 1, L) bool, True = pad; None if no padding
        self.chunk_size = chunk_size
        self.aggregate = aggregate
        self.per_head = None  # (B, S): running max, or running sum for "mean"
        self._blocks = None
        self._buffers = None
        self.heads_seen = 0
        self.layers_seen = 0

    def blocks(self, B: int, H: int, L: int, device: torch.device) -> list[tuple[int, int, RowGroups]]:
        """(row_start, row_end, row groups) of each block of query rows; the same for every layer."""
        if self._blocks is None:
            if self.chunk_size is not None:
                rows = min(self.chunk_size, L)
            else:
                rows = min(block_bytes(device) // (B * H * L * 4), -(-L // 8))
                rows = min(max(rows, MIN_BLOCK_ROWS), L)
            self._blocks = [
                (c0, min(c0 + rows, L), row_groups(self.layout, c0, min(c0 + rows, L)))
                for c0 in range(0, L, rows)
            ]
        return self._blocks

    def buffers(self, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two flat fp32 scratch tensors of `size` elements, allocated once per call."""
        if self._buffers is None or self._buffers[0].numel() < size:
            self._buffers = tuple(torch.empty(size, dtype=torch.float32, device=device) for _ in range(2))
        return self._buffers

    def add_layer(self, y: torch.Tensor) -> None:
        """y: (B, H, S) per-head influence of one layer."""
        layer = y.amax(dim=1) if self.aggregate == "max" else y.sum(dim=1)  # (B, S)
        if self.per_head is None:
            self.per_head = layer
        elif self.aggregate == "max":
            self.per_head = torch.maximum(self.per_head, layer)
        else:
            self.per_head = self.per_head + layer
        self.heads_seen += y.shape[1]
        self.layers_seen += 1

    def result(self) -> torch.Tensor:
        if self.aggregate == "mean":
            return self.per_head / self.heads_seen
        return self.per_head


def fci_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    fci_accumulator: _FCIAccumulator | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Eager-exact causal attention that also feeds one layer's FCI sums to `fci_accumulator`.

    Signature of transformers' attention interface: query (B, H, L, D), key/value (B, Hkv, L, D)
    post-RoPE; returns the output as (B, L, H, D) and no weights. The causal and padding masks are
    rebuilt here from the accumulator (transformers builds no mask for an unregistered mask name),
    so no L x L mask is ever allocated either.
    """
    if fci_accumulator is None:
        raise RuntimeError(
            f"attention implementation {FCI_ATTENTION!r} was used outside attnrl_core.fci.score; "
            "it only works inside that call (is another thread using the same model?)"
        )
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise AttnRLError(
            "FCI scoring supports full causal attention only; this model uses a sliding window or "
            "logit soft-capping (set use_sliding_window=False or score with another model)."
        )
    if dropout > 0.0:
        raise AttnRLError("FCI scoring needs deterministic attention: attention dropout must be 0.")
    acc = fci_accumulator
    B, H, L, D = query.shape
    Hkv, Lk, Dv = key.shape[1], key.shape[2], value.shape[-1]
    if Lk != L:
        raise AttnRLError(
            f"FCI scoring runs on whole sequences without a KV cache, but this layer got {L} queries "
            f"and {Lk} keys; call score() with the full prompt+response and no cache."
        )
    G = H // Hkv  # query heads per key/value head
    scale = D**-0.5 if scaling is None else scaling
    blocks = acc.blocks(B, H, L, query.device)
    largest = max(c1 - c0 for c0, c1, _ in blocks)
    future = torch.ones(largest, largest, dtype=torch.bool, device=query.device).triu_(1)  # (C, C)
    masked = torch.finfo(torch.float32).min  # finite like eager's mask: pad rows stay NaN-free
    key = key.contiguous()  # (B, Hkv, L, D): key[:, :, :c1] is contiguous, its transpose free
    value = value.contiguous()  # (B, Hkv, L, Dv)
    output = query.new_empty(B, L, H, Dv)  # (B, L, H, Dv)
    key_influence = torch.zeros(B, H, L, dtype=torch.float32, device=query.device)  # (B, H, L)
    # two fp32 blocks reused by every block of every layer: no allocator churn, no fresh pages
    scores_buffer, probs_buffer = acc.buffers(B * H * largest * L, query.device)
    for c0, c1, groups in blocks:
        C = c1 - c0
        # causal: rows [c0, c1) only see keys [0, c1); grouped heads share their key head (no copy)
        q = (query[:, :, c0:c1] * scale).reshape(B, Hkv, G * C, D)  # (B, Hkv, G*C, D)
        scores = scores_buffer[: B * H * C * c1].view(B, Hkv, G * C, c1)
        if q.dtype == torch.float32:
            torch.matmul(q, key[:, :, :c1].transpose(2, 3), out=scores)
        else:  # half precision scores, softmax in fp32 as eager does
            scores.copy_(torch.matmul(q, key[:, :, :c1].transpose(2, 3)))
        scores = scores.view(B, H, C, c1)  # (B, H, C, c1)
        scores[..., c0:c1].masked_fill_(future[:C, :C], masked)
        if acc.key_padding is not None:
            scores.masked_fill_(acc.key_padding[..., :c1], masked)
        probs = torch.softmax(scores, dim=-1, out=probs_buffer[: B * H * C * c1].view(B, H, C, c1))
        block = torch.matmul(probs.to(value.dtype).view(B, Hkv, G * C, c1), value[:, :, :c1])
        output[:, c0:c1] = block.view(B, H, C, Dv).transpose(1, 2)  # (B, C, H, Dv)
        accumulate_key_influence(probs, groups, key_influence)
    acc.add_layer(pool_key_influence(key_influence, acc.layout))
    return output, None


def _forward_with_fci(model, input_ids, attention_mask, layout, aggregate, chunk_size):
    """One forward of `model` with the FCI attention swapped in; returns (logits, per-step FCI (B, S)).

    Positions count from each row's first real token (as `generate` does), so a left-padded row
    is scored exactly like the same row without padding. The model's attention implementation and
    train/eval mode are restored afterwards, also on errors.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(FCI_ATTENTION, fci_attention_forward)
    real = attention_mask.bool()
    key_padding = None if bool(real.all()) else ~real[:, None, None, :]  # (B, 1, 1, L)
    accumulator = _FCIAccumulator(layout, key_padding, chunk_size, aggregate)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    previous, was_training = model.config._attn_implementation, model.training
    try:
        model.set_attn_implementation(FCI_ATTENTION)
        model.eval()
        with torch.no_grad():
            out = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                fci_accumulator=accumulator,
            )
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)
    expected = model.config.num_hidden_layers
    if accumulator.layers_seen != expected:
        raise AttnRLError(
            f"FCI scoring saw {accumulator.layers_seen} attention layers but the model has {expected}: "
            f"{type(model).__name__} does not route its attention through transformers' "
            "AttentionInterface, so its attention cannot be read without patching it."
        )
    return out.logits, accumulator.result()


def token_logprobs_and_entropy(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, block_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each actual token and entropy of the distribution that predicted it.

    logits (B, L, V) -> two (B, L) fp32 tensors aligned with input_ids: [b, t] uses logits[b, t-1];
    zero where t = 0 or x_t or x_{t-1} is padding. Works over blocks of `block_rows` positions so the
    fp32 log-softmax never holds more than B x block_rows x V.
    """
    B, L, V = logits.shape
    logprobs = logits.new_zeros(B, L, dtype=torch.float32)  # (B, L)
    entropy = logits.new_zeros(B, L, dtype=torch.float32)  # (B, L)
    for r0 in range(0, L - 1, block_rows):
        r1 = min(r0 + block_rows, L - 1)
        logp = F.log_softmax(logits[:, r0:r1].float(), dim=-1)  # (B, R, V) predicts r0+1 .. r1
        targets = input_ids[:, r0 + 1 : r1 + 1, None]  # (B, R, 1)
        logprobs[:, r0 + 1 : r1 + 1] = logp.gather(-1, targets).squeeze(-1)
        p_logp = torch.where(logp > float("-inf"), logp.exp() * logp, 0.0)  # 0 log 0 = 0
        entropy[:, r0 + 1 : r1 + 1] = -p_logp.sum(-1)
    real = attention_mask.bool()
    predicted = torch.zeros_like(real)
    predicted[:, 1:] = real[:, 1:] & real[:, :-1]  # x_t and its context token both real
    return logprobs.masked_fill_(~predicted, 0.0), entropy.masked_fill_(~predicted, 0.0)


def score(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    step_spans: Sequence[Sequence[Sequence[int]]],
    delta: int = 4,
    aggregate: str = "max",
    chunk_size: int | None = None,
) -> FCIResult:
    """Raw per-step FCI, token log-probs and token entropies from ONE forward of the policy.

    model: a transformers causal LM whose attention goes through AttentionInterface (Qwen2, Llama).
    input_ids, attention_mask: (B, L) long, left- or right-padded.
    step_spans[b]: [start, end) absolute positions of the steps of row b; step 0 is the prompt.
    delta: steps j >= k + delta count towards y[k] (docs/method.md §2, default 4).
    aggregate: "max" over layers and heads (paper) or "mean" (ablation).
    chunk_size: query rows per block; None picks it from B, heads, L and the device (see
        DEFAULT_BLOCK_BYTES and CUDA_BLOCK_BYTES).

    Positions are counted from each row's first real token (as `generate` does), so padding never
    changes a row's scores. The model runs in eval mode under no_grad with its attention swapped
    for the duration of the call; both are restored afterwards, also on errors. Not for concurrent
    use of one model object from several threads (the swap is on the model's config).

    Worked example (alignment). Row 0 is left-padded by two tokens, prompt = [7], one response
    step = [3, 9]:
        input_ids      = [[0, 0, 7, 3, 9]]      attention_mask = [[0, 0, 1, 1, 1]]
        step_spans     = [[(2, 3), (3, 5)]]     delta = 1
        token_logprobs = [[0, 0, 0, log p(3 | 7), log p(9 | 7 3)]]
        token_entropy  = [[0, 0, 0, H(p(. | 7)),  H(p(. | 7 3))]]
        step_fci[0]    = [max_{l,h} (A[3,2] + A[4,2]) / 2,  0]
    where A = A^{l,h} is the token attention: y[0] = alpha[1,0] = mean over the 2x1 block of step 1
    attending to step 0, and y[1] sums over steps j >= 2, of which there are none.
    """
    if aggregate not in AGGREGATES:
        raise AttnRLError(f"fci.aggregate must be one of {AGGREGATES}; got {aggregate!r}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise AttnRLError(f"FCI chunk_size must be a positive number of rows or None; got {chunk_size!r}.")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise AttnRLError(
            f"input_ids and attention_mask must both be (batch, length); got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}."
        )
    layout = step_layout(step_spans, attention_mask, delta)
    logits, fci = _forward_with_fci(model, input_ids, attention_mask, layout, aggregate, chunk_size)
    B, L, V = logits.shape
    block_rows = min(max(block_bytes(logits.device) // (B * V * 4), MIN_BLOCK_ROWS), L)
    token_logprobs, token_entropy = token_logprobs_and_entropy(logits, input_ids, attention_mask, block_rows)
    step_fci = [fci[b, :n].float() for b, n in enumerate(layout.num_steps)]
    return FCIResult(step_fci=step_fci, token_logprobs=token_logprobs, token_entropy=token_entropy)
