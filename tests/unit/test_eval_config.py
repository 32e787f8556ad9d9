"""The eval section: benchmark sets with their own sampling, the objective, inputs checked up front,
${VAR} in configs, and the objective as a sweep's default."""

import json
from pathlib import Path

import pytest

from attnrl_core.config import Config, EvalConfig, check_inputs, load_config, objective_metric
from attnrl_core.errors import AttnRLError
from tests.support import DATA, FIXTURE, REPO


def test_default_is_the_heldout_set_greedy_160_tokens():
    sets = load_config(REPO / "experiments/tiny.yaml").eval.sets()
    assert [(b.key, b.source, b.samples, b.temperature, b.top_p, b.max_new_tokens) for b in sets] == [("heldout", "heldout", 1, 0.0, 1.0, 160)]
    assert objective_metric(load_config(None)) == "eval/heldout/avg_at_1"


def test_each_set_samples_its_own_way_and_inherits_the_rest():
    cfg = load_config(
        None,
        [
            "eval.temperature=0.6",
            "eval.benchmarks=[heldout, {source: data/aime24.jsonl, samples: 32, max_new_tokens: 4096}, {source: m.parquet, name: math500, top_p: 0.95}]",
        ],
    )
    aime, math500 = cfg.eval.sets()[1:]
    assert (aime.key, aime.samples, aime.temperature, aime.max_new_tokens) == ("aime24", 32, 0.6, 4096)
    assert (math500.key, math500.samples, math500.top_p, math500.max_new_tokens) == ("math500", 1, 0.95, 160)
    assert objective_metric(cfg) == "eval/heldout/avg_at_1"  # the first set by default
    passing = EvalConfig.model_validate({**cfg.eval.model_dump(), "objective": {"benchmarks": ["aime24"], "metric": "pass"}})
    assert passing.objective_metric() == "eval/aime24/pass_at_32"
    assert objective_metric(load_config(None, ["eval.benchmarks=[heldout, a.jsonl]", "eval.objective=[heldout, a]"])) == "eval/mean/avg"


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["eval.objective=aime"], "not one of the benchmark sets"),
        (["eval.benchmarks=[a/x.jsonl, b/x.jsonl]"], "share the name 'x'"),
        (["eval.benchmarks=[{source: a.jsonl, name: 'bad name'}]"], "not metric-safe"),
        (["eval.benchmarks=[{source: a.jsonl, name: mean}]"], "named 'mean'"),
        (["eval.benchmarks=[]"], "eval.benchmarks"),
        (["eval.benchmarks=[{source: a.jsonl, samples: 0}]"], ">= 1"),
        (["eval.benchmarks=[{source: a.jsonl, smaples: 2}]"], "unknown field 'eval.benchmarks.0.smaples'"),
    ],
)
def test_bad_eval_sections_fail_naming_what_is_wrong(overrides, words):
    with pytest.raises(AttnRLError, match="Invalid config") as info:
        load_config(None, overrides)
    assert words in str(info.value)


def test_former_data_benchmarks_ride_after_the_heldout_set():
    cfg = Config.model_validate({"data": {"benchmarks": ["tests/data/aime_sample.jsonl"]}})
    assert [b.key for b in cfg.eval.benchmarks] == ["heldout", "aime_sample"]
    assert Config.model_validate({"data": {"benchmarks": []}}).eval == EvalConfig()  # an old checkpoint's config


def test_environment_variables_in_configs(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("data: {train: '${ATTNRL_TEST_TRAIN}'}\nmodel: {path: '${ATTNRL_TEST_MODEL:-some/hub-id}'}\n")
    monkeypatch.delenv("ATTNRL_TEST_TRAIN", raising=False)
    with pytest.raises(AttnRLError, match=r"'data.train'.*ATTNRL_TEST_TRAIN.*--set data.train="):
        load_config(f)
    assert load_config(f, ["data.train=x.jsonl"]).data.train == "x.jsonl"  # --set replaces the reference
    monkeypatch.setenv("ATTNRL_TEST_TRAIN", "/d/train.parquet")
    cfg = load_config(f)
    assert (cfg.data.train, cfg.model.path) == ("/d/train.parquet", "some/hub-id")


def test_missing_inputs_fail_at_once_naming_the_field(tmp_path):
    check_inputs(load_config(None, [f"model.path={FIXTURE}", f"data.train={DATA / 'train_sample.jsonl'}", f"eval.benchmarks=[heldout, {DATA / 'aime_sample.jsonl'}]"]))
    with pytest.raises(AttnRLError, match=r"^data.train = .*no such file"):
        check_inputs(load_config(None, ["data.train=nowhere/train.parquet"]))
    check_inputs(load_config(None, ["data.train=nowhere/train.parquet"]), train_data=False)
    with pytest.raises(AttnRLError, match=r"^eval.benchmarks\[1\].source = 'nowhere.jsonl': no such file"):
        check_inputs(load_config(None, ["eval.benchmarks=[heldout, nowhere.jsonl]"]))
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(AttnRLError, match=r"^model.path = .*no config.json"):
        check_inputs(load_config(None, [f"model.path={empty}"]))
    (empty / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(AttnRLError, match=r"^model.path = .*no weights"):
        check_inputs(load_config(None, [f"model.path={empty}"]))
    check_inputs(load_config(None, ["model.path=org/hub-model"]))  # a hub id: left to the loader


def test_sweep_objective_follows_the_base_configs_eval_objective(tmp_path):
    from flows.sweep import load_sweep

    base = tmp_path / "base.yaml"
    base.write_text(f"eval: {{benchmarks: [heldout, {{source: '{DATA / 'aime_sample.jsonl'}', samples: 4}}], objective: aime_sample}}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base_config: {base}\nstudy_name: s\nn_trials: 1\nsearch_space: {{branch.rho: {{type: float, low: 0.1, high: 0.3}}}}\n")
    spec, _, _ = load_sweep(sweep)
    assert spec.objective.metric == "eval/aime_sample/avg_at_4"
    sweep.write_text(sweep.read_text() + "objective: {metric: eval/heldout/avg_at_1}\n")
    assert load_sweep(sweep)[0].objective.metric == "eval/heldout/avg_at_1"  # a sweep file's own metric wins
    assert Path(base).is_file()
