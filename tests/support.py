"""Shared test data and helpers (plain functions and constants; the fixtures are in conftest.py).

The integration and end-to-end tests train from one checked-in base policy (FIXTURE) on a
reduced copy of the tiny default (TRAIN_REDUCED), each with its own MLflow store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import torch

from attnrl_core.config import load_config

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

# A reduced tiny world for warm-start tests: a few warm-start steps on a narrow model, a small
# held-out set. It exercises every code path of the default, in seconds.
REDUCED = [
    "model.tiny.num_layers=2",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "warmstart.steps=30",
    "warmstart.batch_size=16",
    "data.heldout_size=40",
    "eval.max_new_tokens=48",
]

# The integration tests start from tests/fixtures/tiny_base: the default (flawed) tiny base made
# by the warm-start flow (`make test-fixture` rebuilds it). Its accuracy is mixed (40.0% greedy:
# ~85% on level 1, ~1% on levels 3-4), so trees have mixed leaves and every phase does real work.
FIXTURE = REPO / "tests" / "fixtures" / "tiny_base"
TRAIN_REDUCED = [
    "name=train-test",
    f"model.path={FIXTURE}",
    "data.heldout_size=16",
    "data.max_response_tokens=96",
    "eval.max_new_tokens=96",
    "batch.prompts=4",
    "batch.min_prompts=2",
    "batch.max_prompts=8",
    "batch.target_sequences=24",
    "rollout.group_size=4",
    "branch.min_token_offset=4",
    "branch.min_token_gap=2",
    "optim.minibatch_sequences=32",
    "optim.lr=1.0e-4",
    "train.iterations=3",
    "train.eval_every=2",
    "train.checkpoint_every=1",
    "train.retry_delay_s=0",
    # a verdict must not depend on how busy the machine is: runs compared bit for bit must not
    # see a fallback time out in one and not the other
    "verify.timeout_s=60",
]


CONFIG = str(REPO / "experiments/tiny.yaml")


def cfg_json(*extra: str) -> dict:
    return load_config(CONFIG, TRAIN_REDUCED + list(extra)).model_dump(mode="json")


def train(uri: str, *extra: str, **kwargs) -> dict:
    from flows.train import train_flow

    return train_flow(CONFIG, TRAIN_REDUCED + list(extra), tracking_uri=uri, quiet=True, **kwargs)


def _session_home() -> Path:
    """This test process's temporary folder (conftest.py sets ATTNRL_HOME inside it; it is
    removed when the session ends)."""
    return Path(os.environ["ATTNRL_HOME"]).parent


def mlflow_store(folder: Path) -> str:
    """The tracking URI of a new, empty MLflow SQLite store in `folder`: a copy of one made once
    per test process (creating MLflow's tables takes ~1 s a store, a few per test)."""
    template = _session_home() / "mlflow-empty.db"
    if not template.is_file():
        mlflow.MlflowClient(f"sqlite:///{template}.new").search_experiments()
        os.replace(f"{template}.new", template)
    shutil.copyfile(template, Path(folder) / "mlflow.db")
    return f"sqlite:///{Path(folder) / 'mlflow.db'}"


def run_metrics(uri: str, run_id: str) -> dict[tuple[str, int], float]:
    """Every (metric, step) -> value of a run, timing metrics excluded (they measure the machine)."""
    client = mlflow.MlflowClient(uri)
    out = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith(("time/", "progress/wall_s", "throughput/tokens_per_s")):
            continue
        for m in client.get_metric_history(run_id, key):
            assert (key, m.step) not in out, f"metric {key} logged twice at step {m.step}"
            out[(key, m.step)] = m.value
    return out


def final_weights(result: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(result["final_policy"]) / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True, env=env, **kw)


def cli_env(uri: str, prefect_api: str | None = None) -> dict:
    """The environment of a CLI subprocess: its MLflow store, and either a Prefect API server of
    this session's (`prefect_api`, the `prefect_api` fixture: the run starts no server of its
    own, as with any PREFECT_API_URL) or, without one, a Prefect home of its own, in which the
    run starts its own temporary server like `attnrl train` on a fresh machine (a subprocess we
    SIGKILL must not take down, or share, the temporary server of this test process)."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = uri
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cli-prefect-", dir=_session_home())
    env.pop("PREFECT_API_URL", None)  # (the worker's own, under xdist)
    if prefect_api is not None:
        env["PREFECT_API_URL"] = prefect_api
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 120.0) -> None:
    """Until GET `url` answers 200; fails (ending `proc`) if `proc` dies or time runs out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"{what} did not come up on 127.0.0.1")
        time.sleep(0.25)


def start_prefect_server(home: Path, *flags: str, wait: bool = True) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port of 127.0.0.1 with its own home; returns the process
    and its API URL once /health answers (at once with wait=False: wait_for_health later)."""
    env = dict(os.environ, PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    port = free_port()
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), *flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    if wait:
        wait_for_health(url + "/health", server, "the Prefect server")
    return server, url


def sets(*extra: str) -> list[str]:
    out = []
    for item in TRAIN_REDUCED + list(extra):
        out += ["--set", item]
    return out


def parent_pid(pid: int | str) -> int:
    """The parent of process `pid` (-1 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def owner_token(pid: int, timeout_s: float = 120.0) -> str:
    """The owner token of the CLI process `pid`: the argument of the reaper it started (the
    owner's own /proc environ is the one it was started with, before it added the token)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            if parent_pid(proc.name) != pid:
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"flows/reaper.py") for a in argv):
                return argv[argv.index(next(a for a in argv if a.endswith(b"flows/reaper.py"))) + 1].decode()
        time.sleep(0.2)
    raise AssertionError(f"process {pid} started no reaper")
