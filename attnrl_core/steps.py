"""Reasoning steps (docs/method.md §1): where a response is cut into steps, and where its answer summary starts.

A response is split after every token whose decoded text contains "\\n\\n"; the separator token
ends (belongs to) its step, and a trailing piece without a separator is the last step. Step 0
is the whole prompt; response steps are 1..T. The step holding the last "</think>" and every
later step form the "answer summary" (zeroed in FCI by default, see branching.py).

The tokenizer is consulted exactly once, to decode every vocabulary entry
(`decode_vocab`, `separator_mask`); everything after that is a pure function over token ids,
so the per-response work is a tensor lookup:

    >>> vocab = ["a", "b", "\\n", "\\n\\n"]                          # token id -> text
    >>> mask, rule = separator_mask_from_texts(vocab)
    >>> mask.tolist(), rule
    ([False, False, False, True], '\\n\\n')
    >>> split_steps([0, 3, 1, 1, 3, 0], mask)                     # "a\\n\\n" "bb\\n\\n" "a"
    [(0, 2), (2, 5), (5, 6)]
    >>> absolute_step_spans(4, [(0, 2), (2, 5), (5, 6)], offset=1)  # 1 pad, 4 prompt tokens
    [(1, 5), (5, 7), (7, 10), (10, 11)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The rule names `separator_mask` reports; anything but the first means the tokenizer has no
# "\n\n" token and steps are cut more finely than the paper's.
SEPARATOR_RULES = ("\n\n", "\n", "every token")


def decode_vocab(tokenizer) -> list[str]:
    """Decode every token id of `tokenizer` on its own: `texts[i]` is the text of token id i.

    Accepts a `tokenizers.Tokenizer` or a transformers tokenizer (its fast backend is used when
    it has one). Ids missing from the vocabulary decode to "". Special tokens are kept, since
    "</think>" is one in most reasoning models.

    Example: a vocabulary {"a": 0, "\\n\\n": 1} gives ["a", "\\n\\n"].
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "decode_batch") and hasattr(backend, "get_vocab"):
        vocab = backend.get_vocab(with_added_tokens=True)
        # Ids may have holes; size by the largest id so that texts[i] always lines up with i.
        size = max(vocab.values()) + 1 if vocab else 0
        return list(backend.decode_batch([[i] for i in range(size)], skip_special_tokens=False))
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(len(tokenizer))]


def separator_mask_from_texts(
    token_texts: Sequence[str], vocab_size: int | None = None
) -> tuple[torch.Tensor, str]:
    """Which token ids end a step, from the decoded vocabulary; returns (mask (V,), rule).

    rule is the separator rule that applied, one of SEPARATOR_RULES: "\\n\\n" (the paper's),
    "\\n" when no token contains "\\n\\n", "every token" when no token contains a newline
    either. A caller that wants the paper's steps checks `rule == "\\n\\n"` and warns otherwise.
    vocab_size pads the mask with False up to the model's logits width (models often have
    more embedding rows than the tokenizer has tokens), so that any sampled id can index it.

    Example: ["x", "y\\n"] -> (tensor([False, True]), "\\n"); ["x", "y"] -> (all True, "every token").
    """
    size = len(token_texts) if vocab_size is None else vocab_size
    if size < len(token_texts):
        raise ValueError(f"vocab_size {size} is smaller than the tokenizer's {len(token_texts)} tokens")
    mask = torch.zeros(size, dtype=torch.bool)  # (V,)
    for rule in SEPARATOR_RULES[:2]:
        hits = [i for i, text in enumerate(token_texts) if rule in text]
        if hits:
            mask[hits] = True
            return mask, rule
    mask[:] = True
    return mask, SEPARATOR_RULES[2]


SPLIT_SEPARATOR_RULE = "\n\n over two tokens"


class SplitSeparator:
    r"""The separator mask of a tokenizer that writes the "\n\n" between two steps as TWO tokens
    (GPT-2-style pre-tokenizers such as SmolLM2's: "7.\n\nThen" -> ".", "\n", "\n", "Then", since
    whitespace before a word is split off). A step then also ends after a token that starts with
    "\n" when the token before it ends with "\n" and did not itself end a step: the text
    between the steps is still "\n\n" (docs/method.md §1 read on text, as the answer-summary rule
    is). `split_steps` takes it wherever it takes a mask.

    >>> rule = SplitSeparator.from_texts(["a", "\n", "\n\n", "b"])
    >>> split_steps([0, 1, 1, 3, 2, 3], rule)     # "a\n" "\n" | "b\n\n" | "b"
    [(0, 3), (3, 5), (5, 6)]
    """

    def __init__(self, mask: torch.Tensor, ends_newline: torch.Tensor, starts_newline: torch.Tensor) -> None:
        self.mask, self.ends_newline, self.starts_newline = mask, ends_newline, starts_newline  # (V,) bool each

    @classmethod
    def from_texts(cls, token_texts: Sequence[str], vocab_size: int | None = None) -> "SplitSeparator":
        size = len(token_texts) if vocab_size is None else vocab_size
        mask, ends, starts = (torch.zeros(size, dtype=torch.bool) for _ in range(3))
        for i, text in enumerate(token_texts):
            mask[i], ends[i], starts[i] = "\n\n" in text, text.endswith("\n"), text.startswith("\n")
        return cls(mask, ends, starts)

    def boundaries(self, ids: torch.Tensor) -> torch.Tensor:
        """(L,) bool: does a step end after token t."""
        ends = self.mask[ids].clone()
        for t in range(1, ids.numel()):
            if not ends[t] and not ends[t - 1] and self.starts_newline[ids[t]] and self.ends_newline[ids[t - 1]]:
                ends[t] = True
        return ends


