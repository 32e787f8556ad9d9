"""What a running training or evaluation shows: a progress bar on a terminal, plain lines elsewhere.

On a terminal rich draws a live bar. When stderr is a file or a pipe (a job's log, `nohup`, a
Ray cluster's driver output) a live bar would print nothing until the end, so the same events
become one timestamped line each instead, e.g.

    [00:04:12] gsm8k: 64/100 problems, 31 tok/s
    [00:31:40] iteration 3/12: reward 0.19, valid tokens 0.41
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Display:
    """A rich Progress on a terminal; otherwise `line()` writes plain timestamped lines to stderr."""

    def __init__(self, quiet: bool, *columns) -> None:
        console = Console(stderr=True)
        self.lines = not quiet and not console.is_terminal
        self.bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet or self.lines, console=console)
        self.started = time.perf_counter()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def line(self, text: str) -> None:
        if self.lines:
            elapsed = int(time.perf_counter() - self.started)
            print(f"[{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {text}", file=sys.stderr, flush=True)


class EvalProgress(_Display):
    """One progress bar per benchmark set: problems done of the set, tokens generated per second.
    Its instances are the `progress` hook of tasks.evaluate.evaluate_policy."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(quiet, TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TextColumn("problems  {task.fields[rate]} tok/s"))
        self.tasks: dict[str, tuple[int, float]] = {}

    def __call__(self, name: str, done: int, total: int, tokens: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = (self.bar.add_task(name, total=total, rate="-"), time.perf_counter())
        task, start = self.tasks[name]
        rate = f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}"
        self.bar.update(task, completed=done, rate=rate)
        if done:
            self.line(f"{name}: {done}/{total} problems, {rate} tok/s")


class TrainProgress(_Display):
    """The progress bar of a run: iterations done, the running phase, reward, valid tokens, eval.
    Every phase boundary it reports is a safe point to stop at (`safe_point`)."""

    def __init__(self, quiet: bool, total: int, start: int, safe_point: Callable[[], None] = lambda: None) -> None:
        super().__init__(
            quiet, TextColumn("[bold]iter"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[phase]:<10} reward {task.fields[reward]} valid-tok {task.fields[valid]} eval {task.fields[acc]}"),
        )  # fmt: skip
        self.safe_point = safe_point
        self.total = total
        self.task = self.bar.add_task("train", total=total, completed=start, phase="", reward="-", valid="-", acc="-")

    def phase(self, name: str) -> None:
        self.safe_point()
        self.bar.update(self.task, phase=name)

    def evaluating(self, name: str, done: int, total: int, tokens: int) -> None:
        """Hook of an evaluation: the phase column shows the set, problems done and tokens/s."""
        if done == 0:  # a set starts
            self._eval_start = time.perf_counter()
        rate = tokens / max(time.perf_counter() - getattr(self, "_eval_start", time.perf_counter()), 1e-9)
        self.bar.update(self.task, phase=f"eval {name} {done}/{total} {rate:.0f} tok/s")
        if done:
            self.line(f"eval {name}: {done}/{total} problems, {rate:.0f} tok/s")

    def evaluated(self, accuracy: float) -> None:
        self.bar.update(self.task, acc=f"{100 * accuracy:.1f}%")
        self.line(f"evaluation: objective {100 * accuracy:.1f}%")

    def done(self, it: int, metrics: dict[str, float]) -> None:
        # the first iteration of the one-step off-policy pipeline only samples: no reward yet
        reward, valid = (f"{metrics[k]:.2f}" if k in metrics else "-" for k in ("train/reward", "batch/valid_token_ratio"))
        self.bar.update(self.task, completed=it, phase="", reward=reward, valid=valid)
        self.line(f"iteration {it}/{self.total}: reward {reward}, valid tokens {valid}")
