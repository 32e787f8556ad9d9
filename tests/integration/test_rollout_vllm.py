"""The "vllm" rollout engine: our vLLM server (in .venv-vllm) + its HTTP client, on a tiny model.

The server needs the separate vLLM environment (`make vllm-env`); without it every test that
talks to a server is skipped. One server serves the whole module (~30-45 s to start on 2 CPU
cores). vLLM is not deterministic, so these tests check the contract (shapes, budgets, EOS,
log-prob semantics, weight reload), never exact samples -- except greedy decoding, which must
agree with the hf engine on the same weights.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from attnrl_core.errors import AttnRLError
from attnrl_core.rollout import SamplingParams, make_engine
from attnrl_core.rollout.hf import HFEngine, sampling_logprobs
from attnrl_core.rollout.vllm_client import DEFAULT_PYTHON, VLLMEngine

VOCAB = 50
PAD, EOS = 0, 1
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
# vLLM's CPU backend: a small explicit KV cache (it would otherwise reserve 92% of RAM), no
# torch.compile (minutes of compiling for a 2-layer model), fp32 to compare with the hf engine.
CPU_LLM_KWARGS = {"kv_cache_memory_bytes": 2**27, "enforce_eager": True, "max_model_len": 128, "dtype": "float32"}

_skip_without_env = pytest.mark.skipif(
    not DEFAULT_PYTHON.is_file(), reason=f"no vLLM environment at {DEFAULT_PYTHON} (build it with `make vllm-env`)"
)


def needs_vllm_env(test):
    """Skipped without .venv-vllm; `slow` (a server start is ~30-50 s), so `make test-fast` leaves it out."""
    return pytest.mark.slow(_skip_without_env(test))


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    # head_dim 32: vLLM's CPU attention kernels reject tiny head sizes such as 8
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.3,  # peaked next-token distributions: greedy and EOS tests bite
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real word-level tokenizer (tokenizer.json + tokenizer_config.json) that vLLM can load."""
    vocab = {"<pad>": PAD, "<eos>": EOS} | {f"w{i}": i for i in range(2, VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="<pad>")


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Two random policies saved as full checkpoint folders: (model_a, folder_a, model_b, folder_b)."""
    root = tmp_path_factory.mktemp("vllm-policies")
    out = []
    for name, seed in (("policy_a", 0), ("policy_b", 1)):
        model = tiny_qwen2(seed)
        model.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
        out += [model, root / name]
    return tuple(out)


@pytest.fixture(scope="module")
def engine(policies):
    engine = make_engine("vllm", model_path=policies[1], llm_kwargs=CPU_LLM_KWARGS)
    yield engine
    engine.close()
    assert engine._process.poll() is not None, "close() left the vLLM server running"


def greedy_reference(model, prompts, budget):
    out = HFEngine(model).generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=budget), seed=0)
    return [per_prompt[0].token_ids for per_prompt in out]


def teacher_forced_logits(model, prompt, generated):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + generated])).logits[0]  # (P+G, V)
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)]  # (G, V)


# --- without a server -----------------------------------------------------------------------


def test_client_errors_name_the_problem(tmp_path):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(AttnRLError, match="make vllm-env"):
        VLLMEngine(model_path=tmp_path / "policy", python=tmp_path / "no-python")
    with pytest.raises(AttnRLError, match="needs model_path"):
        VLLMEngine()
    with pytest.raises(AttnRLError, match="No model checkpoint"):
        VLLMEngine(model_path=tmp_path / "missing")
    with pytest.raises(AttnRLError, match="unreachable"):
        VLLMEngine(url="http://127.0.0.1:9")  # discard port: nothing listens


@needs_vllm_env
def test_server_that_fails_to_start_reports_its_log(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(AttnRLError, match="exited with code") as error:
        VLLMEngine(model_path=tmp_path / "broken", startup_timeout=300, log_path=tmp_path / "server.log")
    assert "not a valid JSON file" in str(error.value)  # the log's tail travels in the message


# --- against one running server -------------------------------------------------------------


@needs_vllm_env
def test_shapes_budgets_and_eos(engine):
    health = engine.health()
    assert health["status"] == "ok" and health["vllm"]
    params = SamplingParams(n=4, max_new_tokens=12, stop_at_eos=False)
    free = engine.generate(PROMPTS, params, seed=3, max_new_tokens=[12, 0, 7])
    assert [[len(g.token_ids) for g in p] for p in free] == [[12] * 4, [0] * 4, [7] * 4]
    assert all(len(g.logprobs) == len(g.token_ids) and not g.finished for p in free for g in p)
    assert len({tuple(g.token_ids) for g in free[0]}) > 1, "the n samples should be separate draws"
    counts = engine.generate(PROMPTS, params, seed=3, max_new_tokens=[5, 5, 0], n=[3, 1, 2])
    assert [[len(g.token_ids) for g in p] for p in counts] == [[5] * 3, [5], [0] * 2]

    # stop at a token the policy really emits (attach a second client with it as EOS)
    eos = Counter(t for p in free for g in p for t in g.token_ids).most_common(1)[0][0]
    stopping = VLLMEngine(url=engine.url, eos_token_id=eos)
    out = stopping.generate(PROMPTS * 2, SamplingParams(n=4, max_new_tokens=12), seed=4)
    stops = {eos, EOS}  # extra stop ids add to the model's own EOS
    finished = 0
    for per_prompt in out:
        for g in per_prompt:
            if g.finished:
                assert g.token_ids[-1] in stops and not stops & set(g.token_ids[:-1])
                finished += g.token_ids[-1] == eos
            else:
                assert len(g.token_ids) == 12 and not stops & set(g.token_ids)
    assert finished >= 1


@needs_vllm_env
def test_behaviour_logprobs_match_teacher_forced_recomputation(engine, policies):
    model_a = policies[0]
    plain = SamplingParams(n=3, max_new_tokens=16)
    filtered = SamplingParams(n=3, temperature=0.7, top_k=6, top_p=0.8, max_new_tokens=16)
    for params in (plain, filtered):
        out = engine.generate(PROMPTS, params, seed=5)
        worst = 0.0
        for prompt, per_prompt in zip(PROMPTS, out):
            for g in per_prompt:
                logits = teacher_forced_logits(model_a, prompt, g.token_ids)  # (G, V)
                processed = sampling_logprobs(logits, params.temperature, params.top_k, params.top_p)  # (G, V)
                reference = processed.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
                assert torch.isfinite(reference).all(), "vLLM sampled outside the top-k/top-p set"
                worst = max(worst, float((torch.tensor(g.logprobs) - reference).abs().max()))
        assert worst < 1e-3, (params, worst)


@needs_vllm_env
def test_greedy_agrees_with_the_hf_engine(engine, policies):
    out = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_new_tokens=10), seed=0)
    assert [[g.token_ids for g in p] for p in out] == [[t, t] for t in greedy_reference(policies[0], PROMPTS, 10)]


@needs_vllm_env
def test_bad_requests_are_refused_with_a_message(engine, tmp_path):
    with pytest.raises(AttnRLError, match="HTTP 400"):
        engine._request("POST", "/generate", {"prompts": [[1]]}, timeout=30)
    with pytest.raises(AttnRLError, match="not a checkpoint folder"):
        engine.update_weights(tmp_path / "nothing-here")
    with pytest.raises(AttnRLError, match="HTTP 400"):
        engine._request("POST", "/reload", {"path": str(tmp_path / "nothing-here")}, timeout=30)


@needs_vllm_env
def test_update_weights_from_folder_and_state_dict(engine, policies):
    model_a, _, model_b, folder_b = policies
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    expected_a, expected_b = greedy_reference(model_a, PROMPTS, 10), greedy_reference(model_b, PROMPTS, 10)
    assert expected_a != expected_b
    reloads = engine.health()["reloads"]
    engine.update_weights(folder_b)
    assert [p[0].token_ids for p in engine.generate(PROMPTS, greedy, seed=0)] == expected_b
    engine.update_weights(model_a.state_dict())  # back to A through the state_dict path
    assert [p[0].token_ids for p in engine.generate(PROMPTS, greedy, seed=0)] == expected_a
    assert engine.health()["reloads"] == reloads + 2
