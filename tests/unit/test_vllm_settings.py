"""rollout.vllm: the vLLM server's settings, from the config to the server's command line."""

import json
from pathlib import Path

import pytest

from attnrl_core.config import load_config
from attnrl_core.errors import AttnRLError
from attnrl_core.rollout.vllm_client import DEFAULT_PYTHON, SERVER_SCRIPT, VLLMEngine
from tests.support import FIXTURE


def test_config_section_reaches_the_server_command(tmp_path):
    cfg = load_config(
        None,
        [
            "rollout.vllm.gpu_memory_utilization=0.35", "rollout.vllm.tensor_parallel_size=2", "rollout.vllm.max_model_len=9216",
            "rollout.vllm.dtype=bfloat16", "rollout.vllm.enforce_eager=true", "rollout.vllm.enable_prefix_caching=false",
            "rollout.vllm.port=8123", "rollout.vllm.startup_timeout_s=42", "rollout.vllm.extra={max_num_seqs: 512}",
        ],
    )  # fmt: skip
    settings = VLLMEngine.settings(cfg.rollout.vllm)
    assert settings["port"] == 8123 and settings["startup_timeout"] == 42.0
    command = VLLMEngine.server_command(FIXTURE, Path("/py"), settings["llm_kwargs"], settings["port"], tmp_path / "port")
    assert command[:2] == ["/py", str(SERVER_SCRIPT)] and command[command.index("--port") + 1] == "8123"
    assert json.loads(command[command.index("--llm-kwargs") + 1]) == {
        "gpu_memory_utilization": 0.35, "tensor_parallel_size": 2, "max_model_len": 9216, "dtype": "bfloat16",
        "enforce_eager": True, "enable_prefix_caching": False, "max_num_seqs": 512,
    }  # fmt: skip


@pytest.mark.parametrize("override, field", [("rollout.vllm.gpu_memory_utilization=1.5", "gpu_memory_utilization"), ("rollout.vllm.port=70000", "port"), ("rollout.vllm.dtype=int8", "dtype"), ("rollout.vllm.tensor_paralel_size=2", "tensor_paralel_size")])
def test_bad_settings_fail_naming_the_field(override, field):
    with pytest.raises(AttnRLError, match=f"rollout.vllm.{field}"):
        load_config(None, [override])


def test_a_run_without_the_vllm_environment_says_how_to_build_it(tmp_path):
    cfg = load_config(None, ["rollout.engine=vllm"])
    with pytest.raises(AttnRLError, match="make vllm-env"):
        VLLMEngine.for_run(None, None, str(FIXTURE), cfg.rollout) if not DEFAULT_PYTHON.is_file() else pytest.skip("a vLLM environment is here")
