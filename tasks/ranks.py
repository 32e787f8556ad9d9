"""Trainer ranks: where the heavy work of a run happens (rollout, scoring, update).

A `Rank` holds one trainer rank's live objects — the policy, the frozen reference, the trainer
with its optimizer, the rollout engine — and does the phases' heavy work on them. With
`train.ranks: 1` the session holds one Rank in the flow's own process and nothing else runs
(no Ray). With N > 1 it holds a `RankGroup`: N Ray actors, each one Rank on one CPU thread or
one GPU, joined in one torch.distributed group (gloo on CPU, NCCL on GPUs). Both answer the same
calls, so the phases do not know which they talk to:

    ranks.generate(prompts, params, seed, max_new_tokens, n)   # as RolloutEngine.generate
    ranks.score(groups)                 # fills log-probs, entropies, FCI of the groups in place
    ranks.update(samples, seed, it)     # one PPO epoch -> UpdateStats (the whole batch's)
    ranks.state_dicts()                 # (weights, optimizer) for a checkpoint, world-size free

The group is verl's single controller with Ray doing the dispatch: the flow shards each call
(prompts by n x (prompt + budget) tokens, prompt groups by their tokens, `balanced_shards`),
every rank works on its share, and the flow gathers. Sharding is invisible in the results:
each prompt's random streams are keyed by its place in the whole call (`prompt_index`), and the
update sums the ranks' gradients of a loss whose token mean divides by the whole mini-batch's
tokens (attnrl_core/trainer.py), so an N-rank run is the 1-rank run up to float rounding. Only
the flow talks to Prefect and MLflow; ranks log nothing.

A lost rank (its process killed, out of memory, its node gone) fails the phase's call with
`RankLost`; the group ends its other actors, and Prefect retries the phase. The retry finds the
group down and rebuilds it from `state`: the weights and optimizer state as of the last
successful update, which the flow keeps in memory (sent by rank 0 after every update, with a
ZeRO optimizer's slices gathered from every rank first: the one transfer per iteration this
costs). Every phase of an iteration starts from that state, so the retried phase re-runs from
exactly where the first attempt started; an update retried after it had succeeded on the ranks
goes back to the state its first attempt started from.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from attnrl_core.batching import balanced_shards
from attnrl_core.config import Config
from attnrl_core.errors import AttnRLError
from attnrl_core.policy import load_policy
from attnrl_core.prompt_groups import PromptGroup
from attnrl_core.rollout import Generation, SamplingParams, engine_class, resolve_budgets, resolve_counts, resolve_prompt_index
from attnrl_core.scoring import score_groups, score_passes
from attnrl_core.steps import decode_vocab, separator_mask
from attnrl_core.trainer import TRAINERS, PolicySample, UpdateStats, all_reduce_max, collective_seconds, data_parallel_rank
from tasks.phase import FaultInjector


class Rank:
    """One trainer rank's policy, reference, trainer and engine, from the base policy and, when
    continuing, saved `weights` and `optimizer` state."""

    rebuilds = 0  # one rank in the flow's own process is never lost and rebuilt (RankGroup counts its rebuilds)

    def __init__(self, cfg: Config, base: str, weights: dict | None = None, optimizer: dict | None = None) -> None:
        self.cfg = cfg
        self.policy, self.tokenizer = load_policy(base, cfg.model)
        self.reference = None  # the frozen initial policy of the KL term (only when it is used)
        if cfg.optim.kl_coef > 0:
            self.reference, _ = load_policy(base, cfg.model)
            self.reference.eval().requires_grad_(False)
        if weights is not None:
            self.policy.load_state_dict(weights)
        self.policy.eval()
        engine = engine_class(cfg.rollout.engine)
        # ZeRO-3 partitions the policy object: an engine that samples from it in place gets a copy
        self.partitioned = cfg.train.partitions_parameters
        sampler = copy.deepcopy(self.policy) if self.partitioned and engine.reads_policy_in_place else self.policy
        self.engine = engine.for_run(sampler, self.tokenizer, base, cfg.rollout)
        if weights is not None:  # an engine of its own starts from the base, not the checkpoint
            self.engine.update_weights(self.policy)
        self.trainer = TRAINERS[cfg.train.backend](self.policy, self.reference, self.tokenizer.pad_token_id, cfg.optim, cfg.train)
        if optimizer is not None:
            self.trainer.load_state_dict(optimizer)
        # what scoring needs of the tokenizer, computed once
        self.vocab_texts = decode_vocab(self.tokenizer)
        self.sep_mask, self.sep_rule = separator_mask(self.tokenizer, vocab_size=self.policy.config.vocab_size)
        self._snapshot: tuple[int, Any] | None = None

    def generate(self, prompts, params: SamplingParams, seed: int, max_new_tokens=None, n=None, prompt_index=None, phase=None, iteration=None) -> list[list[Generation]]:
        """The engine's generate (`phase` and `iteration` only matter to a group's fault injection)."""
        return self.engine.generate(prompts, params, seed=seed, max_new_tokens=max_new_tokens, n=n, prompt_index=prompt_index)

    def score(self, groups: Sequence[PromptGroup], iteration: int | None = None) -> Sequence[PromptGroup]:
        micro_batch = self.cfg.rollout.max_batch_size
        passes = None
        if self.partitioned:  # each forward gathers the weights with the peers: all ranks run as many
            passes = all_reduce_max(score_passes(groups, micro_batch))
        score_groups(self.policy, groups, self.sep_mask, self.vocab_texts, self.tokenizer.pad_token_id, self.cfg.fci, micro_batch=micro_batch, passes=passes)
        return groups

    def update(self, samples: Sequence[PolicySample], seed: int, iteration: int, snapshot: bool = True) -> UpdateStats:
        """One PPO epoch; mutates the policy, so (`snapshot`) its first attempt of an iteration
        remembers weights + optimizer and a retry restores them first. A group keeps that state
        in the flow instead (snapshot=False)."""
        if snapshot:
            self._snapshot_or_restore(iteration)
        stats = self.trainer.update(samples, torch.Generator().manual_seed(seed))
        self._sync_engine()
        return stats

    def _sync_engine(self) -> None:
        """The engine samples the next batch from the current policy: a no-op for the hf engine
        sharing the trainer's model object; a vLLM server (or, under ZeRO-3, the hf engine's own
        copy) loads the weights, gathered from the ranks' slices under ZeRO-3 (a collective)."""
        self.engine.update_weights(self.trainer.weights() if self.partitioned else self.policy)

    def gradient(self, samples: Sequence[PolicySample]) -> dict[str, torch.Tensor]:
        return self.trainer.gradient(samples)

    def timing(self) -> dict[str, float]:
        """Nothing to split: one rank in the flow's process dispatches nothing (RankGroup.timing)."""
        return {}

    def state_dicts(self) -> tuple[dict, dict] | None:
        """(weights, optimizer state), world-size free. In a group every rank calls this (the
        ZeRO optimizer state is gathered from all of them); only rank 0 returns it."""
        weights, optimizer = self.trainer.weights(), self.trainer.state_dict()
        return (weights, optimizer) if data_parallel_rank()[0] == 0 else None

    def load_state_dicts(self, weights: dict, optimizer: dict) -> None:
        self.trainer.load_weights(weights)
        self.trainer.load_state_dict(copy.deepcopy(optimizer))
        self._sync_engine()

    def _snapshot_or_restore(self, iteration: int) -> None:
        if self._snapshot is not None and self._snapshot[0] == iteration:
            self.load_state_dicts(*self._snapshot[1])
            return
        weights = {k: v.detach().clone() for k, v in self.trainer.weights().items()}
        self._snapshot = (iteration, (weights, copy.deepcopy(self.trainer.state_dict())))

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class RankLost(RuntimeError):
    """A rank's process died during a call; the phase is retried on a rebuilt group."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _await_exit(pids: list[int], grace_s: float = 10.0) -> None:
    """Wait for the worker processes of killed actors on this node to end: ray.kill only asks,
    and a worker busy in a long call (or a collective whose peer is gone) can outlive the group
    by a while; past `grace_s` they get SIGKILL. (A remote node's workers are Ray's to end.)"""

    def alive(pid: int) -> bool:
        try:  # a zombie has ended (its parent, the raylet, reaps it); a reused pid is not a Ray worker
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z" and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + grace_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def rank_config(cfg: Config, rank: int) -> Config:
    """Rank `rank`'s copy of the run's config: a fixed vLLM server port moves up by the rank, so
    that the servers of ranks on one node do not collide (port 0, any free port, stays 0).

    >>> from attnrl_core.config import load_config
    >>> [rank_config(load_config(None, ["rollout.vllm.port=8100"]), r).rollout.vllm.port for r in range(3)]
    [8100, 8101, 8102]
    """
    port = cfg.rollout.vllm.port
    if not port or not rank:
        return cfg
    return cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"vllm": cfg.rollout.vllm.model_copy(update={"port": port + rank})})})


def gpus_per_rank(cfg: Config) -> int:
    """A rank's GPUs: its trainer's one, or its vLLM engine's tensor-parallel group (the server
    process inherits the actor's CUDA_VISIBLE_DEVICES; the trainer uses the first)."""
    return cfg.rollout.vllm.tensor_parallel_size if cfg.rollout.engine == "vllm" else 1


