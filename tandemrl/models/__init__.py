"""Model loading: Hugging Face directories or hub ids, the packaged SmolLM2, and a tiny test model.

`load_model(name)` returns a `LoadedModel` (model + tokenizer). Names resolve in this order:

1. a registered builtin (`smollm2-135m`, `tiny`): see `BUILTIN_MODELS`;
2. an existing local directory holding a Hugging Face checkpoint;
3. a hub id such as `Qwen/Qwen2.5-0.5B-Instruct` (only when online; offline, the local HF cache
   is used if it has the model).
"""

from tandemrl.models.adapters import LoraConfig, apply_lora, reference_mode
from tandemrl.models.loading import (
    BUILTIN_MODELS,
    LoadedModel,
    ModelLoadError,
    load_model,
    register_model,
)

__all__ = [
    "BUILTIN_MODELS",
    "LoadedModel",
    "LoraConfig",
    "ModelLoadError",
    "apply_lora",
    "load_model",
    "reference_mode",
    "register_model",
]
