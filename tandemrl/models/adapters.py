"""LoRA adapters via peft, and the reference policy as "the same model with adapters off".

Keeping the reference as the adapter-free base means KL regularisation costs no second copy of
the weights: `with reference_mode(model): ...` runs the frozen base.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn


@dataclass
class LoraConfig:
    """LoRA settings. `enabled="auto"` means LoRA for pretrained models, full fine-tune for `tiny`."""

    enabled: bool | str = "auto"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    # Only adapt the top N decoder layers (None = all). Lower layers stay shared and frozen.
    top_layers: int | None = None
    extra: dict = field(default_factory=dict)


def apply_lora(model: nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap `model` with a peft LoRA adapter named `adapter_name`; the base is frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    layers_to_transform = None
    target_modules = cfg.target_modules
    if cfg.top_layers is not None:
        if target_modules == "all-linear":
            # peft accepts a layer subset only with explicit module names.
            target_modules = linear_module_names(model)
        n_layers = model.config.num_hidden_layers
        layers_to_transform = list(range(max(0, n_layers - cfg.top_layers), n_layers))
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules,
        layers_to_transform=layers_to_transform,
        task_type="CAUSAL_LM",
        **cfg.extra,
    )
    with warnings.catch_warnings():
        # peft calls a transformers API that transformers 5 deprecates; not actionable for users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, peft_cfg, adapter_name=adapter_name)


def has_adapters(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextlib.contextmanager
def reference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` as its reference policy: adapters disabled (LoRA) or unchanged otherwise.

    For full fine-tuning a separate frozen copy is needed; callers pass that copy instead.
    """
    if has_adapters(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names of the Linear layers peft's "all-linear" would pick (all but the LM head)."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    }
    return sorted(names)
