"""The policy: the tiny world's tokenizer and Qwen2 model, and loading any causal LM.

A hub model id and a local folder load through the same `load_policy` (from_pretrained), so the
CPU default (the tiny policy saved by the warm start) and a real model on a GPU machine share one
code path.

The tiny tokenizer is character level over printable ASCII plus "\\n", with a few phrase pieces of
the synthetic world as single tokens ("\\n\\n" above all: docs/method.md §1 splits steps after every token
whose text contains it). Example::

    >>> tok = build_tokenizer(["\\n\\n", "Compute "])
    >>> tok.convert_ids_to_tokens(tok("Compute 1+2\\n\\n")["input_ids"])
    ['Compute ', '1', '+', '2', '\\n\\n']
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from attnrl_core.config import ModelConfig, TinyModelConfig
from attnrl_core.errors import AttnRLError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# printable ASCII (space .. ~) and the newline: everything the synthetic world writes.
CHARACTERS = [c for c in string.printable if c.isprintable() or c == "\n"]
CHARACTERS = sorted(set(CHARACTERS) - {"\t", "\r", "\x0b", "\x0c"})


def build_tokenizer(phrases: list[str] | tuple[str, ...]) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer whose phrase pieces are single tokens.

    Phrases are added tokens, so they are matched before the character model sees the text
    (longest first); unknown characters map to `<|unk|>` rather than failing.
    """
    specials = [PAD_TOKEN, EOS_TOKEN, "<|unk|>"]
    vocab = {tok: i for i, tok in enumerate(specials + CHARACTERS)}
    # BPE with no merges = pure character model; the Fuse decoder joins pieces without spaces.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token="<|unk|>")
    multi = sorted({p for p in phrases if len(p) > 1}, key=len, reverse=True)
    tok.add_tokens(multi)
    tok.padding_side = "left"  # generation pads on the left so every prompt ends at the same column
    return tok


def init_tiny_policy(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2 of the configured tiny shape (about 1M parameters by default)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: weight init draws from the global generator; keep the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model


def load_policy(path: str | Path, model_cfg: ModelConfig | None = None):
    """(model, tokenizer) from a local folder or a hub id, in the configured dtype and device.

    A missing folder fails with AttnRLError naming `model.path`, before anything else runs.
    """
    model_cfg = model_cfg or ModelConfig()
    path = str(path)
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists()
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        raise AttnRLError(
            f"model.path '{path}' is not a model folder (no config.json there). Point model.path at a folder "
            "written by save_pretrained, a hub model id available offline, or null for the built-in tiny policy."
        )
    dtype = getattr(torch, model_cfg.dtype)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise _unloadable(path, exc) from None
    check_vocabularies(model, tokenizer, path)
    return model.to(model_cfg.device), tokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer of the policy at `path` alone (left padding, a pad token): what a process
    that drives ranks but holds no model of its own needs."""
    path = str(path)
    try:
        tokenizer = _load_tokenizer(path)
    except OSError as exc:
        raise _unloadable(path, exc) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _unloadable(path: str, exc: OSError) -> AttnRLError:
    return AttnRLError(
        f"model.path '{path}' could not be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). "
        "This machine cannot download weights: use a local folder or a model already in the hub cache."
    )


def check_vocabularies(model, tokenizer, path: str) -> None:
    """A tokenizer and a model that disagree (token ids past the model's embedding rows, no EOS)
    fail here, naming model.path, instead of as an index error deep in a rollout."""
    rows = model.get_input_embeddings().weight.shape[0]
    ids = [i for i in tokenizer.get_vocab().values()]
    largest = max(ids) if ids else -1
    if largest >= rows:
        raise AttnRLError(
            f"model.path '{path}': the tokenizer and the model disagree: the tokenizer has ids up to {largest} "
            f"({len(tokenizer)} tokens) but the model's embedding has {rows} rows. The folder's tokenizer files "
            "belong to another model: save the tokenizer that was trained with these weights next to them."
        )
    if tokenizer.eos_token_id is None:
        raise AttnRLError(f"model.path '{path}': the tokenizer defines no EOS token, so no response could end; set eos_token in its tokenizer_config.json.")


def _load_tokenizer(path: str):
    """The folder's own tokenizer.

    AutoTokenizer picks the tokenizer class from config.json's model_type, so for a folder that
    holds a Qwen2 model it rebuilds a Qwen2 pipeline (ByteLevel pre-tokenizer, NFC) around our
    character vocabulary, which silently drops every space. A folder whose tokenizer_config
    names the generic class is therefore loaded as exactly what tokenizer.json says.
    """
    config = Path(path).expanduser() / "tokenizer_config.json"
    if config.is_file():
        import json

        if json.loads(config.read_text()).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt: through the chat template when the tokenizer has one (hub chat
    models), else the raw text (the tiny policy). docs/method.md §1: this whole sequence is step 0."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
