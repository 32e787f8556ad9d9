"""The typed config: layering, overrides, and errors that name the field and its range."""

import pytest

from attnrl_core.config import Config, describe_fields, flatten, load_config, parse_override, read_yaml_mapping
from attnrl_core.errors import AttnRLError
from attnrl_core.policy import build_tokenizer, init_tiny_policy, count_parameters
from attnrl_core import data


def test_layers_defaults_preset_yaml_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: treerl\nbranch: {rho: 0.4}\n")
    cfg = load_config(f, ["branch.rho=0.3", "batch.adaptive=true"])
    assert cfg.branch.criterion == "entropy"  # preset
    assert cfg.expansion.mode == "uniform" and not cfg.expansion.fci_filter  # preset
    assert cfg.branch.rho == 0.3  # --set beats YAML
    assert cfg.batch.adaptive is True  # --set beats the preset
    assert load_config(None, ["method=grpo"]).advantage == "grpo"


def test_parse_override_reads_values_as_yaml():
    assert parse_override("a.b=0.3") == {"a": {"b": 0.3}}
    assert parse_override("data.levels=[1, 2]") == {"data": {"levels": [1, 2]}}
    assert parse_override("model.path=null") == {"model": {"path": None}}
    with pytest.raises(AttnRLError, match="key.path=value"):
        parse_override("branch.rho")
    with pytest.raises(AttnRLError, match="empty field name"):
        parse_override("branch..rho=1")


@pytest.mark.parametrize(
    "override, field, allowed",
    [
        ("branch.rho=1.5", "branch.rho", "<= 1.0"),
        ("branch.rho=0", "branch.rho", "> 0.0"),
        ("batch.prompts=-3", "batch.prompts", ">= 1"),
        ("branch.continuations=0", "branch.continuations", ">= 1"),
        ("fci.delta=0", "fci.delta", ">= 1"),
        ("warmstart.flaw=2", "warmstart.flaw", "<= 1.0"),
        ("optim.lr=-1", "optim.lr", "> 0.0"),
    ],
)
def test_out_of_range_names_field_and_range(override, field, allowed):
    with pytest.raises(AttnRLError) as err:
        load_config(None, [override])
    assert f"'{field}'" in str(err.value) and allowed in str(err.value)


def test_unknown_key_wrong_type_and_bad_choice():
    with pytest.raises(AttnRLError, match="unknown field 'branch.rhoo'"):
        load_config(None, ["branch.rhoo=0.2"])
    with pytest.raises(AttnRLError, match="'branch.rho' = 'abc'"):
        load_config(None, ["branch.rho=abc"])
    with pytest.raises(AttnRLError, match="'branch.criterion'"):
        load_config(None, ["branch.criterion=attention"])
    with pytest.raises(AttnRLError, match="min_prompts <= prompts <= max_prompts"):
        load_config(None, ["batch.prompts=100"])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbranch: {rho: [\n")
    with pytest.raises(AttnRLError, match=r"bad.yaml line \d+ is not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(AttnRLError, match="mapping"):
        read_yaml_mapping(scalar)
    with pytest.raises(AttnRLError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_is_documented_and_flattened():
    rows = describe_fields()
    assert all(doc for _, _, doc in rows), [name for name, _, doc in rows if not doc]
    flat = flatten(Config())
    assert {name for name, _, _ in rows} == set(flat)
    assert flat["branch.rho"] == 0.2 and flat["data.levels"] == "[1, 2, 3, 4]"
    kinds = {name: kind for name, kind, _ in rows}
    assert kinds["train.backend"] == "torch | deepspeed" and kinds["branch.rho"].startswith("float")


def test_hash_is_stable_and_sensitive():
    assert Config().hash() == Config().hash()
    assert load_config(None, ["branch.rho=0.3"]).hash() != Config().hash()


def test_tiny_tokenizer_round_trip_and_single_token_phrases(tmp_path):
    tok = build_tokenizer(data.PHRASES)
    problem = data.problem_at(3, levels=(4,))
    text = data.format_prompt(problem.problem) + problem.solution
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for phrase in ("\n\n", data.SUFFIX, data.ANSWER_LEAD):
        assert len(tok(phrase, add_special_tokens=False)["input_ids"]) == 1
    assert tok.padding_side == "left" and tok.eos_token_id != tok.pad_token_id
    model = init_tiny_policy(Config().model.tiny, tok, seed=0)
    assert 0.8e6 < count_parameters(model) < 1.2e6  # "about a million parameters"
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from attnrl_core.policy import load_policy

    again, tok2 = load_policy(tmp_path)
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids
    with pytest.raises(AttnRLError, match="model.path"):
        load_policy(tmp_path / "nowhere")


def test_registry_names_read_without_torch_match_the_live_registries():
    """`attnrl config` reads the choices from the registries' source (no torch import); a run
    reads the live registries: both give the same names in the same order."""
    import subprocess
    import sys

    from attnrl_core.advantages import ADVANTAGE_ESTIMATORS
    from attnrl_core.branching import CRITERIA
    from attnrl_core.rollout import ENGINES
    from attnrl_core.trainer import TRAINERS

    registries = ["attnrl_core.branching:CRITERIA", "attnrl_core.advantages:ADVANTAGE_ESTIMATORS", "attnrl_core.rollout:ENGINES", "attnrl_core.trainer:TRAINERS"]
    code = f"import sys; from attnrl_core.config import registered; print([registered(r) for r in {registries!r}]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[1] == "False"
    assert out[0] == str([list(CRITERIA), list(ADVANTAGE_ESTIMATORS), list(ENGINES), list(TRAINERS)])
