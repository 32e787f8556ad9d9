"""Integration: data-parallel training on a Ray worker group of 2 CPU ranks (gloo), with real Ray,
Prefect and MLflow: sharding is invisible in the results, a lost rank is survived, checkpoints
move between world sizes, and no rank outlives its run.

One local Ray cluster on 127.0.0.1 serves the whole module (the flows join it instead of
starting their own). `make test` runs the module (marker `ray`) on its own, after the rest.
"""

import os
from pathlib import Path

import mlflow
import pytest

from attnrl_core.config import load_config
from flows.train import train_flow
from tasks.branch import branch
from tasks.rollout import rollout
from tasks.score import score
from tasks.session import TrainSession
from tests.support import CONFIG, FIXTURE, TRAIN_REDUCED, assert_same_weights, final_weights, mlflow_store, parent_pid, run_metrics, train

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TWO = "train.ranks=2"


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def rank_processes() -> list[str]:
    """This test process's live rank actors, as "pid cmdline": Ray titles a worker process
    after the actor it runs (ray::RankActor...). Only descendants of this process (its Ray's
    raylet starts the workers) count: a CLI test on the other pytest worker may be running a
    2-rank run of its own right now."""
    me, found = os.getpid(), []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (cmdline := (proc / "cmdline").read_bytes()).startswith(b"ray::RankActor"):
                pid = int(proc.name)
                while pid not in (me, -1, 0, 1):
                    pid = parent_pid(pid)
                if pid == me:
                    found.append(f"{proc.name} {cmdline.rstrip(bytes(1)).decode(errors='replace')}")
        except OSError:
            pass
    return found


def no_rank_left() -> bool:
    """The group waits for its actors' processes to end when it closes (or ends them): allow
    only a moment for the kernel."""
    import time

    deadline = time.monotonic() + 3
    while rank_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rank_processes() == [], f"rank actors outlived their group: {rank_processes()}"
    return True


def first_iteration(ranks: int) -> tuple[TrainSession, list]:
    """A session on `ranks` ranks after iteration 1's rollout, scoring and branching (on-policy,
    so the continuations are sampled in this iteration too); returns it and the training batch."""
    cfg = load_config(CONFIG, TRAIN_REDUCED + ["pipeline=on_policy", f"train.ranks={ranks}"])
    s = TrainSession(cfg, str(FIXTURE), "ranks-test")
    rolled = rollout.fn(s, 1)
    score.fn(s, 1, rolled)
    plan = branch.fn(s, 1, rolled)
    return s, rolled.current, plan.batch.samples


def tokens(groups) -> list:
    """Every sampled token of a batch: each response, its branch points, its continuations."""
    return [
        [(r.token_ids, r.branch_points, [[c.token_ids for c in point] for point in r.continuations]) for r in g.responses]
        for g in groups
    ]


def test_two_ranks_sample_the_one_rank_tokens_and_sum_its_gradient():
    one, one_groups, samples = first_iteration(1)
    two, two_groups, _ = first_iteration(2)
    try:
        assert tokens(two_groups) == tokens(one_groups)
        assert sum(len(r.continuations) for g in one_groups for r in g.responses) > 0, "the batch should have branched"
        # the same mini-batch through both: each of 2 ranks takes a token-balanced share, the
        # divisor is the whole mini-batch's tokens, the all-reduce sums the shares
        g1, g2 = one.ranks.gradient(samples), two.ranks.gradient(samples)
        assert g1.keys() == g2.keys() and g1
        worst = max((g1[k] - g2[k]).abs().max().item() for k in g1)
        assert worst <= 1e-5, f"the 2-rank gradient differs from the 1-rank one by up to {worst:.2e}"
        assert max(g.abs().max().item() for g in g1.values()) > 1e-3, "a vanishing gradient would compare equal trivially"
    finally:
        one.close()
        two.close()
    assert no_rank_left()


@pytest.fixture(scope="module")
def clean_two(tmp_path_factory):
    """An uninterrupted 2-rank run: (its store, its result)."""
    uri = mlflow_store(tmp_path_factory.mktemp('two'))
    result = train(uri, TWO)
    assert result["rank_rebuilds"] == 0
    assert no_rank_left(), "a finished run ends its rank actors"
    return uri, result


@pytest.mark.parametrize("fault", ["rollout@2:kill-rank1", "update@2:kill-rank1,update@3"])
def test_a_rank_killed_mid_run_is_survived_and_changes_nothing(clean_two, fault):
    """Rank 1's process SIGKILLs itself in the phase's first attempt while rank 0 works (and
    update@3 fails in the flow after the ranks have updated: its retry must start again from
    the weights before). The run is also a second 2-rank run of the same seed: it must end
    where the uninterrupted one did, bit for bit (gloo sums two shares in a fixed order)."""
    uri, clean = clean_two
    faulted = train(uri, TWO, f"train.fault={fault}")
    assert faulted["rank_rebuilds"] == 1, f"{fault}: the lost rank should have had its group rebuilt once"
    assert mlflow.MlflowClient(uri).get_run(faulted["run_id"]).data.tags["rank_rebuilds"] == "1"
    assert_same_weights(final_weights(clean), final_weights(faulted))
    assert run_metrics(uri, clean["run_id"]) == run_metrics(uri, faulted["run_id"])
    assert no_rank_left()


