"""Memory: returning freed heap memory to the operating system between microbatches, and
activation checkpointing."""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from typing import Any


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Why: on CPU, tensors come from glibc's heap. A microbatch's activations are freed after
    its backward pass, but glibc keeps the pages, and the next microbatch's allocations (other
    sizes: other prompt and response lengths) do not all fit back into them, so the peak RSS
    creeps up by hundreds of MB over a step although live tensors never exceed one
    microbatch's. `tandem bench speed` (SmolLM2-135M, LoRA), before and after trimming every
    microbatch: GRPO 2248 -> 2160 MB, DuPO 2688 -> 2496 MB (benchmarks/results/
    speed-2026-11-22-shared-prompts.md and speed-2026-11-22-final.md).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them
    (`gradient_checkpointing=true`): activation memory drops from every layer's to one
    layer's, for about one more forward per step. Non-reentrant checkpointing, which works
    with frozen inputs (LoRA) and with FSDP2. Transformers 5 renamed the switch; both work."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        with warnings.catch_warnings():  # it calls the deprecated name itself in 5.23
            warnings.simplefilter("ignore", FutureWarning)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
