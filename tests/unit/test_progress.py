"""A training's and an evaluation's progress when stderr is no terminal: one plain line per event."""

import re

from flows.progress import EvalProgress, TrainProgress


def test_without_a_terminal_progress_is_plain_timestamped_lines(capsys):
    with EvalProgress(quiet=False) as progress:
        progress("gsm8k", 0, 100, 0)  # a set starts: nothing to say yet
        progress("gsm8k", 64, 100, 5000)
    with TrainProgress(quiet=False, total=12, start=2) as train:
        train.phase("rollout")
        train.evaluating("heldout", 0, 1000, 0)
        train.evaluating("heldout", 256, 1000, 9000)
        train.evaluated(0.4521)
        train.done(3, {"train/reward": 0.19, "batch/valid_token_ratio": 0.4123})
        train.done(4, {})
    lines = capsys.readouterr().err.strip().splitlines()
    expected = [
        r"gsm8k: 64/100 problems, \d+ tok/s",  # nothing for a set's start (0 done)
        r"eval heldout: 256/1000 problems, \d+ tok/s",
        r"evaluation: objective 45\.2%",
        r"iteration 3/12: reward 0\.19, valid tokens 0\.41",
        r"iteration 4/12: reward -, valid tokens -",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(r"\[00:00:0\d\] " + pattern, line), line


def test_quiet_prints_nothing(capsys):
    with TrainProgress(quiet=True, total=2, start=0) as train:
        train.done(1, {"train/reward": 0.5})
    with EvalProgress(quiet=True) as progress:
        progress("heldout", 8, 8, 100)
    assert capsys.readouterr().err == ""
