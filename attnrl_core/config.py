"""One typed config for a whole experiment (docs/method.md: every constant is a field here).

A config is built in four layers, later ones winning:

    field defaults  <  method preset  <  YAML file  <  --set overrides

Example::

    >>> cfg = load_config(None, ["branch.rho=0.3", "method=treerl"])
    >>> cfg.branch.rho, cfg.branch.criterion, cfg.batch.adaptive
    (0.3, 'entropy', False)
    >>> load_config("experiments/tiny.yaml", ["method=treerl"]).branch.criterion  # the YAML names fci
    'fci'

Every field carries its documentation in `Field(description=...)`; `attnrl config` prints the
same text next to each resolved value, so the docs and `--help` cannot drift apart. Unknown
keys, wrong types and out-of-range values raise `AttnRLError` naming the dotted field and the
allowed range, before any work starts.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import sys
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from attnrl_core.errors import AttnRLError


class _Section(BaseModel):
    # forbid: a typo in a YAML key must fail loudly, not silently train with the default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*")
    @classmethod
    def _registered_choice(cls, value: Any, info: ValidationInfo) -> Any:
        extra = cls.model_fields[info.field_name].json_schema_extra
        registry = extra.get("registry") if isinstance(extra, dict) else None
        if registry and value not in (names := registered(registry)):
            raise ValueError(f"{value!r} is not registered; choose one of {names}")
        return value


def registered(registry: str) -> list[str]:
    """The names in a registry 'module:DICT' (branch criteria, advantage estimators, rollout
    engines, trainer backends), in registration order: the config's choices come from there, so
    registering a new one is the decorator (or dict entry) alone.

    The registries live with their torch code. Once that module is imported (any run imports it)
    its live registry answers; before that (`attnrl config`, a config check) the names are read
    from the module's source — the names its `@register...("name")` decorators and its `DICT = {...}`
    literal give — so that reading a config does not cost a torch import.

    >>> registered("attnrl_core.advantages:ADVANTAGE_ESTIMATORS")
    ['tree', 'grpo']
    """
    module, attr = registry.split(":")
    if module in sys.modules:
        return list(getattr(sys.modules[module], attr))
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        decorators = node.decorator_list if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
        for dec in decorators:
            if isinstance(dec, ast.Call) and getattr(dec.func, "id", "").startswith("register") and dec.args:
                if isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str):
                    names.append(dec.args[0].value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == attr for t in node.targets) and isinstance(node.value, ast.Dict):
            names += [k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return list(dict.fromkeys(names))


def Choice(registry: str, default: str, description: str) -> Any:
    """A config field whose allowed values are the names registered in `registry`."""
    return Field(default, min_length=1, description=description, json_schema_extra={"registry": registry})


class TinyModelConfig(_Section):
    num_layers: int = Field(4, ge=1, le=64, description="Transformer layers of the built-in tiny Qwen2 policy.")
    hidden_size: int = Field(128, ge=8, description="Width (d_model) of the tiny policy.")
    num_heads: int = Field(4, ge=1, description="Query heads of the tiny policy.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention) of the tiny policy.")
    intermediate_size: int = Field(512, ge=8, description="MLP width of the tiny policy.")
    max_position_embeddings: int = Field(512, ge=32, description="Longest prompt+response the tiny policy is built for.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                "hidden_size must be a multiple of num_heads and num_heads a multiple of num_kv_heads "
                f"(got hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads})"
            )
        return self


class ModelConfig(_Section):
    path: str | None = Field(
        None,
        description="Policy to start from: a local folder or a hub model id, loaded with from_pretrained. "
        "null = the built-in tiny policy produced (and cached) by the warm-start flow.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype. float32 on CPU (exact resume); bfloat16 on GPUs."
    )
    device: str = Field("cpu", description="torch device for the policy, e.g. 'cpu' or 'cuda:0'.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of the built-in tiny policy.")


class PivotWorldConfig(_Section):
    check_rate: float = Field(0.3, ge=0.0, le=1.0, description="Pivot world: share of solutions that check the plan against the question before combining (a check catches a plan that left a part out).")
    max_fillers: int = Field(2, ge=0, le=8, description="Pivot world: filler steps between the opener and the plan, 0..max_fillers (so the plan is response step 2..max_fillers+2).")
    distractors: int = Field(1, ge=0, le=3, description="Pivot world: parts a problem defines that its question does not use.")
    max_ops: int = Field(3, ge=2, le=4, description="Pivot world: operations per part, 2..max_ops (one routine step each).")


class DataConfig(_Section):
    world: Literal["arith", "pivot"] = Field(
        "arith",
        description="Synthetic world (data.train: synthetic): 'arith' (chained arithmetic, 2-8 steps) or 'pivot' "
        "(11-29 steps with plan / check / combination steps pivotal by construction; attnrl_core/pivot_world.py).",
    )
    pivot: PivotWorldConfig = Field(default_factory=PivotWorldConfig, description="Knobs of the pivot world.")
    train: str = Field(
        "synthetic",
        description="Training problems: 'synthetic' (the embedded step-by-step arithmetic world) or a "
        "JSONL/Parquet file with DeepScaleR-style fields problem, answer[, solution].",
    )
    levels: list[int] = Field([1, 2, 3, 4], min_length=1, description="Difficulty levels (number of operations) of the synthetic world.")
    heldout_size: int = Field(2000, ge=1, description="Held-out synthetic problems for evaluation (balanced across levels).")
    max_prompt_tokens: int = Field(96, ge=1, description="Prompts longer than this (in tokens) are skipped with a warning.")
    max_response_tokens: int = Field(160, ge=1, description="Response length limit in tokens (initial samples and prefix+continuation).")
    seed: int = Field(0, description="Seed of the synthetic problem stream (problem i depends on this seed and i only).")


class WarmStartConfig(_Section):
    steps: int = Field(1200, ge=0, description="Optimizer steps of supervised fine-tuning that turn the random tiny model into the base policy (a step budget, not a time budget, so every machine gets the same base).")
    batch_size: int = Field(64, ge=1, description="Demonstrations per warm-start step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of the warm start (linear warm-up, cosine decay).")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps of the warm start.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of the warm start.")
    micro_batch_tokens: int = Field(
        1024, ge=0, description="Padded tokens per forward/backward pass of a warm-start batch (length-sorted passes whose "
        "gradients add up to the batch's; speed only, part of the cache key since rounding differs). 0 = one padded pass."
    )
    flaw: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Planted, fixable reasoning flaw: the fraction of flaw_levels demonstrations that stop one step "
        "early and box the intermediate value. RL can remove it; 0 gives a clean base.",
    )
    flaw_levels: list[int] = Field([3, 4], description="Difficulty levels whose demonstrations carry the flaw.")
    seed: int = Field(1234, description="Seed of the warm start (initial weights, demonstration stream, flaw draws).")


class VLLMConfig(_Section):
    """Settings of the vLLM generation server (rollout.engine: vllm; vllm_server/server.py), passed
    to its `vllm.LLM(...)`. Ignored by the hf engine."""

    gpu_memory_utilization: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of each GPU's memory vLLM may take for weights and KV cache; the trainer "
        "(policy, reference, optimizer, FCI scoring) lives in the rest of the same GPU."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one vLLM engine shards the model over (tensor parallelism).")
    max_model_len: int | None = Field(
        None, ge=1, description="Longest prompt + response (tokens) the server accepts and sizes its KV cache for; null = the "
        "model's own maximum. Must cover data.max_prompt_tokens + data.max_response_tokens and every eval set's length."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and activations dtype of the server; auto = the checkpoint's (bfloat16 for the DS-R1 distills)."
    )
    enforce_eager: bool = Field(False, description="No CUDA graphs / torch.compile: faster start, slower decoding (small or CPU runs).")
    enable_prefix_caching: bool = Field(
        True, description="Reuse KV blocks of shared prefixes: the T continuations of a branch point share prompt + response prefix."
    )
    port: int = Field(0, ge=0, le=65535, description="TCP port of the server on 127.0.0.1; 0 = any free port.")
    startup_timeout_s: float = Field(900.0, gt=0.0, description="Seconds to wait for the server to load the model and answer.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Further vllm.LLM keyword arguments passed as given, e.g. {kv_cache_memory_bytes: "
        "134217728} on a CPU, {max_num_seqs: 512}."
    )

    def llm_kwargs(self) -> dict[str, Any]:
        """The `vllm.LLM` keyword arguments of these settings.

        >>> VLLMConfig(max_model_len=9216, extra={"max_num_seqs": 512}).llm_kwargs()["max_model_len"]
        9216
        >>> "max_model_len" in VLLMConfig().llm_kwargs()   # null: vLLM's own default
        False
        """
        kwargs: dict[str, Any] = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": self.enable_prefix_caching,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        return {**kwargs, **self.extra}


class RolloutConfig(_Section):
    engine: str = Choice("attnrl_core.rollout:ENGINES", "hf", "Rollout engine: 'hf' (transformers, any machine) or 'vllm' (separate GPU server process).")
    group_size: int = Field(6, ge=1, description="G: initial responses sampled per prompt.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature of initial responses and continuations (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 = off.")
    max_batch_size: int = Field(
        256, ge=1, description="Largest generation micro-batch of the hf engine, and the sequences of one FCI scoring pass "
        "(whose logits take sequences x length x vocabulary x 2 bytes: keep it small for long responses, docs/scaling.md).",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="The vLLM server's settings (rollout.engine: vllm).")


class FCIConfig(_Section):
    delta: int = Field(4, ge=1, description="Delta: a step influences only steps at least this far after it (docs/method.md §2).")
    aggregate: Literal["max", "mean"] = Field("max", description="Reduction over layers and heads: 'max' (paper) or 'mean' (ablation).")
    zero_prompt: bool = Field(True, description="Zero the prompt step's FCI (release behaviour).")
    zero_first_step: bool = Field(True, description="Zero the first response step's FCI (release behaviour).")
    zero_answer_summary: bool = Field(True, description="Zero the '</think>' step and all later steps (release behaviour).")
    chunk_size: int | None = Field(None, ge=1, description="Query rows per attention chunk in the scoring pass; null = automatic.")


class BranchConfig(_Section):
    criterion: str = Choice(
        "attnrl_core.branching:CRITERIA", "fci", "How branch points are chosen: fci (ATB), entropy (TreeRL), neglogp (EPTree), random, earliest."
    )
    rho: float = Field(0.2, gt=0.0, le=1.0, description="ATB keeps steps with FCI at or above the (1 - rho) quantile; allowed (0, 1].")
    num_points: int = Field(2, ge=1, description="N: branch points per branched response.")
    continuations: int = Field(2, ge=1, description="T: continuations sampled from each branch point; T >= 1.")
    min_token_offset: int = Field(16, ge=0, description="A branch point must start at least this many tokens into prompt+response (release rule; 512 at paper scale).")
    min_token_gap: int = Field(8, ge=0, description="A branch point must be at least this many tokens from every point already chosen (release rule; 512 at paper scale).")


class ExpansionConfig(_Section):
    fci_filter: bool = Field(True, description="Difficulty-aware filter: all-correct prompts branch only if their mean FCI beats the running mean (docs/method.md §5).")
    strict: bool = Field(True, description="Filter comparison: mf > running mean (release) vs mf >= running mean (paper).")
    mode: Literal["exp", "uniform"] = Field("exp", description="Responses to branch per prompt: ceil/round(G*exp(-acc)) ('exp') or all G ('uniform', ablation).")
    rounding: Literal["ceil", "round"] = Field("ceil", description="Rounding of G*exp(-acc): 'ceil' (release) or 'round' (paper).")


class BatchConfig(_Section):
    prompts: int = Field(16, ge=1, description="B_1: prompts in the first batch (64 at paper scale).")
    adaptive: bool = Field(True, description="Adapt the prompt batch size to keep valid training sequences near the target (docs/method.md §6).")
    target_sequences: int = Field(128, ge=1, description="B': target number of training sequences per step (1920 at paper scale).")
    smoothing: float = Field(0.9, ge=0.0, le=1.0, description="lambda: weight of the previous batch size in the update.")
    formula: Literal["release", "paper"] = Field("release", description="Adaptive batch update: release (ceil/floor) or paper (round).")
    min_prompts: int = Field(4, ge=1, description="Lower clamp of the adaptive prompt batch size.")
    max_prompts: int = Field(64, ge=1, description="Upper clamp of the adaptive prompt batch size.")
    max_growth: float = Field(2.0, ge=1.0, description="Growth factor used when no sequence survived filtering (B''=0).")

    @model_validator(mode="after")
    def _clamps_ordered(self) -> "BatchConfig":
        if not self.min_prompts <= self.prompts <= self.max_prompts:
            raise ValueError(
                f"need min_prompts <= prompts <= max_prompts (got {self.min_prompts}, {self.prompts}, {self.max_prompts})"
            )
        return self


class OptimConfig(_Section):
    lr: float = Field(1e-5, gt=0.0, description="AdamW learning rate, constant (1e-6 at paper scale).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient-norm clip.")
    minibatch_sequences: int = Field(64, ge=1, description="Sequences per optimizer step (192 at paper scale); one epoch over the batch.")
    micro_batch_tokens: int = Field(
        1024, ge=0, description="Padded tokens per forward/backward pass: a mini-batch is sorted by length and run as passes of "
        "at most this many (rows x longest row) tokens whose gradients add up to the mini-batch's. Speed and memory only: the "
        "update is the same up to float rounding. 0 = the whole mini-batch in one padded pass."
    )
    clip_low: float = Field(0.2, gt=0.0, lt=1.0, description="PPO ratio clip below: 1 - clip_low.")
    clip_high: float = Field(0.28, gt=0.0, description="PPO ratio clip above (clip-higher): 1 + clip_high.")
    dual_clip: float = Field(3.0, gt=1.0, description="Dual-clip constant c for negative advantages.")
    kl_coef: float = Field(0.001, ge=0.0, description="Coefficient of the k3 KL penalty to the frozen initial policy.")
    entropy_coef: float = Field(0.0, ge=0.0, description="Entropy bonus coefficient.")


class TrainConfig(_Section):
    iterations: int = Field(60, ge=1, description="Training iterations (policy updates).")
    eval_every: int = Field(10, ge=1, description="Evaluate on the held-out set every K iterations (and at the end).")
    checkpoint_every: int = Field(5, ge=1, description="Checkpoint every N iterations (and at the end).")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept besides the best one.")
    eval_before: bool = Field(True, description="Evaluate the starting policy as step 0, so every curve starts at the base.")
    retries: int = Field(2, ge=0, description="Prefect retries of each phase task.")
    retry_delay_s: float = Field(1.0, ge=0.0, description="Seconds between retries of a phase task.")
    backend: str = Choice(
        "attnrl_core.trainer:TRAINERS", "torch", "Trainer backend: torch (AdamW in process, CPU or one GPU) or deepspeed (a DeepSpeed engine: ZeRO, bf16)."
    )
    zero_stage: int = Field(
        2, ge=0, le=3, description="backend deepspeed: ZeRO stage (0 none, 1 optimizer state, 2 + gradients, 3 + parameters "
        "partitioned over the ranks). With 3 every forward gathers each layer's weights from the peers, FCI scoring runs "
        "on the partitioned model, and rollouts sample from a separate engine (vLLM's server, or the hf engine's own "
        "copy) that gets the gathered weights after each update.",
    )
    bf16: bool = Field(False, description="backend deepspeed: train (and so roll out and score) in bfloat16 with fp32 master weights.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them (transformers' "
        "gradient checkpointing): a pass keeps one hidden state per layer, so paper-length sequences (9k tokens) fit on a "
        "GPU, for about one more forward pass of compute. Scoring and rollouts are unaffected.",
    )
    fault: str | None = Field(
        None,
        description="Fault injection for tests and demos: 'phase@iteration' (comma-separated for several) fails that "
        "phase's first attempt at that iteration; the retry must recover. 'phase@iteration:kill-rank<r>' instead makes "
        "trainer rank r's process kill itself with SIGKILL during that phase (train.ranks > 1). Also read from ATTNRL_FAULT.",
    )
    ranks: int = Field(
        1, ge=1, description="Data-parallel trainer ranks. 1 = everything in the flow's process, no Ray; N > 1 = a Ray "
        "worker group of N rank actors (one CPU thread or one GPU each) in one torch.distributed group (gloo on CPU, NCCL "
        "on GPUs) that roll out, score and update their shares of each batch. Where a run runs, not what it computes: "
        "not part of the config hash, and `attnrl resume RUN --set train.ranks=K` continues a run on another world size.",
    )

    @property
    def partitions_parameters(self) -> bool:
        """ZeRO-3: no rank holds the whole policy, so the rollout engine needs weights of its own."""
        return self.backend == "deepspeed" and self.zero_stage == 3

    @model_validator(mode="after")
    def _deepspeed_ranks(self) -> "TrainConfig":
        if self.backend == "deepspeed" and self.ranks > 1 and self.bf16 and self.zero_stage == 0:
            raise ValueError(
                "backend deepspeed with ranks > 1 and bf16 needs zero_stage 1 or 2 (stage 0's bf16 optimizer partitions its "
                "state in a layout whose checkpoints do not move between world sizes)"
            )
        return self


class RayConfig(_Section):
    address: str | None = Field(
        None, description="train.ranks > 1: the Ray cluster. null = the flow starts a local Ray on 127.0.0.1 sized to the "
        "ranks (and ends it with the run); 'auto' or 'host:port' = join a running cluster (`ray start --head`), whose "
        "unreachability fails up front naming this field.",
    )
    placement_timeout_s: float = Field(
        3600.0, gt=0.0, description="How long a run waits for the cluster to free train.ranks CPUs/GPUs (a sweep's trials "
        "queue for free ranks this way) before it fails.",
    )


HELDOUT = "heldout"  # the name of the synthetic held-out set among the benchmark sets
_METRIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MEAN = "mean"  # eval/mean/<metric>: the objective's mean over several benchmarks


class BenchmarkSet(_Section):
    """One benchmark set of `eval.benchmarks`: where its problems come from and how it is sampled.
    A plain string is a set with that source and the eval section's sampling."""

    source: str = Field(
        HELDOUT,
        min_length=1,
        description="'heldout' (the synthetic held-out set: data.heldout_size problems at data.levels) or a JSONL/Parquet "
        "file with problem, answer[, level] (AIME / AMC / MATH-500 / CHAMP spellings accepted; `attnrl data` writes some). "
        "A relative path is read from the working directory.",
    )
    name: str | None = Field(
        None, description="Its name in metrics and tables (eval/<name>/avg_at_K); null = 'heldout' or the file's stem (aime24.jsonl -> aime24)."
    )
    samples: int | None = Field(None, ge=1, description="K: samples per problem for avg@K and pass@K; null = eval.samples (the paper: 32 on AIME/AMC, 4 on the others).")
    temperature: float | None = Field(None, ge=0.0, description="Sampling temperature (0 = greedy); null = eval.temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass; null = eval.top_p.")
    max_new_tokens: int | None = Field(None, ge=1, description="Response length limit in tokens; null = eval.max_new_tokens (32,768 in the paper).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @property
    def key(self) -> str:
        """The set's metric-safe name: `name`, else 'heldout' or the file's stem."""
        if self.name:
            return self.name
        return HELDOUT if self.source == HELDOUT else Path(self.source).stem

    def resolved(self, defaults: "EvalConfig") -> "BenchmarkSet":
        """This set with every null sampling setting filled from the eval section."""
        return self.model_copy(
            update={
                "name": self.key,
                "samples": self.samples if self.samples is not None else defaults.samples,
                "temperature": self.temperature if self.temperature is not None else defaults.temperature,
                "top_p": self.top_p if self.top_p is not None else defaults.top_p,
                "max_new_tokens": self.max_new_tokens if self.max_new_tokens is not None else defaults.max_new_tokens,
            }
        )


class ObjectiveConfig(_Section):
    """What 'better' means for a run: one benchmark's metric or the mean over several. A plain
    string names one benchmark, a list several."""

    benchmarks: list[str] = Field(
        default_factory=list,
        description="Names (see eval.benchmarks[].name) of the benchmark sets whose metric decides; the mean over them when "
        "several (the paper's 'Avg' column); empty = the first of eval.benchmarks.",
    )
    metric: Literal["avg", "pass"] = Field("avg", description="avg@K (mean accuracy over a problem's K samples) or the unbiased pass@K.")

    @model_validator(mode="before")
    @classmethod
    def _from_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"benchmarks": [value]}
        if isinstance(value, list):
            return {"benchmarks": value}
        return value


