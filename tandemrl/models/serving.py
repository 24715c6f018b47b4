"""A policy's weights as a separate inference engine serves them: plain Hugging Face checkpoint
names, LoRA merged in, computed without touching the training module.

Why not peft's `merge_adapter()` / `unmerge_adapter()`: merging and unmerging in place adds and
subtracts B @ A from the trained base weights, and the float rounding of that round trip drifts
the training weights a little every step. Here the merged tensor is a new one, W + s * B @ A.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tandemrl.models.adapters import has_adapters

BASE_ADAPTER = "__base__"  # the adapter-free base model (the KL reference)


def inner_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (`model` itself otherwise)."""
    return model.get_base_model() if has_adapters(model) else model


def active_adapter(model: nn.Module) -> str | None:
    """The adapter a peft model runs now (None for a plain model)."""
    if not has_adapters(model):
        return None
    active = model.active_adapter
    return active[0] if isinstance(active, list) else active


def serving_weights(
    model: nn.Module, adapter: str | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight of the served model, in checkpoint naming.

    For a peft model, each LoRA-wrapped linear layer yields W + (alpha / r) * B @ A of `adapter`
    (default: the active one; `BASE_ADAPTER`: W alone), and the adapters' own tensors are left
    out. Tensors are detached; merged ones are new, the others are the module's own storage.
    """
    if not has_adapters(model):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach()
        return
    adapter = active_adapter(model) if adapter is None else adapter
    inner = inner_model(model)
    lora_layers = {
        name: module
        for name, module in inner.named_modules()
        if hasattr(module, "lora_A") and hasattr(module, "get_base_layer")
    }
    for name, tensor in inner.state_dict().items():
        if ".lora_" in name or "lora_magnitude" in name:
            continue
        owner, _, leaf = name.replace(".base_layer.", ".").rpartition(".")
        module = lora_layers.get(owner)
        tensor = tensor.detach()
        if module is not None and leaf == "weight" and adapter in module.lora_A:
            tensor = tensor + module.get_delta_weight(adapter).to(tensor.dtype)
        yield f"{owner}.{leaf}", tensor


def weights_version(model: nn.Module, adapter: str | None = None) -> tuple[int, ...]:
    """Changes whenever a parameter the served weights depend on is written in place (an
    optimizer step, a checkpoint load): torch counts in-place writes on each tensor. Cheap,
    and exact for that purpose. With `adapter`, only the base weights and that adapter's count
    (`BASE_ADAPTER`: the base alone), so training one adapter does not mark another changed."""
    return tuple(
        v
        for name, p in model.named_parameters()
        if adapter is None or ".lora_" not in name or f".{adapter}." in name
        for v in (id(p), p._version)
    )
