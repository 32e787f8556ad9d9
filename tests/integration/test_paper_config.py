"""The paper's 1.5B config runs in CI: one training iteration of experiments/paper/ds-r1-distill-qwen-1.5b.yaml
on CPU, its own code path (six benchmark sets with avg@32 / avg@4, the mean objective, 512-token
branching rules, one-step pipeline, DeepScaleR-style data from an environment variable), with
the model replaced by a tiny random Qwen2 built around the real Qwen2 tokenizer and the lengths
(and the batch, for two CPU cores) overridden."""

import json
import subprocess
import sys

import mlflow
import pytest

from attnrl_core.config import load_config
from tests.real_tokenizers import tiny_qwen2_policy
from tests.support import REPO, cli_env, mlflow_store

pytestmark = pytest.mark.slow

PAPER = REPO / "experiments/paper/ds-r1-distill-qwen-1.5b.yaml"
SETS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
# what a CPU cannot hold at paper scale; everything else is the file's
CPU = [
    "model.device=cpu", "model.dtype=float32", "rollout.engine=hf", "train.backend=torch", "train.bf16=false",
    "data.max_prompt_tokens=96", "data.max_response_tokens=24", "eval.max_new_tokens=8",
    "branch.min_token_offset=8", "branch.min_token_gap=4",
    "batch.prompts=4", "batch.min_prompts=2", "batch.target_sequences=24",
    "optim.minibatch_sequences=32", "optim.micro_batch_tokens=1024", "rollout.max_batch_size=16",
    "train.iterations=1", "train.ranks=1",  # the file's 8 ranks are 8 GPUs (tests/integration/test_ranks.py runs 2 on CPU)
]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def paper_inputs(tmp_path, monkeypatch):
    train = tmp_path / "deepscaler.jsonl"
    write_jsonl(train, [{"problem": f"What is {a} + {a + 3}?", "answer": str(2 * a + 3), "solution": "..."} for a in range(1, 21)])
    evals = tmp_path / "eval"
    evals.mkdir()
    for name in SETS:
        write_jsonl(evals / f"{name}.jsonl", [{"problem": f"Compute {k} * 3.", "answer": str(3 * k)} for k in (2, 5)])
    monkeypatch.setenv("ATTNRL_DEEPSCALER", str(train))
    monkeypatch.setenv("ATTNRL_EVAL_DIR", str(evals))
    return tiny_qwen2_policy(tmp_path / "tiny-qwen2"), train, evals


def test_one_iteration_of_the_paper_config_on_cpu(paper_inputs, tmp_path):
    model, _, _ = paper_inputs
    cfg = load_config(PAPER, [f"model.path={model}", *CPU])
    assert (cfg.rollout.group_size, cfg.batch.target_sequences, cfg.optim.lr, cfg.branch.rho, cfg.fci.delta) == (6, 24, 1e-6, 0.2, 4)
    assert [(b.key, b.samples, b.temperature) for b in cfg.eval.sets()] == [(s, 32 if s in SETS[:3] else 4, 0.6) for s in SETS]
    from flows.train import train_flow

    uri = mlflow_store(tmp_path)
    result = train_flow(str(PAPER), [f"model.path={model}", *CPU], tracking_uri=uri, quiet=True)
    run = mlflow.MlflowClient(uri).get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["objective_metric"] == "eval/mean/avg"
    assert run.data.params["fci.delta"] == "4" and run.data.params["optim.clip_high"] == "0.28"
    metrics = run.data.metrics
    assert {f"eval/{s}/avg_at_{32 if s in SETS[:3] else 4}" for s in SETS} <= set(metrics) and "eval/mean/avg" in metrics
    assert metrics["batch/prompts"] == 4 and metrics["progress/iteration"] == 1
    assert set(result["final_eval"]) == {*SETS, "objective"}


def test_paper_config_names_what_is_missing(paper_inputs, tmp_path, monkeypatch, prefect_api):
    model, train, _ = paper_inputs
    env = cli_env(mlflow_store(tmp_path), prefect_api)

    def train_cli(*sets, **extra_env):
        args = [sys.executable, "-m", "flows.cli", "train", "--quiet", "--config", str(PAPER)]
        for s in sets:
            args += ["--set", s]
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env={**env, **extra_env}, timeout=300)

    unset = {k: v for k, v in env.items() if k != "ATTNRL_DEEPSCALER"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--quiet", "--config", str(PAPER)], cwd=REPO, capture_output=True, text=True, env=unset, timeout=300)
    assert done.returncode == 2 and "data.train" in done.stderr and "ATTNRL_DEEPSCALER" in done.stderr
    done = train_cli(f"model.path={model}", "data.train=/no/such/deepscaler.parquet")
    assert done.returncode == 2 and "data.train = '/no/such/deepscaler.parquet': no such file" in done.stderr
    done = train_cli(f"model.path={model}", ATTNRL_EVAL_DIR=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "eval.benchmarks[0].source" in done.stderr and "aime24.jsonl" in done.stderr
    (tmp_path / "empty-model").mkdir()
    done = train_cli(f"model.path={tmp_path / 'empty-model'}")
    assert done.returncode == 2 and "model.path" in done.stderr and "no config.json" in done.stderr
