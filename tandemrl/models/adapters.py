"""LoRA adapters via peft, and the reference policy as "the same model with adapters off".

Keeping the reference as the adapter-free base means KL regularisation costs no second copy of
the weights: `with reference_mode(model): ...` runs the frozen base. Several adapters can share
one base (`apply_lora_adapters`); `activate_adapter` picks the one that runs and trains.
"""

from __future__ import annotations

import contextlib
import copy
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LoraConfig:
    """LoRA settings. `enabled="auto"` means LoRA for pretrained models, full fine-tune for `tiny`."""

    enabled: bool | str = "auto"  # auto: LoRA on pretrained models, full fine-tune on tiny
    r: int = 16  # the rank
    alpha: int = 32  # the scale numerator: updates are scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: str | list[str] = "all-linear"  # peft's target_modules
    # Only adapt the top N decoder layers (None = all). Lower layers stay shared and frozen.
    top_layers: int | None = None
    extra: dict = field(default_factory=dict)  # more peft LoraConfig keyword arguments


def lora_peft_config(model: nn.Module, cfg: LoraConfig):
    """The peft `LoraConfig` for `cfg` on `model` (resolves `top_layers` to a layer list)."""
    from peft import LoraConfig as PeftLoraConfig

    layers_to_transform = None
    target_modules = cfg.target_modules
    if cfg.top_layers is not None:
        if target_modules == "all-linear":
            # peft accepts a layer subset only with explicit module names.
            target_modules = linear_module_names(model)
        n_layers = model.config.num_hidden_layers
        layers_to_transform = list(range(max(0, n_layers - cfg.top_layers), n_layers))
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules,
        layers_to_transform=layers_to_transform,
        task_type="CAUSAL_LM",
        **cfg.extra,
    )


def apply_lora(model: nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap `model` with a peft LoRA adapter named `adapter_name`; the base is frozen."""
    from peft import get_peft_model

    peft_cfg = lora_peft_config(model, cfg)
    with warnings.catch_warnings():
        # peft calls a transformers API that transformers 5 deprecates; not actionable for users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, peft_cfg, adapter_name=adapter_name)


# -- several adapters on one base ---------------------------------------------------------------


def apply_lora_adapters(model: nn.Module, cfg: LoraConfig, names: list[str]) -> nn.Module:
    """One frozen base with one LoRA adapter per name, all with the same shape and the same
    initial weights (B = 0, the same random A), so every adapter starts as the base model.

    Identical initialisation keeps adapters comparable parameter by parameter: a gradient of
    one adapter is then a meaningful direction for another (used by the dual-policy method's gradient sharing).
    The first name is left active and trainable.
    """
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"adapter names must be distinct and non-empty, got {names}")
    peft_model = apply_lora(model, cfg, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, copy.deepcopy(peft_model.peft_config[names[0]]))
    first = adapter_parameters(peft_model, names[0])
    with torch.no_grad():
        for name in names[1:]:
            for key, param in adapter_parameters(peft_model, name).items():
                param.copy_(first[key])
    activate_adapter(peft_model, names[0], trainable=True)
    return peft_model


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The parameters of adapter `name`, keyed by their name with the adapter name removed
    (so the same key pairs corresponding parameters of two adapters)."""
    marker = f".{name}."
    return {n.replace(marker, ".<adapter>."): p for n, p in model.named_parameters() if marker in n}


def activate_adapter(model: nn.Module, name: str, trainable: bool = False) -> nn.Module:
    """Make adapter `name` the one forward and generate use. Only its parameters require
    grad when `trainable`; every other adapter (and the base) is frozen either way, so a
    backward pass can only ever reach the adapter being trained."""
    if name not in getattr(model, "peft_config", {}):
        raise ValueError(f"model has no adapter {name!r} (has {sorted(model.peft_config)})")
    model.set_adapter(name)
    marker = f".{name}."
    for param_name, param in model.named_parameters():
        param.requires_grad_(trainable and marker in param_name and "lora_" in param_name)
    return model


def mixed_adapter_rows(
    model: nn.Module, names: list[str]
) -> tuple[contextlib.AbstractContextManager, dict[str, Any]]:
    """How to run a batch whose row i uses adapter `names[i]` ("__base__" = none), inference
    only: a context to enter around `model.generate(...)` / `model(...)` and extra kwargs.

    Plain LoRA Linear layers get `rows_per_adapter` (no kwargs); anything else falls back to
    peft's mixed-adapter batches (`adapter_names=names`), which give the same result slower.
    """
    if _fast_rows_supported(model):
        return rows_per_adapter(model, names), {}
    return contextlib.nullcontext(), {"adapter_names": list(names)}


def _fast_rows_supported(model: nn.Module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    def plain(m: nn.Module) -> bool:
        # Variants (DoRA, ...) change the forward; older peft marks DoRA in `use_dora`.
        variant = getattr(m, "lora_variant", None) or any(getattr(m, "use_dora", {}).values())
        return type(m) is LoraLinear and not getattr(m, "merged", False) and not variant

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and all(plain(m) for m in layers)


@contextlib.contextmanager
def rows_per_adapter(model: nn.Module, names: list[str]) -> Iterator[nn.Module]:
    """Within the block, batch row i runs through adapter `names[i]`, with one forward of the
    shared base for all rows: y = W x + sum_a [rows of a] B_a A_a x * scaling_a.

    The result equals peft's mixed-adapter batches at a fraction of their per-layer cost
    (measured 4x less overhead): row sets are computed once, not in every layer of every
    decode step, and a contiguous run of rows is a slice (a view) instead of a gather and a
    scatter, so order rows by adapter. Plain LoRA Linear layers only (see
    `mixed_adapter_rows`); no gradient flows (generation and scoring only).
    """
    if not _fast_rows_supported(model):
        raise ValueError("rows_per_adapter supports plain, unmerged LoRA Linear layers only")
    from peft.tuners.lora import Linear as LoraLinear

    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    spans: list[tuple[str, slice | torch.Tensor]] = []
    for name, rows in groups.items():
        if name == "__base__":
            continue
        contiguous = rows == list(range(rows[0], rows[-1] + 1))
        spans.append((name, slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows)))
    n_rows = len(names)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.shape[0] != n_rows:
            raise RuntimeError(f"rows_per_adapter set up for {n_rows} rows, got {x.shape[0]}")
        result = self.base_layer(x, *args, **kwargs)
        for name, rows in spans:
            if name not in self.lora_A:  # e.g. a layer outside lora.top_layers
                continue
            a = self.lora_A[name]
            sub = x[rows].to(a.weight.dtype)
            delta = (self.lora_B[name](a(self.lora_dropout[name](sub))) * self.scaling[name]).to(
                result.dtype
            )
            if isinstance(rows, slice):
                result[rows] += delta
            else:
                result.index_add_(0, rows, delta)
        return result

    patched = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for module in patched:
        module.forward = types.MethodType(forward, module)
    try:
        with torch.no_grad():
            yield model
    finally:
        for module in patched:
            del module.forward


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
