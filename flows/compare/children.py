"""Child processes of a suite: started in a process group of their own and killed by the kernel
if the parent dies (Linux parent-death signal), stopped as a group, each with its own thread count
and Prefect home, run K at a time by `run_pool`."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from flows import RUNS_DIR


# -- child processes --------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h
REPO_ROOT = Path(__file__).resolve().parents[2]


def _die_with_parent() -> Callable[[], None] | None:
    """The preexec_fn of a child: on Linux prctl(PR_SET_PDEATHSIG, SIGKILL), so the kernel kills
    the child when the parent dies, however it dies (kill -9 included); None elsewhere, where only
    the parent's own cleanup (stop_children) ends them. libc is loaded here, in the parent: the
    child calls one function between fork and exec and imports nothing."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed: go at once
            os._exit(1)

    return preexec


def start_child(cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """Start `cmd` with its output in `log_path` (appended), in a process group of its own (so
    its helpers, e.g. Prefect's temporary API server, can be stopped with it), killed by the
    kernel if this process dies (`_die_with_parent`).

    The parent-death signal fires when the THREAD that started the child ends, so children are
    started from the thread that waits for them (the suite's, the main thread under Prefect).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent()
        )


def exited(proc: subprocess.Popen) -> bool:
    """True once the child has exited, without reaping it: its pid (= its group id) stays ours
    until `reap`, so signalling the group cannot hit a stranger that got the pid."""
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap(proc: subprocess.Popen) -> int:
    """SIGKILL what is left of the child's process group (the helpers of a child that died
    abruptly), then collect the child's exit code."""
    _signal_group(proc, signal.SIGKILL)
    return proc.wait()


def stop_children(procs: Sequence[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM to each running child's group (a training run stops at its next phase boundary,
    KILLED, and its helpers stop: resumable next time), SIGKILL to whatever still runs after
    `grace_s` (its run stays RUNNING: resumable as well)."""
    for p in procs:
        if not exited(p):
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        while not exited(p) and time.monotonic() < deadline:
            time.sleep(0.1)
        reap(p)


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_env(threads: int, prefect_home: Path) -> dict:
    """A child's environment: `threads` intra-op threads for torch (OMP_NUM_THREADS, read when
    torch starts; MKL too), a Prefect home of its own (its temporary API server and database:
    killing one child cannot take down or share another's), the parent's Prefect API if one is
    configured (a real server sees every child's flow runs), this checkout on PYTHONPATH, and the
    same runs/ folder."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PREFECT_HOME"] = str(prefect_home)
    env["ATTNRL_HOME"] = str(RUNS_DIR)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if api.url and "PREFECT_API_URL" not in env:  # set in the parent's profile, which the new home lacks
        env["PREFECT_API_URL"] = str(api.url)
        if api.key:
            env["PREFECT_API_KEY"] = api.key.get_secret_value()
    return env


@dataclass
class ChildTask:
    """One command for the pool: its name (log and Prefect home are named after it)."""

    name: str
    what: str  # for the progress line: "train", "resume <run id>", "warm start"
    cmd: list[str]
    on_exit: Callable[[int, float], None]  # (exit code, seconds)


def run_pool(tasks: Sequence[ChildTask], workers: int, threads: int, home: Path, say: Callable[[str], None]) -> None:
    """Run the tasks' commands as children, `workers` at a time, each with `threads` threads and
    its own Prefect home under `home`/prefect (removed when it exits), its output in
    `home`/logs/<name>.log. Ctrl-C or SIGTERM here stops every child (stop_children) and raises;
    a kill -9 here kills them through their parent-death signal."""
    pending = list(tasks)[::-1]
    running: dict[subprocess.Popen, tuple[ChildTask, float, Path]] = {}
    on_term = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum, frame):
            raise SystemExit(128 + signum)

        on_term = signal.signal(signal.SIGTERM, terminate)
    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.pop()
                prefect_home = home / "prefect" / task.name
                shutil.rmtree(prefect_home, ignore_errors=True)  # left by a parent that was killed
                prefect_home.mkdir(parents=True)
                log = home / "logs" / f"{task.name}.log"
                proc = start_child(task.cmd, child_env(threads, prefect_home), log)
                running[proc] = (task, time.monotonic(), prefect_home)
                say(f"suite: {task.name}: {task.what} started (pid {proc.pid}, {threads} thread{'s' * (threads > 1)}; log {log})")
            for proc in [p for p in running if exited(p)]:
                task, started, prefect_home = running.pop(proc)
                code = reap(proc)
                shutil.rmtree(prefect_home, ignore_errors=True)
                task.on_exit(code, time.monotonic() - started)
            time.sleep(0.2)
    finally:
        stop_children(list(running))
        for task, _, prefect_home in running.values():
            shutil.rmtree(prefect_home, ignore_errors=True)
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
