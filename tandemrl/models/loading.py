"""Resolve a model name to a (model, tokenizer) pair."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelLoadError(ValueError):
    """A model name could not be resolved; the message says what to do instead."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    # Pretrained weights are worth keeping frozen under LoRA; a random test model is not.
    pretrained: bool = True


BUILTIN_MODELS: dict[str, Callable[[torch.dtype], LoadedModel]] = {}
# Cheap availability checks run before any slow work (e.g. "is the package installed?").
_AVAILABILITY_CHECKS: dict[str, Callable[[], None]] = {}


def register_model(name: str, check: Callable[[], None] | None = None) -> Callable:
    """Register a builder `fn(dtype) -> LoadedModel` under `name` (usable as `model=<name>`).

    `check()` raises `ModelLoadError` when the model cannot be built here (missing package).
    """

    def decorator(fn: Callable[[torch.dtype], LoadedModel]) -> Callable:
        BUILTIN_MODELS[name] = fn
        if check is not None:
            _AVAILABILITY_CHECKS[name] = check
        return fn

    return decorator


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]


def resolve_model_kind(name: str) -> str:
    """Classify `name` as "builtin", "directory" or "hub"; raise `ModelLoadError` if none.

    Cheap (no weights touched), so configs can be checked before any slow work starts.
    """
    # Builtins register themselves on import; imported here to keep `import tandemrl` light.
    from tandemrl.models import packaged, tiny  # noqa: F401

    if name in BUILTIN_MODELS:
        if name in _AVAILABILITY_CHECKS:
            _AVAILABILITY_CHECKS[name]()
        return "builtin"
    if Path(name).expanduser().is_dir():
        return "directory"
    if _looks_like_hub_id(name):
        return "hub"
    close = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ModelLoadError(
        f"unknown model {name!r}{hint}: not a builtin ({', '.join(sorted(BUILTIN_MODELS))}), "
        f"not a local directory, not a hub id (org/name)"
    )


def load_model(name: str, dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load `name` (builtin, local HF directory, or hub id) in `dtype`, in eval mode."""
    torch_dtype = _dtype(dtype)
    kind = resolve_model_kind(name)
    if kind == "builtin":
        loaded = BUILTIN_MODELS[name](torch_dtype)
    elif kind == "directory":
        loaded = _load_hf(str(Path(name).expanduser()), torch_dtype, local_only=True)
    else:
        loaded = _load_hf(name, torch_dtype, local_only=False)
    loaded.model.eval()
    return loaded


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _load_hf(name: str, dtype: torch.dtype, local_only: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = local_only or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=offline)
    except OSError as err:
        where = "directory" if local_only else "hub id"
        raise ModelLoadError(
            f"could not load model {where} {name!r} ({str(err).splitlines()[0]}). "
            "Check the path/id; without internet, use a local directory or model=smollm2-135m."
        ) from None
    _ensure_pad_token(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    # Batched generation needs a pad token; reusing EOS is safe because masks carry the truth.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