class EvalConfig(_Section):
    benchmarks: list[BenchmarkSet] = Field(
        default_factory=lambda: [BenchmarkSet()],
        min_length=1,
        description="The benchmark sets evaluated every train.eval_every iterations and by `attnrl eval`, each a source "
        "('heldout' or a file) with optional samples / temperature / top_p / max_new_tokens of its own, e.g. "
        "[heldout, {source: data/aime24.jsonl, samples: 32}].",
    )
    samples: int = Field(1, ge=1, description="K: samples per problem for avg@K and pass@K, for sets that do not set their own.")
    temperature: float = Field(0.0, ge=0.0, description="Evaluation temperature (0 = greedy; 0.6 at paper scale), for sets that do not set their own.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Evaluation nucleus mass, for sets that do not set their own.")
    max_new_tokens: int = Field(160, ge=1, description="Evaluation response length limit, for sets that do not set their own.")
    objective: ObjectiveConfig = Field(
        default_factory=ObjectiveConfig,
        description="The metric that picks the best checkpoint, shows in the progress bar and the final table, and is a "
        "sweep's (and compare's) default objective: a benchmark name, a list of names (their mean), or {benchmarks, metric}.",
    )
    progress_rows: int = Field(
        256, ge=1, description="Sequences generated per engine call while evaluating (problems x decoded samples; greedy "
        "decodes one per problem): the progress bar moves once per call. On the hf engine keep it a multiple of "
        "rollout.max_batch_size (the default equals it), so calls cut no generation micro-batch differently."
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> "EvalConfig":
        keys = [b.key for b in self.benchmarks]
        for key in keys:
            if not _METRIC_NAME.match(key):
                raise ValueError(f"benchmark name {key!r} is not metric-safe: use letters, digits, '_', '.', '-' (set eval.benchmarks[].name)")
        if MEAN in keys:
            raise ValueError(f"no benchmark may be named {MEAN!r}: eval/{MEAN}/... holds the objective's mean (set eval.benchmarks[].name)")
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"two benchmark sets share the name {duplicates[0]!r}: give one a name of its own (eval.benchmarks[].name)")
        unknown = [b for b in self.objective.benchmarks if b not in keys]
        if unknown:
            raise ValueError(f"eval.objective names {unknown[0]!r}, which is not one of the benchmark sets {keys}")
        return self

    def sets(self) -> list[BenchmarkSet]:
        """Every benchmark set with its sampling settings filled in (`resolved`)."""
        return [b.resolved(self) for b in self.benchmarks]

    def objective_sets(self) -> list[BenchmarkSet]:
        """The resolved sets whose metric makes up the objective."""
        chosen = self.objective.benchmarks or [self.benchmarks[0].key]
        return [b for b in self.sets() if b.key in chosen]

    def objective_metric(self) -> str:
        """The MLflow metric name of the objective.

        >>> EvalConfig().objective_metric()
        'eval/heldout/avg_at_1'
        >>> EvalConfig(benchmarks=["a.jsonl", {"source": "b.jsonl", "samples": 4}], objective=["a", "b"]).objective_metric()
        'eval/mean/avg'
        """
        sets = self.objective_sets()
        if len(sets) == 1:
            return f"eval/{sets[0].key}/{self.objective.metric}_at_{sets[0].samples}"
        return f"eval/{MEAN}/{self.objective.metric}"


