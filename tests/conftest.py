"""Test-session environment: every store (Prefect, MLflow, caches, checkpoints) in a temp folder.

The variables are set at import time, before `flows` (which fills in defaults) or prefect /
mlflow are imported by any test module, so no test ever touches the project's runs/ folder.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="attnrl-tests-"))
os.environ["ATTNRL_HOME"] = str(_SESSION_HOME / "runs")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread in this process AND every subprocess a test starts: the tiny models gain
# nothing from a second thread, results stay bit-identical across processes (a kill -9 + resume
# run must equal the in-process reference), and nothing thrashes when the machine is busy.
os.environ["OMP_NUM_THREADS"] = "1"

from flows.reaper import carriers, guard  # noqa: E402  (after the environment above is set)
from tests.support import FIXTURE, parent_pid, start_prefect_server, wait_for_health  # noqa: E402

# Everything the tests start carries this session's owner token: the reaper ends it when pytest
# ends (however it ends), and the check below proves nothing was orphaned before that.
_TOKEN = guard()

# Under xdist (make test's parallel run) the flows of this worker, in process and in the CLI
# processes of its tests, share one Prefect API server (no background services), started now
# so that it comes up while the tests are collected: not a temporary server per process (~5 s
# each, ~11 s on a fresh Prefect home). PREFECT_API_URL must be set before prefect is imported.
# Alone (`make test-fast`, the Ray run) a process starts its temporary server on first use.
def _start_session_server(wait: bool):
    return start_prefect_server(_SESSION_HOME / "prefect-api", "--no-services", "--no-ui", wait=wait)


_PREFECT_SERVER: tuple | None = None
if os.environ.get("PYTEST_XDIST_WORKER"):
    _PREFECT_SERVER = _start_session_server(wait=False)
    os.environ["PREFECT_API_URL"] = _PREFECT_SERVER[1]


def _end(server) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except Exception:
        server.kill()
        server.wait()


@pytest.fixture(scope="session", autouse=True)
def _worker_prefect_server():
    """The worker's Prefect server (above): up before the first test, ended after the last."""
    if _PREFECT_SERVER is None:
        yield
        return
    server, url = _PREFECT_SERVER
    wait_for_health(url + "/health", server, "the pytest worker's Prefect server")
    yield
    _end(server)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


def pytest_unconfigure(config):
    """Leave no store behind in /tmp once the session is over: in every process that imported
    this file (each xdist worker, and the controller, whose home only Prefect's folder fills)."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_its_owner():
    """After the whole suite: no process a test started runs on with its parent gone (a killed
    CLI's Prefect server, a sweep worker, a UI...). Reapers of killed owners get a moment to finish."""
    yield
    deadline = time.monotonic() + 30
    while True:
        mine = set(carriers(_TOKEN)) | {os.getpid()}
        orphans = [pid for pid in mine if pid != os.getpid() and parent_pid(pid) not in mine and parent_pid(pid) != -1]
        if not orphans or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    described = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in orphans if Path(f"/proc/{pid}").exists()}
    assert not described, f"processes started by the tests outlived their parents: {described}"


@pytest.fixture(scope="session")
def base_uri(session_home):
    """The shared base policy (a checked-in fixture) and an MLflow store for session-wide use."""
    assert (FIXTURE / "model.safetensors").is_file(), "tests/fixtures/tiny_base is missing: run `make test-fixture`"
    return f"sqlite:///{session_home / 'base-mlflow.db'}"


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect API server for a test's CLI runs: each run that would start a temporary server
    of its own (~5 s; ~11 s on a fresh Prefect home, most of a reduced run) talks to this one
    instead — the worker's (above), or one of this session's. The SIGKILL lifecycle tests keep
    the temporary-server path (cli_env without it)."""
    if _PREFECT_SERVER is not None:
        yield _PREFECT_SERVER[1]
        return
    server, url = _start_session_server(wait=True)
    yield url
    _end(server)
