"""Where a run computes and in which precision: `device`, `precision` and
`gradient_checkpointing` (config keys), resolved once per run into a `Compute`.

- device: `auto` is the accelerator when there is one (CUDA, under `torchrun` each rank its
  `LOCAL_RANK` GPU; else Apple's MPS) and the CPU otherwise; or `cpu`, `cuda`, `cuda:N`, `mps`.
- precision: `fp32`; `bf16-mixed` keeps fp32 weights and fp32 optimizer state and runs forward
  and backward under bf16 autocast (log-probs and losses are computed in fp32: `score_tokens`
  upcasts the logits); `bf16` stores the weights themselves in bf16 (half the memory, and
  optimizer updates rounded to bf16). `auto`: `bf16-mixed` on CUDA, `fp32` elsewhere (on CPUs
  without bf16 units bf16 is emulated and slower; `tandem bench speed --precision` measures it).
- gradient_checkpointing: recompute each decoder layer's activations in the backward instead of
  keeping them (less memory, about a third more compute); None = on for accelerators.

The batch's bookkeeping (rewards, advantages, masks) stays on the CPU; the model's inputs move
to the device for each forward (`RolloutBatch.to`) and scores come back to the CPU once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tandemrl.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16")


@dataclass(frozen=True)
class Compute:
    """A run's resolved device, precision and checkpointing."""

    device: torch.device
    precision: str  # fp32, bf16-mixed or bf16
    gradient_checkpointing: bool

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast for `bf16-mixed`; nothing otherwise."""
        if self.precision != "bf16-mixed":
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            yield


def resolve_device(spec: str) -> torch.device:
    """The torch device `spec` names (module docstring); a ConfigError when it is absent."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(
            f"device: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={spec}: this torch build or machine has no CUDA; use device=cpu or auto"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ConfigError(f"device={spec}: there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: MPS is not available here; use device=cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={spec}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_compute(device: str, precision: str, gradient_checkpointing: bool | None) -> Compute:
    where = resolve_device(device)
    accelerator = where.type != "cpu"
    if precision == "auto":
        precision = "bf16-mixed" if where.type == "cuda" else "fp32"
    if gradient_checkpointing is None:
        gradient_checkpointing = accelerator
    return Compute(where, precision, bool(gradient_checkpointing))
