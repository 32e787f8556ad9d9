"""Bad input to `attnrl eval` / `attnrl train`: a benchmark file with a malformed row, a model folder
without weights, a model whose tokenizer disagrees with it, a missing benchmark file, more trainer ranks
than the machine has, an unreachable Ray cluster: each exits 2 with one paragraph naming the file
and line or the field, before anything is written."""

import json
import shutil

import pytest

from tests.support import FIXTURE, cli, cli_env


@pytest.fixture
def bad(tmp_path):
    rows = tmp_path / "bench.jsonl"
    rows.write_text('{"problem": "What is 1+1?", "answer": "2"}\n\n{"problem": "What is 2+2?"}\n')
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(FIXTURE / "config.json", no_weights)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(FIXTURE, mismatch)
    config = json.loads((mismatch / "config.json").read_text())
    (mismatch / "config.json").write_text(json.dumps({**config, "vocab_size": 50}))  # the tokenizer has 106 tokens
    return rows, no_weights, mismatch


def test_each_bad_input_exits_2_naming_it_and_writes_nothing(bad, tmp_path, monkeypatch):
    """The first case as a fresh CLI process (exit status, stderr, no traceback); the rest in
    process through the same Typer app (a process each would only repeat its ~4 s of imports)."""
    from typer.testing import CliRunner

    from flows.cli import app

    rows, no_weights, mismatch = bad
    store = tmp_path / "mlflow.db"
    env = cli_env(f"sqlite:///{store}")  # every case fails before Prefect starts
    first, *rest = [
        (["eval", "--model", str(FIXTURE), "--benchmark", str(rows)], [str(rows), "line 3", "missing field 'answer'"]),
        (["eval", "--model", str(no_weights)], ["model.path", "no weights"]),
        (["eval", "--model", str(mismatch)], ["model.path", "disagree", "vocab_size is 50"]),
        (["eval", "--model", str(FIXTURE), "--benchmark", str(tmp_path / "nowhere.jsonl")], ["eval.benchmarks[0].source", "no such file"]),
        (["train", "--set", f"model.path={mismatch}"], ["model.path", "disagree"]),
        (["train", "--set", f"eval.benchmarks=[heldout, {rows}]"], [str(rows), "line 3"]),
    ]
    args, words = first
    done = cli(*args, "--quiet", env=env, timeout=300)
    assert done.returncode == 2, (args, done.stderr[-2000:])
    assert all(w in " ".join(done.stderr.split()) for w in words), (args, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    for args, words in rest:
        done = CliRunner().invoke(app, [*args, "--quiet"])
        assert done.exit_code == 2, (args, done.output[-2000:])
        message = " ".join(done.stderr.split())
        assert all(w in message for w in words), (args, message)
        assert done.exception is None or isinstance(done.exception, SystemExit), (args, done.exception)
    assert not store.exists()  # nothing was written before the input was checked


@pytest.mark.parametrize(
    "sets, words",
    [
        (["train.ranks=512"], ["train.ranks = 512 needs 512 CPUs", "for a local Ray"]),
        (["train.ranks=2", "ray.address=127.0.0.1:1"], ["ray.address = '127.0.0.1:1'", "no Ray cluster could be reached"]),
    ],
    ids=["more-ranks-than-cpus", "unreachable-cluster"],
)
def test_where_a_multi_rank_run_cannot_go_exits_2_before_prefect_starts(tmp_path, monkeypatch, sets, words):
    """Checked by the CLI before the flow (and its Prefect server) starts; in process, since no
    flow runs (a Ray cluster this process already had would be joined instead: none here)."""
    import ray
    from typer.testing import CliRunner

    from flows.cli import app

    assert not ray.is_initialized()
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    args = ["train", "--quiet", "--set", f"model.path={FIXTURE}"] + [a for s in sets for a in ("--set", s)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2, done.output[-2000:]
    message = " ".join(done.output.split())
    assert all(w in message for w in words), message
    assert not store.exists() and not ray.is_initialized()
