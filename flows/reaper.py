"""Every process the platform starts ends with its owner — also when the owner is killed with SIGKILL.

An owner (a CLI command) calls `guard()` once. That puts a fresh token into the environment
variable ATTNRL_OWNERS, which every process started from then on inherits however deep it sits:
Prefect's temporary API server, sweep workers, `mlflow ui` with its uvicorn and job consumers, a
vLLM server, the verifier's worker pool. It also starts this file as a small reaper process that
blocks on a pipe from the owner. When the owner ends — returns, raises, or is killed by SIGKILL,
which no handler can see — the kernel closes the pipe; the reaper then sends SIGTERM to every
process whose environment carries the token, waits `grace_s`, sends SIGKILL to the ones still
there, and exits.

Why this and not the alternatives: the kernel's parent-death signal only reaches a direct child
that asked for it (Prefect starts its server itself, and grandchildren are out of reach), and a
process group is lost as soon as a child makes its own session; an inherited environment
variable reaches them all, and /proc tells who carries it. Tokens nest: a sweep worker started
by `attnrl sweep` adds its own token to its parent's, so either owner's death ends it.

Run as a script (`python flows/reaper.py TOKEN GRACE_S`): it imports nothing of the platform.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

VARIABLE = "ATTNRL_OWNERS"


def carriers(token: str, exclude: tuple[int, ...] = ()) -> list[int]:
    """PIDs of the live processes whose environment lists `token` in ATTNRL_OWNERS."""
    found = []
    needle = f"{VARIABLE}=".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                entries = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":  # a zombie is gone, only unreaped
                    continue
        except OSError:  # exited meanwhile, or not ours to read
            continue
        for entry in entries:
            if entry.startswith(needle) and token.encode() in entry[len(needle) :].split(b","):
                found.append(int(name))
                break
    return found


def end_all(token: str, grace_s: float, exclude: tuple[int, ...] = ()) -> list[int]:
    """SIGTERM every carrier of `token`, SIGKILL whoever is left after `grace_s`; returns them."""
    ended = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        targets = carriers(token, exclude)
        ended += [pid for pid in targets if pid not in ended]
        for pid in targets:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while targets and time.monotonic() < deadline:
            time.sleep(0.05)
            targets = carriers(token, exclude)
        if not targets:
            break
    return ended


def guard(grace_s: float = 5.0) -> str:
    """Make this process the owner of everything it starts from now on; returns its token."""
    token = uuid.uuid4().hex[:16]
    inherited = [t for t in os.environ.get(VARIABLE, "").split(",") if t]
    os.environ[VARIABLE] = ",".join(inherited + [token])
    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-S", os.path.abspath(__file__), token, str(grace_s)],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a group kill aimed at the owner must not take the reaper with it
        close_fds=True,
    )
    os.close(read_end)
    os.set_inheritable(write_end, False)  # only the owner holds the pipe open
    _OWNED.append(write_end)  # kept open for the process's whole life
    return token


_OWNED: list[int] = []


class Preempted(BaseException):
    """The owner was asked to stop by SIGTERM (what Slurm, Kubernetes and Prefect workers send
    before SIGKILL) and stopped at a safe point. A BaseException, so that no retry and no
    `except Exception` swallows it; the CLI exits with 128 + SIGTERM = 143."""


def _main(token: str, grace_s: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a SIGTERM for the owner's group must not stop the cleanup
    while sys.stdin.buffer.read(4096):  # EOF = the owner is gone
        pass
    end_all(token, grace_s, exclude=(os.getpid(),))


if __name__ == "__main__":
    _main(sys.argv[1], float(sys.argv[2]))
