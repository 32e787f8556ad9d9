"""Iteration and phase times of the training flow on 1 and 2 trainer ranks (one thread each).

    .venv/bin/python bench/ranks.py                     # experiments/tiny.yaml from the tiny base, 6 iterations
    .venv/bin/python bench/ranks.py --iterations 8 --set batch.prompts=32

Both sides run the real flow in this process (Prefect, MLflow on a temporary store) from the
checked-in tiny base (tests/fixtures/tiny_base) with the tiny default's batch (16 prompts x 6
responses, adaptive towards 128 sequences, branching on): generation and the update dominate.
With 2 ranks the flow starts a local Ray on 127.0.0.1 and a worker group of 2 actors (gloo).
Iteration 1 of the one-step pipeline only primes and the last one evaluates, so medians are
over iterations 2..N-1. Printed per phase: median seconds on 1 and 2 ranks and the speed-up;
for 2 ranks, the share of the iteration the group spent on dispatch + communication (each
call's time less the slowest rank's compute: Ray dispatch, object transfers, the state fetch
after each update, gloo all-reduces; time/ranks_dispatch_comm).

Targets (issue 11): 2 ranks >= 1.6x faster per iteration, dispatch + communication <= 10%.
The two cores of this machine are the two ranks: run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"  # one thread per rank, and in the 1-rank flow process
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
HOME = tempfile.mkdtemp(prefix="attnrl-bench-ranks-")
os.environ["ATTNRL_HOME"] = os.path.join(HOME, "runs")
os.environ["PREFECT_HOME"] = os.path.join(HOME, "prefect")

import mlflow  # noqa: E402
import torch  # noqa: E402

PHASES = ("rollout", "score", "branch", "update")


def run(ranks: int, iterations: int, overrides: list[str]) -> dict[str, list[float]]:
    """Per-iteration time/ metrics of one run on `ranks` ranks (iterations 2..N-1)."""
    from flows.train import train_flow

    uri = f"sqlite:///{HOME}/mlflow-{ranks}.db"
    sets = [
        f"model.path={REPO}/tests/fixtures/tiny_base", f"train.ranks={ranks}", f"train.iterations={iterations}",
        f"train.eval_every={iterations}", f"train.checkpoint_every={iterations}", "train.eval_before=false",
        "data.heldout_size=16", *overrides,
    ]  # fmt: skip
    result = train_flow(f"{REPO}/experiments/tiny.yaml", sets, tracking_uri=uri, quiet=True)
    client = mlflow.MlflowClient(uri)
    keys = ["iteration", *PHASES, "ranks_dispatch_comm", "ranks_compute"]
    out: dict[str, list[float]] = {}
    for key in keys:
        history = {m.step: m.value for m in client.get_metric_history(result["run_id"], f"time/{key}")}
        out[key] = [history[step] for step in range(2, iterations) if step in history]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    one = run(1, args.iterations, args.overrides)
    two = run(2, args.iterations, args.overrides)
    med = {k: (statistics.median(one[k]) if one[k] else 0.0, statistics.median(two[k]) if two[k] else 0.0) for k in one}
    print(f"median seconds over iterations 2..{args.iterations - 1} (tiny default batch, one thread per rank)")
    print(f"{'':<22}{'1 rank':>9}{'2 ranks':>9}{'speed-up':>10}")
    for key in ("iteration", *PHASES):
        a, b = med[key]
        print(f"{key:<22}{a:>9.2f}{b:>9.2f}{a / b if b else float('nan'):>9.2f}x")
    shares = [d / i for d, i in zip(two["ranks_dispatch_comm"], two["iteration"])]
    print(f"{'2 ranks: compute':<22}{'':>9}{med['ranks_compute'][1]:>9.2f}")
    print(f"{'2 ranks: dispatch+comm':<22}{'':>9}{med['ranks_dispatch_comm'][1]:>9.2f}   {100 * statistics.median(shares):.1f}% of the iteration (median)")
    print(f"targets: speed-up >= 1.6x (measured {med['iteration'][0] / med['iteration'][1]:.2f}x), dispatch+comm <= 10% (measured {100 * statistics.median(shares):.1f}%)")


if __name__ == "__main__":
    main()