class VerifyConfig(_Section):
    timeout_s: float = Field(5.0, gt=0.0, description="Time limit per response of the math-verify fallback (docs/method.md §9); a response past it counts as wrong.")


class Config(_Section):
    name: str = Field("tiny", min_length=1, description="Experiment name: the MLflow experiment that collects the runs.")
    method: Literal["attnrl", "treerl", "grpo", "random", "earliest"] = Field(
        "attnrl", description="Method preset: sets the criterion and switches before the YAML and --set values apply."
    )
    seed: int = Field(0, description="Run seed; every phase's seed is derived from (seed, iteration, phase).")
    pipeline: Literal["one_step_off", "on_policy"] = Field(
        "one_step_off", description="Generation pipeline: one call per iteration (one_step_off, docs/method.md §7) or two (on_policy)."
    )
    advantage: str = Choice("attnrl_core.advantages:ADVANTAGE_ESTIMATORS", "tree", "Advantage estimator: TreeRL tree advantages or GRPO group-normalised outcomes.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and evaluation data.")
    warmstart: WarmStartConfig = Field(default_factory=WarmStartConfig, description="Warm start of the tiny policy.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling of responses and continuations.")
    fci: FCIConfig = Field(default_factory=FCIConfig, description="Forward Context Influence scoring (docs/method.md §2).")
    branch: BranchConfig = Field(default_factory=BranchConfig, description="Branch-point selection (docs/method.md §3).")
    expansion: ExpansionConfig = Field(default_factory=ExpansionConfig, description="Difficulty-aware exploration (docs/method.md §5).")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Adaptive batch sampling (docs/method.md §6).")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Loss and optimiser (docs/method.md §8).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Iterations, evaluation, checkpoints, retries.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation sampling.")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="The answer verifier (docs/method.md §9).")
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster of a multi-rank run (train.ranks > 1).")

    @model_validator(mode="before")
    @classmethod
    def _former_data_benchmarks(cls, value: Any) -> Any:
        """Configs (and checkpoints) written before eval.benchmarks listed extra files in
        data.benchmarks, evaluated after the held-out set: read them that way."""
        if isinstance(value, dict) and isinstance(value.get("data"), dict) and "benchmarks" in value["data"]:
            value = {**value, "data": dict(value["data"])}
            extra = value["data"].pop("benchmarks")
            if extra:
                section = dict(value.get("eval") or {})
                section["benchmarks"] = list(section.get("benchmarks") or [HELDOUT]) + list(extra)
                value["eval"] = section
        return value

    @property
    def branches(self) -> bool:
        """Does this method grow trees? A property of its advantage estimator (GRPO's does not)."""
        from attnrl_core.advantages import get_advantage_estimator

        return get_advantage_estimator(self.advantage).branches

    @property
    def criterion_tag(self) -> str:
        """The branch criterion as runs are tagged and named: 'none' for methods that do not branch."""
        return self.branch.criterion if self.branches else "none"

    def hash(self) -> str:
        """Stable 12-hex digest of the resolved config (key order independent), leaving out where
        and how the run runs (PLACEMENT: its ranks, Ray cluster, gradient checkpointing), which does
        not change what it computes."""
        tree = self.model_dump(mode="json")
        for dotted in PLACEMENT:
            section, _, name = dotted.partition(".")
            if name:
                tree[section].pop(name)
            else:
                tree.pop(section)
        blob = json.dumps(tree, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Fields that say where and how a run runs, not what it computes: left out of Config.hash, and the
# only ones `attnrl resume --set` may change (a run moved to other machines may need them changed).
PLACEMENT = ("train.ranks", "train.gradient_checkpointing", "ray")


# Method presets (docs/method.md §3): the baselines share the tree machinery and differ in these switches.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "attnrl": {},
    "treerl": {
        "branch": {"criterion": "entropy"},
        "expansion": {"fci_filter": False, "mode": "uniform"},
        "batch": {"adaptive": False},
    },
    "grpo": {"advantage": "grpo", "expansion": {"fci_filter": False}, "batch": {"adaptive": False}},
    "random": {"branch": {"criterion": "random"}},
    "earliest": {"branch": {"criterion": "earliest"}},
}


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """'branch.rho=0.3' -> {'branch': {'rho': 0.3}}; the value is parsed as YAML (so 0.3 is a float,
    [1, 2] a list, null None, true a bool)."""
    if "=" not in text:
        raise AttnRLError(f"Override '{text}' is not of the form key.path=value (for example --set branch.rho=0.3).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise AttnRLError(f"Override '{text}' has an empty field name; write it as key.path=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise AttnRLError(f"Override '{text}': the value is not valid YAML ({exc}).") from None
    tree: dict = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def read_yaml_mapping(path: Path, what: str = "Config file") -> dict:
    """A YAML file holding a top-level mapping; AttnRLError names the file (and the line) otherwise."""
    if not path.is_file():
        raise AttnRLError(f"{what} {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise AttnRLError(f"{what} {path}{where} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise AttnRLError(f"{what} {path} must hold a mapping of fields at top level, not {type(data).__name__}.")
    return data


def _describe_range(field_info) -> str:
    bounds = []
    for meta in field_info.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sym} {getattr(meta, attr)}")
    return " and ".join(bounds)


def _field_info(loc: tuple) -> Any:
    model: Any = Config
    info = None
    for part in loc:
        if isinstance(part, int) and get_origin(model) is list and get_args(model):
            model = get_args(model)[0]  # an item of a list of sections (eval.benchmarks.0.samples)
            continue
        if not isinstance(part, str) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            break
        info = model.model_fields.get(part)
        if info is None:
            return None
        model = info.annotation
    return info


def spec_error(exc: ValidationError, what: str, source: str, example: str) -> AttnRLError:
    """One paragraph naming each bad field of a spec file (a sweep, a suite) that is not a Config.

    spec_error(exc, "sweep file", "s.yaml", "experiments/sweeps/branching.yaml") ->
    "Invalid sweep file s.yaml: unknown field 'trails'. See experiments/sweeps/branching.yaml for every field."
    """
    parts = []
    for e in exc.errors():
        dotted = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{dotted}'")
        elif e["type"] == "missing":
            parts.append(f"field '{dotted}' is required")
        else:
            parts.append(f"field '{dotted}' = {e.get('input')!r}: {e['msg']}")
    return AttnRLError(f"Invalid {what} {source}: " + "; ".join(parts) + f". See {example} for every field.")


def validation_message(exc: ValidationError, source: str) -> str:
    """One paragraph naming each bad field, what was given and what is allowed."""
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{dotted}'")
            continue
        info = _field_info(loc)
        allowed = _describe_range(info) if info is not None else ""
        given = err.get("input")
        text = f"field '{dotted}' = {given!r}: {err['msg']}"
        if allowed:
            text += f" (allowed: {allowed})"
        parts.append(text)
    return f"Invalid config ({source}): " + "; ".join(parts) + ". Run `attnrl config` to see every field, its default and its meaning."


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve defaults < method preset < YAML < overrides into a validated Config."""
    raw: dict = read_yaml_mapping(Path(path)) if path is not None else {}
    for text in overrides:
        raw = _deep_merge(raw, parse_override(text))
    raw = expand_environment(raw)
    method = raw.get("method", "attnrl")
    preset = METHOD_PRESETS.get(method, {}) if isinstance(method, str) else {}
    merged = _deep_merge(preset, raw)
    source = f"{path}" if path is not None else "defaults"
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise AttnRLError(validation_message(exc, source)) from None


def with_placement(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """`cfg` moved by `overrides` that only say where and how it runs (PLACEMENT: train.ranks,
    train.gradient_checkpointing, ray.*):
    what `attnrl resume RUN --set train.ranks=2` may change of a saved run.

    >>> with_placement(Config(), ["train.ranks=2"]).train.ranks
    2
    >>> with_placement(Config(), ["branch.rho=0.5"])
    Traceback (most recent call last):
    ...
    attnrl_core.errors.AttnRLError: --set branch.rho=0.5: a resumed run keeps its config; only where and how it runs may change (train.ranks, train.gradient_checkpointing, ray.*).
    """
    tree = cfg.model_dump(mode="json")
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not any(key == p or key.startswith(p + ".") for p in PLACEMENT):
            raise AttnRLError(f"--set {text}: a resumed run keeps its config; only where and how it runs may change (train.ranks, train.gradient_checkpointing, ray.*).")
        tree = _deep_merge(tree, parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise AttnRLError(validation_message(exc, "--set")) from None


def objective_metric(cfg: Config) -> str:
    """The MLflow metric that ranks runs of `cfg` (eval.objective): what picks the best
    checkpoint, a sweep's default objective and compare's default metric. Every training run
    also carries it as its tag `objective_metric`.

    >>> objective_metric(load_config(None))
    'eval/heldout/avg_at_1'
    """
    return cfg.eval.objective_metric()


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(tree: Any, where: str = "") -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string value by the environment's value; an
    unset variable without a default fails naming the field.

    >>> os.environ["ATTNRL_DOCTEST_DATA"] = "/data/train.parquet"
    >>> expand_environment({"data": {"train": "${ATTNRL_DOCTEST_DATA}", "seed": 0}, "model": {"path": "${NO_SUCH_VAR_X:-m}"}})
    {'data': {'train': '/data/train.parquet', 'seed': 0}, 'model': {'path': 'm'}}
    """
    if isinstance(tree, dict):
        return {k: expand_environment(v, f"{where}.{k}" if where else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [expand_environment(v, f"{where}[{i}]") for i, v in enumerate(tree)]
    if not isinstance(tree, str) or "${" not in tree:
        return tree

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise AttnRLError(
            f"Config field '{where}' = {tree!r} needs the environment variable {name}, which is not set: "
            f"export {name}=... or give the field directly with --set {where}=... ."
        )

    return _ENV_REFERENCE.sub(value, tree)


def check_inputs(cfg: Config, model_path: str | None = None, train_data: bool = True) -> None:
    """Fail at once, naming the field, when a file the run will read is not there: the training
    data (data.train, unless not `train_data`), each benchmark file (eval.benchmarks), a local
    model folder (model.path, or `model_path` in its place) without config.json or weights. A hub
    id is left to the loader (it may be in the local cache)."""
    if train_data and cfg.data.train != "synthetic" and not Path(cfg.data.train).is_file():
        raise AttnRLError(
            f"data.train = {cfg.data.train!r}: no such file (resolved to {Path(cfg.data.train).resolve()}). Point it at a "
            "DeepScaleR-style .jsonl/.parquet file (fields problem, answer), or 'synthetic'."
        )
    for i, b in enumerate(cfg.eval.benchmarks):
        if b.source != HELDOUT and not Path(b.source).is_file():
            raise AttnRLError(
                f"eval.benchmarks[{i}].source = {b.source!r}: no such file (resolved to {Path(b.source).resolve()}). "
                "Give a .jsonl/.parquet benchmark file (`attnrl data gsm8k` writes one) or 'heldout'."
            )
    path = model_path or cfg.model.path
    if path and (path.startswith((".", "/", "~")) or Path(path).exists()):
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise AttnRLError(
                f"model.path = {path!r} is not a model folder (no config.json there): point it at a folder written by "
                "save_pretrained (`make real-model` writes models/smollm2-135m-instruct), a hub id, or null for the tiny policy."
            )
        weights = [p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in folder.glob(pattern)]
        if not weights:
            raise AttnRLError(
                f"model.path = {path!r} holds config.json but no weights (*.safetensors / *.bin): the folder is incomplete; "
                "write it again with save_pretrained (or `make real-model`)."
            )
        _check_folder_vocabularies(folder, path)
    from attnrl_core import data  # the files' rows too: a malformed one fails now, naming file and line

    if train_data and cfg.data.train != "synthetic":
        data.load_problems(cfg.data.train)
    for b in cfg.eval.benchmarks:
        if b.source != HELDOUT:
            data.load_benchmark(b.source)


def _check_folder_vocabularies(folder: Path, path: str) -> None:
    """config.json's vocab_size against the largest id of tokenizer.json (both read as JSON, no
    weights loaded): a folder whose tokenizer belongs to another model fails naming model.path."""
    try:
        rows = json.loads((folder / "config.json").read_text()).get("vocab_size")
        tok = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").is_file() else None
    except (OSError, ValueError) as exc:
        raise AttnRLError(f"model.path = {path!r}: config.json or tokenizer.json is not readable JSON ({exc}).") from None
    if not isinstance(rows, int) or tok is None:
        return
    vocab = (tok.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t.get("id", -1) for t in tok.get("added_tokens") or []]
    largest = max((i for i in ids if isinstance(i, int)), default=-1)
    if largest >= rows:
        raise AttnRLError(
            f"model.path = {path!r}: the tokenizer and the model disagree: tokenizer.json has token ids up to {largest} but "
            f"config.json's vocab_size is {rows}. The folder's tokenizer belongs to another model: save the tokenizer the "
            "weights were trained with next to them."
        )


def flatten(cfg: Config) -> dict[str, Any]:
    """{'branch.rho': 0.2, ...}: the config as MLflow params, one per field (sections are walked;
    list and mapping values are rendered as JSON), the same names `describe_fields` lists."""
    out: dict[str, Any] = {}

    def walk(prefix: str, section: BaseModel) -> None:
        for name in type(section).model_fields:
            value = getattr(section, name)
            dotted = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                walk(dotted + ".", value)
            else:
                plain = section.model_dump(mode="json", include={name})[name]
                out[dotted] = json.dumps(plain) if isinstance(plain, (list, dict)) else plain

    walk("", cfg)
    return out


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type/range, description) for every leaf field — the text behind `attnrl config`."""
    rows = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, dotted + "."))
            continue
        registry = info.json_schema_extra.get("registry") if isinstance(info.json_schema_extra, dict) else None
        if get_origin(ann) is Literal:  # the choices, not the bare word "Literal"
            kind = " | ".join(str(choice) for choice in get_args(ann))
        elif registry:
            kind = " | ".join(registered(registry))
        elif get_origin(ann) is list and get_args(ann) and isinstance(get_args(ann)[0], type) and issubclass(get_args(ann)[0], BaseModel):
            item = get_args(ann)[0]  # e.g. eval.benchmarks: each item's fields are documented on its class
            kind = f"list of {{{', '.join(item.model_fields)}}} ({item.__name__}) or strings"
        else:
            kind = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rng = _describe_range(info)
        rows.append((dotted, kind + (f" ({rng})" if rng else ""), info.description or ""))
    return rows