class RankActor:
    """The body of one rank's Ray actor (wrapped with ray.remote by RankGroup)."""

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the others to join the process group."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def process(self) -> tuple[str, int]:
        """(Ray node id, pid) of this actor's worker process: the group waits for it to end."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def setup(self, cfg_json: dict, base: str, rank: int, world: int, master: tuple[str, int], state: tuple[dict, dict] | None) -> None:
        import torch.distributed as dist

        cfg = rank_config(Config.model_validate(cfg_json), rank)
        gpu = cfg.model.device.startswith("cuda")
        # what torchrun would export: DeepSpeed reads these to find the existing group
        os.environ.update({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": str(world), "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1])})
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        dist.init_process_group("nccl" if gpu else "gloo", init_method=f"tcp://{master[0]}:{master[1]}", rank=rank, world_size=world, timeout=timedelta(seconds=600))
        weights, optimizer = state if state is not None else (None, None)
        self.rank = Rank(cfg, base, weights, optimizer)

    def call(self, method: str, args: tuple, die: bool = False) -> Any:
        """(`Rank.method(*args)`, the seconds it computed: its time less its collectives'); an
        ObjectRef among the args (one object shared by all ranks) is fetched first."""
        import ray

        if die:  # fault injection: this rank's process is lost mid-phase (its peers are working)
            os.kill(os.getpid(), signal.SIGKILL)
        args = tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args)
        start, waited = time.perf_counter(), collective_seconds()
        out = getattr(self.rank, method)(*args)
        return out, time.perf_counter() - start - (collective_seconds() - waited)  # (result, compute seconds)


class RankGroup:
    """N Ray actors, one Rank each, in one torch.distributed group; the flow's handle on them.

    `state` = (weights, optimizer) as of the last successful update: the group is built from it
    (at the start, and again after a lost rank), and checkpoints are written from it.
    """

    def __init__(self, cfg: Config, base: str, state: tuple[dict, dict] | None, faults: FaultInjector) -> None:
        self.cfg, self.base, self.faults = cfg, base, faults
        self.world = cfg.train.ranks
        self.actors: list | None = None
        self._pids: list[int] = []  # the actors' worker processes on this node
        self.state = state
        # (iteration, state) where the latest iteration's update started: a retry of that update
        # (after it succeeded on the ranks, e.g. failed in the flow) goes back to it
        self._before: tuple[int, tuple[dict, dict]] | None = None
        self.rebuilds = 0
        self._seconds = (0.0, 0.0)  # (compute, dispatch + communication) since the last timing()
        self._start()
        if self.state is None:  # the base weights and a fresh optimizer: what a rebuild starts from
            self.state = self._call("state_dicts", [()] * self.world)[0]

    # -- lifecycle --------------------------------------------------------------------------
    def _start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpu = self.cfg.model.device.startswith("cuda")
        bundle = {"GPU": gpus_per_rank(self.cfg), "CPU": 1} if gpu else {"CPU": 1}
        self._group = ray.util.placement_group([bundle] * self.world, strategy="PACK")
        # a busy cluster (a sweep's other trials) frees ranks in time: wait for them
        ready, _ = ray.wait([self._group.ready()], timeout=self.cfg.ray.placement_timeout_s)
        if not ready:
            ray.util.remove_placement_group(self._group)
            raise AttnRLError(
                f"train.ranks = {self.world}: the Ray cluster did not free {self.world} {'GPUs' if gpu else 'CPUs'} within "
                f"ray.placement_timeout_s = {self.cfg.ray.placement_timeout_s:g} s (free now: {ray.available_resources()})."
            )
        remote = ray.remote(RankActor)
        self.actors = [
            remote.options(
                num_cpus=1, num_gpus=gpus_per_rank(self.cfg) if gpu else 0, max_restarts=0, max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=r),
            ).remote()
            for r in range(self.world)
        ]  # fmt: skip
        here = ray.get_runtime_context().get_node_id()
        self._pids = [pid for node, pid in self._gather([a.process.remote() for a in self.actors]) if node == here]
        master = self._gather([self.actors[0].address.remote()])[0]
        state_ref = ray.put(self.state) if self.state is not None else None
        cfg_json = self.cfg.model_dump(mode="json")
        self._gather([a.setup.remote(cfg_json, self.base, r, self.world, master, state_ref) for r, a in enumerate(self.actors)])

    def _stop(self) -> None:
        import ray

        for actor in self.actors or []:
            ray.kill(actor, no_restart=True)
        if self.actors is not None:
            ray.util.remove_placement_group(self._group)
            _await_exit(self._pids)
        self.actors, self._pids = None, []

    def close(self) -> None:
        self._stop()

    def _ensure(self) -> None:
        """A group that lost a rank is rebuilt from `state` before the (retried) call."""
        if self.actors is None:
            self.rebuilds += 1
            self._start()

    def _gather(self, refs: list) -> list:
        """Results of calls on the ranks, in order; the first failure ends the whole group (its
        peers may wait on the lost one in a collective) and is raised: a dead rank as RankLost
        (retried), anything else as it was (a user error stays one)."""
        import ray
        from ray.exceptions import RayActorError

        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except RayActorError as exc:
                self._stop()
                raise RankLost(f"a trainer rank's process died ({type(exc).__name__}); the phase is retried on a rebuilt worker group") from None
            except BaseException:
                self._stop()
                raise
        return ray.get(refs)

    def _call(self, method: str, per_rank: list[tuple], phase: str | None = None, iteration: int | None = None) -> list:
        """`method(*per_rank[r])` on every rank with work, at once; results in rank order (None
        for a rank without work)."""
        self._ensure()
        start = time.perf_counter()
        doomed = self.faults.rank_to_kill(phase, iteration) if phase is not None else None
        calls = {r: self.actors[r].call.remote(method, args, die=r == doomed) for r, args in enumerate(per_rank) if args is not None}
        results = dict(zip(calls, self._gather(list(calls.values()))))
        # the slowest rank's compute is work; the rest of the call is dispatch + communication
        busy = max((seconds for _, seconds in results.values()), default=0.0)  # (no rank had work: 0)
        self._seconds = (self._seconds[0] + busy, self._seconds[1] + time.perf_counter() - start - busy)
        return [results[r][0] if r in results else None for r in range(self.world)]

    def timing(self) -> dict[str, float]:
        """Seconds since the last call: the ranks' compute (the slowest rank's, per call) and the
        rest of the group's calls (dispatch, transfers, collectives); logged per iteration."""
        busy, overhead = self._seconds
        self._seconds = (0.0, 0.0)
        return {"time/ranks_compute": busy, "time/ranks_dispatch_comm": overhead}

    # -- the calls of the phases --------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams, seed: int, max_new_tokens=None, n=None, prompt_index=None, phase: str | None = None, iteration: int | None = None) -> list[list[Generation]]:
        """RolloutEngine.generate over the ranks: each generates its share of the prompts,
        balanced by n x (prompt + budget) tokens, keyed by their places in the whole call."""
        budgets = resolve_budgets(prompts, params, max_new_tokens)
        counts = resolve_counts(prompts, params, n)
        keys = resolve_prompt_index(prompts, prompt_index)
        decoded = [1 if params.greedy else c for c in counts]
        shards = balanced_shards([d * (len(p) + b) for d, p, b in zip(decoded, prompts, budgets)], self.world)
        per_rank = [
            ([prompts[i] for i in shard], params, seed, [budgets[i] for i in shard], [counts[i] for i in shard], [keys[i] for i in shard]) if shard else None
            for shard in shards
        ]
        results: list[list[Generation]] = [[] for _ in prompts]
        for shard, out in zip(shards, self._call("generate", per_rank, phase, iteration)):
            for i, generations in zip(shard, out or []):
                results[i] = generations
        return results

    def score(self, groups: Sequence[PromptGroup], iteration: int | None = None) -> Sequence[PromptGroup]:
        """Each rank scores its share of the prompt groups (balanced by tokens); the scoring
        fields come back into the flow's own group objects."""
        shards = balanced_shards([sum(len(g.prompt_ids) + len(r.token_ids) for r in g.responses) for g in groups], self.world)
        # under ZeRO-3 a rank without groups still joins its peers' forward passes
        per_rank = [([groups[i] for i in shard],) if shard or self.cfg.train.partitions_parameters else None for shard in shards]
        for shard, out in zip(shards, self._call("score", per_rank, "score", iteration)):
            for i, scored in zip(shard, out or []):
                for mine, theirs in zip(groups[i].responses, scored.responses):
                    mine.step_spans, mine.token_logprobs = theirs.step_spans, theirs.token_logprobs
                    mine.token_entropy, mine.step_fci = theirs.token_entropy, theirs.step_fci
        return groups

    def update(self, samples: Sequence[PolicySample], seed: int, iteration: int) -> UpdateStats:
        """Every rank runs the same epoch on its share of each mini-batch; a retry of the same
        iteration first puts the state of before the first attempt back on the ranks."""
        import ray

        if self._before is not None and self._before[0] == iteration:  # a retry: back to where attempt one started
            self.state = self._before[1]
            if self.actors is not None:  # (a rebuilt group starts from self.state anyway)
                weights, optimizer = ray.put(self.state[0]), ray.put(self.state[1])
                self._call("load_state_dicts", [(weights, optimizer)] * self.world)
        self._before = (iteration, self.state)
        ref = ray.put(list(samples))
        stats = self._call("update", [(ref, seed, iteration, False)] * self.world, "update", iteration)[0]
        self.state = self._call("state_dicts", [()] * self.world)[0]
        return stats

    def gradient(self, samples: Sequence[PolicySample]) -> dict[str, torch.Tensor]:
        import ray

        ref = ray.put(list(samples))
        return self._call("gradient", [(ref,)] * self.world)[0]

    def state_dicts(self) -> tuple[dict, dict]:
        return self.state


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, naming ray.address, when nothing listens at the cluster's address ('auto':
    RAY_ADDRESS, else the cluster `ray start` last recorded on this machine; without either
    ray.init says so itself).

    >>> _probe("127.0.0.1:1")
    Traceback (most recent call last):
    ...
    attnrl_core.errors.AttnRLError: ray.address = '127.0.0.1:1': no Ray cluster could be reached there (nothing answered at 127.0.0.1:1: Connection refused). Start one with `ray start --head`, give its address, or set ray.address to null for a local Ray sized to train.ranks.
    """
    target = address
    if address == "auto":
        recorded = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
        target = os.environ.get("RAY_ADDRESS") or (recorded.read_text().strip() if recorded.is_file() else "")
        if not target:
            return
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        why = f"nothing answered at {target}: {exc.strerror or f'no reply within {timeout_s:g} s'}" if isinstance(exc, OSError) else f"{target!r} is not host:port"
        raise AttnRLError(
            f"ray.address = {address!r}: no Ray cluster could be reached there ({why}). Start one with `ray start --head`, "
            "give its address, or set ray.address to null for a local Ray sized to train.ranks."
        ) from None


# Set by a sweep that started a local Ray for its trials: worker processes' trials join it
# (their ray.address is null) instead of each starting a Ray of their own.
SWEEP_CLUSTER = "ATTNRL_RAY_CLUSTER"


@contextmanager
def ray_cluster(cfg: Config, whole_machine: bool = False) -> Iterator[None]:
    """The Ray cluster of a run with train.ranks > 1 for the duration of the block, checked up
    front to hold the ranks; a Ray this started locally ends with the block. One rank: nothing.

    ray.address null: a local Ray on 127.0.0.1 sized to the ranks (this machine must have that
    many CPUs, or GPUs when model.device is cuda) — or to the whole machine (`whole_machine`, a
    sweep's: its trials, in this process or its worker processes, share that one cluster and
    queue for free ranks in it); 'auto' / 'host:port': a running cluster. An unreachable
    address, or ranks beyond what the cluster has, fail here naming the field.
    """
    if cfg.train.ranks == 1:
        yield
        return
    import ray

    gpu = cfg.model.device.startswith("cuda")
    kind = "GPU" if gpu else "CPU"
    need = cfg.train.ranks * (gpus_per_rank(cfg) if gpu else 1)
    address = cfg.ray.address or os.environ.get(SWEEP_CLUSTER)
    started = False
    if not ray.is_initialized():
        if address is None:
            have = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
            if need > have:
                raise AttnRLError(
                    f"train.ranks = {cfg.train.ranks} needs {need} {kind}s, but this machine has {have} for a local Ray (ray.address: null): "
                    f"lower train.ranks (or rollout.vllm.tensor_parallel_size), or set ray.address to a cluster that has {need}."
                )
            size = have if whole_machine else need
            ray.init(
                address="local", num_cpus=size, num_gpus=size if gpu else 0, _node_ip_address="127.0.0.1",
                include_dashboard=False, log_to_driver=False, configure_logging=False,
            )  # fmt: skip
            started = True
        else:
            _probe(address)  # Ray itself retries an unreachable GCS for ever
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise AttnRLError(
                    f"ray.address = {address!r}: no Ray cluster could be reached there ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}). Start one with `ray start --head`, give its "
                    "address, or set ray.address to null for a local Ray sized to train.ranks."
                ) from None
    before = os.environ.get(SWEEP_CLUSTER)
    try:
        total = ray.cluster_resources().get(kind, 0)
        if need > total:
            raise AttnRLError(
                f"train.ranks = {cfg.train.ranks} needs {need} {kind}s, but the Ray cluster ({address or 'local'}) has {total:g} in all: "
                f"lower train.ranks or add nodes."
            )
        if whole_machine:  # the processes this one starts (a sweep's workers) join the same cluster
            os.environ[SWEEP_CLUSTER] = ray.get_runtime_context().gcs_address
        yield
    finally:
        if whole_machine:
            os.environ.pop(SWEEP_CLUSTER, None)
            if before is not None:
                os.environ[SWEEP_CLUSTER] = before
        if started:
            ray.shutdown()
