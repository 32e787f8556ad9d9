"""Wall time of one short `attnrl train` CLI process by where its Prefect API comes from.

    .venv/bin/python bench/cli_start.py              # 3 repeats of each side
    .venv/bin/python bench/cli_start.py --repeats 5

The same reduced run each time (tests/support.py's TRAIN_REDUCED: the checked-in tiny base,
3 iterations), a fresh MLflow store each time, three sides:
- fresh:    the run starts its own temporary Prefect server on a new, empty Prefect home (what a
            first `attnrl train` on a new machine does, and what each test CLI process did);
- migrated: its own temporary server, on a Prefect home whose database already exists (what
            every later `attnrl train` of a user does);
- shared:   PREFECT_API_URL names a running `prefect server start` (the test suite's
            `prefect_api` fixture; a user's own server).
Printed: the median seconds of each side and the ratios to `shared`. The rest of a process's
time is its imports (`import flows.train` ~5 s) and the run itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
HOME = Path(tempfile.mkdtemp(prefix="attnrl-bench-cli-"))
os.environ["ATTNRL_HOME"] = str(HOME / "runs")
os.environ["OMP_NUM_THREADS"] = "1"

from tests.support import sets, start_prefect_server  # noqa: E402


def one_run(env: dict) -> float:
    env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{tempfile.mkdtemp(dir=HOME)}/mlflow.db")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--quiet", *sets()], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"attnrl train failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    times: dict[str, list[float]] = {"fresh": [], "migrated": [], "shared": []}
    migrated = HOME / "prefect-migrated"
    one_run(dict(base, PREFECT_HOME=str(migrated)))  # creates its database (not timed)
    server, url = start_prefect_server(HOME / "prefect-server", "--no-services", "--no-ui")
    try:
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every side
            times["fresh"].append(one_run(dict(base, PREFECT_HOME=tempfile.mkdtemp(dir=HOME))))
            times["migrated"].append(one_run(dict(base, PREFECT_HOME=str(migrated))))
            times["shared"].append(one_run(dict(base, PREFECT_HOME=tempfile.mkdtemp(dir=HOME), PREFECT_API_URL=url)))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(HOME, ignore_errors=True)
    shared = statistics.median(times["shared"])
    print(f"one reduced `attnrl train` process, median of {args.repeats} (seconds):")
    for side, values in times.items():
        median = statistics.median(values)
        print(f"  {side:9s} {median:6.1f}   {median / shared:4.2f}x shared   runs: {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