DEEPSPEED = ["train.backend=deepspeed", "train.zero_stage=2"]
ZERO3 = ["train.backend=deepspeed", "train.zero_stage=3"]


@pytest.mark.parametrize("backend, fault", [(DEEPSPEED, "update@2:kill-rank1,update@3"), (ZERO3, "score@2:kill-rank1,update@3")], ids=["zero2", "zero3"])
def test_deepspeed_across_ranks_survives_a_lost_rank_and_equals_the_torch_update(clean_two, backend, fault):
    """ZeRO-2 on 2 ranks: optimizer state and gradients partitioned, every backward pass
    reduce-scattered (ranks with fewer passes run empty ones); rank 1 dies in an update.
    ZeRO-3: parameters partitioned too, so scoring and the update's forwards gather each layer
    from the peer (both ranks run as many passes) and the hf engine samples from a copy
    refreshed with the gathered weights; rank 1 dies while scoring. A lost rank's group is
    rebuilt from the consolidated state, and update@3's retry puts it back into both ranks
    (ZeRO-3: into their slices). Both end where the torch update does."""
    uri, clean = clean_two
    faulted = train(uri, TWO, *backend, f"train.fault={fault}")
    assert faulted["rank_rebuilds"] == 1
    reference, ds = final_weights(clean), final_weights(faulted)
    worst = max((reference[k] - ds[k]).abs().max().item() for k in reference)
    assert worst <= 1e-5, f"DeepSpeed {backend} on 2 ranks drifts from the torch update by {worst:.2e}"
    assert no_rank_left()


@pytest.mark.parametrize(
    "before, after, backend", [(2, 1, []), (1, 2, []), (2, 1, DEEPSPEED), (1, 2, ZERO3)], ids=["2-1", "1-2", "2-1-zero2", "1-2-zero3"]
)
def test_resume_on_another_number_of_ranks_continues_the_same_run(clean_two, tmp_path, monkeypatch, before, after, backend):
    uri = mlflow_store(tmp_path)
    name = f"moved-{before}-{after}"
    monkeypatch.setenv("ATTNRL_FAULT", "update@3")  # with no retries the run fails after iteration 2's checkpoint
    with pytest.raises(Exception, match="injected fault"):
        train(uri, f"train.ranks={before}", "train.retries=0", *backend, run_name=name)
    monkeypatch.delenv("ATTNRL_FAULT")
    assert no_rank_left(), "a failed run ends its rank actors"
    client = mlflow.MlflowClient(uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("train-test").experiment_id])
    assert failed.info.status == "FAILED"
    resumed = train_flow(None, [f"train.ranks={after}"], tracking_uri=uri, resume=name, quiet=True)
    assert resumed["run_id"] == failed.info.run_id
    assert client.get_run(resumed["run_id"]).info.status == "FINISHED"
    assert {step for (key, step) in run_metrics(uri, resumed["run_id"]) if key == "progress/iteration"} == {1, 2, 3}
    # against the uninterrupted 2-rank run (= the 1-rank run up to the float rounding of a sum
    # taken in two shares instead of one)
    reference, moved = final_weights(clean_two[1]), final_weights(resumed)
    worst = max((reference[k] - moved[k]).abs().max().item() for k in reference)
    assert worst <= 1e-4, f"{before} -> {after} ranks: the weights drift from the uninterrupted run by {worst:.2e}"
    assert no_rank_left()


def test_a_sweep_of_two_rank_trials_queues_them_on_one_cluster(tmp_path):
    """Two worker processes, each trial 2 ranks, a 2-CPU cluster: the workers join the sweep's
    cluster (this module's) rather than each starting one, so the second trial waits for the
    first one's ranks — their training does not overlap — and both complete."""
    from flows.sweep import sweep_flow
    from tests.integration.test_sweep import TRIAL, write_sweep

    uri = mlflow_store(tmp_path)
    path = write_sweep(tmp_path / "ranks.yaml", n_trials=2)
    result = sweep_flow(str(path), TRIAL + [TWO], n_trials=2, workers=2, storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=uri)
    assert [t["state"] for t in result["trials"]] == ["COMPLETE", "COMPLETE"]
    client = mlflow.MlflowClient(uri)
    spans = []
    for trial in result["trials"]:
        stamps = [m.timestamp for key in ("progress/iteration", "eval/heldout/avg_at_1") for m in client.get_metric_history(trial["mlflow_run_id"], key)]
        spans.append((min(stamps), max(stamps)))
    (first_start, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, f"the two 2-rank trials trained at the same time on 2 CPUs: {spans}"
    assert no_rank_left()