def separator_mask(tokenizer, vocab_size: int | None = None) -> tuple[torch.Tensor | SplitSeparator, str]:
    r"""`separator_mask_from_texts(decode_vocab(tokenizer), vocab_size)`: compute once per run.

    When the tokenizer has "\n\n" tokens but writes the separator between a sentence and the
    next as two "\n" tokens (its encoding of "x.\n\nThen" holds no "\n\n" token), the mask is
    a `SplitSeparator` and the rule SPLIT_SEPARATOR_RULE, so that steps still end at every
    "\n\n" of the text.
    """
    texts = decode_vocab(tokenizer)
    mask, rule = separator_mask_from_texts(texts, vocab_size)
    if rule == "\n\n" and hasattr(tokenizer, "encode"):
        probe = tokenizer.encode("So x = 7.\n\nThen y = 8.", add_special_tokens=False)
        probe = getattr(probe, "ids", probe)
        if not any("\n\n" in texts[i] for i in probe if 0 <= i < len(texts)):
            return SplitSeparator.from_texts(texts, vocab_size), SPLIT_SEPARATOR_RULE
    return mask, rule


def split_steps(
    response_ids: Sequence[int] | torch.Tensor, sep_mask: "torch.Tensor | SplitSeparator"
) -> list[tuple[int, int]]:
    """Response steps as [start, end) spans relative to the response (step k of docs/method.md §1 = item k-1).

    Pass the response without padding. A step ends with (includes) its separator token; a
    trailing piece without one is the last step; an empty response has no steps.

    Example (3 = separator): [0, 3, 1, 1, 3, 0] -> [(0, 2), (2, 5), (5, 6)];
    [0, 3] -> [(0, 2)]; [] -> [].
    """
    ids = torch.as_tensor(response_ids, dtype=torch.long).reshape(-1)  # (L,)
    length = ids.numel()
    if length == 0:
        return []
    boundary = sep_mask.boundaries(ids) if isinstance(sep_mask, SplitSeparator) else sep_mask[ids]  # (L,)
    ends = (torch.nonzero(boundary).reshape(-1) + 1).tolist()  # exclusive ends after separators
    if not ends or ends[-1] != length:
        ends.append(length)
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def absolute_step_spans(
    prompt_len: int, response_steps: Sequence[tuple[int, int]], offset: int = 0
) -> list[tuple[int, int]]:
    """Step spans in absolute positions of the padded prompt+response row; step 0 = the prompt.

    This is the `step_spans[b]` that FCI scoring takes. offset is the number of left-padding
    tokens before the prompt in that row (everything shifts by it).

    Example: prompt_len=4, steps [(0, 2), (2, 5)], offset=1 -> [(1, 5), (5, 7), (7, 10)].
    """
    base = offset + prompt_len
    return [(offset, base)] + [(base + start, base + end) for start, end in response_steps]


def answer_summary_step(
    token_texts: Sequence[str], response_steps: Sequence[tuple[int, int]], marker: str = "</think>"
) -> int | None:
    """Step index (docs/method.md §1) (response steps are 1..T) of the step holding the LAST `marker`, or None.

    token_texts is the response's per-token text (`[vocab_texts[i] for i in response_ids]` with
    vocab_texts from `decode_vocab`); matching on text rather than token ids finds the marker
    whether the tokenizer has it as one special token or spells it with several. When the
    marker straddles a step boundary, the step of its first character counts: that step and
    every later one form the answer summary.

    Example: texts ["a", "\\n\\n", "</think>", "b"] with steps [(0, 2), (2, 4)] -> 2;
    no "</think>" anywhere -> None.
    """
    text = "".join(token_texts)
    char_at = text.rfind(marker)
    if char_at < 0:
        return None
    consumed = 0
    for token_index, piece in enumerate(token_texts):
        consumed += len(piece)
        if consumed > char_at:
            break
    for step_index, (start, end) in enumerate(response_steps, start=1):
        if start <= token_index < end:
            return step_index
    raise ValueError(
        f"token {token_index} holding {marker!r} lies in no response step of {list(response_steps)}"
    )
