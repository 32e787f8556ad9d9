"""End to end: the commands that only read (help, config, the run list, a missing run) answer from a
fresh process without loading the stack they do not need.

Each command runs in its own interpreter, which then reports its exit code and which of the heavy
packages it imported. The assertions are on those imports, never on wall time: what keeps
`attnrl --help` instant is that it loads neither torch nor Prefect, and that holds on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

HEAVY = ("prefect", "torch", "transformers", "mlflow", "deepspeed")

# Runs the CLI the way the `attnrl` script does (flows.cli:app), then writes what it imported.
PROBE = """
import json, sys
argv, report = sys.argv[1:-1], sys.argv[-1]
from flows.cli import app
try:
    app(argv, prog_name="attnrl")
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
with open(report, "w") as fh:
    json.dump({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))}, fh)
sys.exit(code)
"""


def attnrl(tmp_path: Path, *args: str, uri: str | None = None) -> tuple[int, str, str, set[str]]:
    """Exit code, stdout, stderr and the heavy top-level packages imported by `attnrl ARGS`."""
    env = dict(os.environ, COLUMNS="400")  # wide: no table cell is folded across lines
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    proc = subprocess.run([sys.executable, "-c", code, *args, str(report)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert report.is_file(), f"the CLI process died before reporting (rc {proc.returncode}): {proc.stderr[-3000:]}"
    result = json.loads(report.read_text())
    assert result["code"] == proc.returncode
    return result["code"], proc.stdout, proc.stderr, set(result["heavy"])


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["resume", "--help"]])
def test_help_loads_none_of_the_stack(tmp_path, args):
    code, out, err, heavy = attnrl(tmp_path, *args)
    assert code == 0, err
    assert "Usage: attnrl" in out
    if args == ["--help"]:
        for command in ("warmstart", "train", "resume", "runs", "export", "eval", "config", "ui", "sweep", "compare"):
            assert command in out
    if args[0] == "eval":
        assert "--benchmark" in out and "--samples" in out and "--tracking-uri" in out
    assert heavy == set(), f"`attnrl {' '.join(args)}` imported {sorted(heavy)}"


def test_config_prints_every_field_with_its_meaning_without_prefect_or_mlflow(tmp_path):
    from attnrl_core.config import describe_fields

    code, out, err, heavy = attnrl(tmp_path, "config")
    assert code == 0, err
    rows = describe_fields()
    assert len(rows) > 20
    for name, _kind, doc in rows:
        assert name in out, f"field {name} missing from `attnrl config`"
        assert doc.split()[0] in out
    assert "config experiments/tiny.yaml (hash " in out
    assert not heavy & {"prefect", "mlflow"}, f"`attnrl config` imported {sorted(heavy)}"


def test_config_names_a_bad_field_and_exits_2(tmp_path):
    code, out, err, heavy = attnrl(tmp_path, "config", "--set", "branch.no_such_field=1")
    assert code == 2
    assert "error:" in err and "no_such_field" in err
    assert "Traceback" not in err
    assert "prefect" not in heavy


def test_import_of_the_config_module_loads_no_torch():
    """The config (pydantic + yaml) is read where torch is not needed: the CLI, sweep specs."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, attnrl_core, attnrl_core.config; print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (HEAVY,)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_runs_lists_an_empty_store_without_prefect(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, err, heavy = attnrl(tmp_path, "runs", uri=uri)
    assert code == 0, err
    # the title folds to the (empty) table's width, mid-path too: compare without whitespace
    assert "".join(f"training runs in {uri}".split()) in "".join(out.split())
    for column in ("experiment", "run name", "run id", "status", "iteration", "held-out"):
        assert column in out
    assert "prefect" not in heavy and "torch" not in heavy, f"`attnrl runs` imported {sorted(heavy)}"


def test_resume_of_a_missing_run_exits_2_before_prefect_starts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, err, heavy = attnrl(tmp_path, "resume", "no-such-run", uri=uri)
    assert code == 2
    assert "error:" in err and "No MLflow run with id or name 'no-such-run'" in err and "attnrl runs" in err
    assert "Traceback" not in err
    assert "prefect" not in heavy and "torch" not in heavy, f"`attnrl resume no-such-run` imported {sorted(heavy)}"
