"""FSDP2 sharding of a Hugging Face causal LM (`distributed.strategy=fsdp2`).

`shard_model` applies `torch.distributed.fsdp.fully_shard` to each decoder layer and then to
the whole model: every rank keeps 1/world of each parameter, its gradient and (because the
optimizer is built on the sharded parameters) its optimizer state; a layer's full weights
exist only while that layer runs. The embeddings and the LM head stay in the root group, so
tied embeddings stay tied. LoRA models shard the same way (frozen base weights and trainable
adapters share a layer's group); their root is the Hugging Face model inside the peft wrapper,
because peft's `generate` calls that model, not the wrapper, and the root's hooks must run.

What a sharded model changes for the code that runs it (each handled where it happens):
- every rank must run the same forwards: generation uses `synced_gpus` and no shared-prompt
  prefill; `score_tokens` does not share prompts (`is_sharded`);
- gradients arrive reduced and averaged over ranks, so the update engine scales each rank's
  loss by the world size (our losses carry the global denominator and must be SUMmed);
- parameters and gradients are DTensors: norms and finiteness checks use `local`/`full_tensor`.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (peft-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(
            f"distributed.strategy=fsdp2: cannot find the decoder layers of "
            f"{type(base).__name__} (expected model.get_decoder().layers)"
        )
    return list(layers)


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2-shard `model` in place over every rank of the default process group, its shards
    on `device` (module docstring). The model may still be on the CPU: each layer moves to
    `device` as it is sharded, so the whole model is never on one accelerator. (Every rank
    has loaded the whole model into CPU memory first; loading on rank 0 only is not built.)"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model.get_base_model() if hasattr(model, "get_base_model") else model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` (or a module inside it) is FSDP2-sharded."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) or any(isinstance(m, FSDPModule) for m in model.modules())


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor; a plain tensor as it is."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a DTensor (a collective: every rank must call it); a plain tensor
    as it is."""
    full = getattr(tensor, "full_tensor", None)
    return full() if full is not None else tensor


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s parameters live (the CPU for a model without any)."""
    for param in model.parameters():
        return local(param).device
    return torch.device("cpu")
