"""Steps (docs/method.md §1): separator vocabulary, splitting, absolute spans, answer summary."""

import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from attnrl_core import steps
from attnrl_core.steps import (
    absolute_step_spans,
    answer_summary_step,
    decode_vocab,
    separator_mask,
    separator_mask_from_texts,
    split_steps,
)

CHARS = list("0123456789+-*= abcdefghijklmnopqrstuvwxyz.,\n")


def tiny_bpe(with_double_newline: bool = True) -> Tokenizer:
    """A real BPE over characters; "\\n\\n" is one merged token, "</think>" a special token."""
    vocab = {c: i for i, c in enumerate(CHARS)}
    merges = []
    if with_double_newline:
        vocab["\n\n"] = len(vocab)
        merges.append(("\n", "\n"))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.decoder = decoders.Fuse()  # characters back to text without spaces between them
    tok.add_special_tokens([AddedToken("</think>", special=True)])
    return tok


def test_doctests_hold():
    assert doctest.testmod(steps).failed == 0


def test_separator_mask_on_real_bpe_marks_only_double_newline():
    tok = tiny_bpe()
    mask, rule = separator_mask(tok)
    assert rule == "\n\n"
    assert mask.shape == (tok.get_vocab_size(),)
    assert torch.nonzero(mask).reshape(-1).tolist() == [tok.token_to_id("\n\n")]


def test_separator_mask_accepts_transformers_tokenizer_and_pads_to_model_width():
    hf = PreTrainedTokenizerFast(tokenizer_object=tiny_bpe())
    mask, rule = separator_mask(hf, vocab_size=64)
    assert rule == "\n\n" and mask.shape == (64,)
    assert torch.nonzero(mask).reshape(-1).tolist() == [hf.convert_tokens_to_ids("\n\n")]
    with pytest.raises(ValueError):
        separator_mask(hf, vocab_size=3)


def test_fallback_to_single_newline_without_double_newline_token():
    tok = tiny_bpe(with_double_newline=False)
    mask, rule = separator_mask(tok)
    assert rule == "\n"
    assert torch.nonzero(mask).reshape(-1).tolist() == [tok.token_to_id("\n")]


def test_last_resort_every_token_is_a_separator():
    mask, rule = separator_mask_from_texts(["a", "b", "c"])
    assert rule == "every token" and mask.tolist() == [True, True, True]
    assert split_steps([0, 1, 2], mask) == [(0, 1), (1, 2), (2, 3)]


def test_decode_vocab_fills_id_holes_with_empty_text():
    tok = Tokenizer(models.WordLevel(vocab={"a": 0, "\n\n": 3, "[UNK]": 1}, unk_token="[UNK]"))
    assert decode_vocab(tok) == ["a", "[UNK]", "", "\n\n"]


def test_split_real_tokenization_into_steps():
    tok = tiny_bpe()
    mask, _ = separator_mask(tok)
    text = "2+3=5\n\nso 5*2=10\n\nanswer 10"
    ids = tok.encode(text).ids
    spans = split_steps(ids, mask)
    pieces = [tok.decode(ids[s:e]) for s, e in spans]
    assert pieces == ["2+3=5\n\n", "so 5*2=10\n\n", "answer 10"]


def test_split_edge_cases():
    mask = torch.tensor([False, True])  # id 1 separates
    assert split_steps([], mask) == []
    assert split_steps(torch.tensor([], dtype=torch.long), mask) == []
    assert split_steps([1], mask) == [(0, 1)]
    assert split_steps([0, 0, 1], mask) == [(0, 3)]  # ends with separator: no empty tail
    assert split_steps([1, 1, 0], mask) == [(0, 1), (1, 2), (2, 3)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40))
def test_steps_tile_the_response(ids):
    mask = torch.tensor([False, False, True, False])
    spans = split_steps(ids, mask)
    assert [p for s, e in spans for p in range(s, e)] == list(range(len(ids)))
    for s, e in spans:
        assert e > s
        # only the last token of a step may be a separator, and every non-final step ends with one
        assert all(ids[t] != 2 for t in range(s, e - 1))
    assert all(ids[e - 1] == 2 for _, e in spans[:-1])


def test_absolute_spans_shift_by_left_padding():
    response_steps = [(0, 2), (2, 5), (5, 6)]
    assert absolute_step_spans(4, response_steps) == [(0, 4), (4, 6), (6, 9), (9, 10)]
    assert absolute_step_spans(4, response_steps, offset=3) == [(3, 7), (7, 9), (9, 12), (12, 13)]
    assert absolute_step_spans(4, []) == [(0, 4)]


def test_answer_summary_is_the_step_of_the_last_think_end():
    tok = tiny_bpe()
    texts = decode_vocab(tok)
    mask, _ = separator_mask(tok)
    ids = tok.encode("a</think>b\n\nc\n\nd</think>e\n\nf").ids
    response_steps = split_steps(ids, mask)
    assert len(response_steps) == 4
    token_texts = [texts[i] for i in ids]
    assert answer_summary_step(token_texts, response_steps) == 3
    assert answer_summary_step([texts[i] for i in tok.encode("a\n\nb").ids], [(0, 2), (2, 3)]) is None


def test_answer_summary_marker_spelled_over_several_tokens():
    # "</think>" in single characters under the every-token fallback (one token per step):
    # the marker straddles eight steps and the step of its first character counts.
    token_texts = ["x", "<", "/", "t", "h", "i", "n", "k", ">", "y"]
    response_steps = [(t, t + 1) for t in range(len(token_texts))]
    assert answer_summary_step(token_texts, response_steps) == 2
    assert answer_summary_step(token_texts, response_steps, marker="k>y") == 8
