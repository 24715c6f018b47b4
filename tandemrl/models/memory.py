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


# mallopt parameter number of M_MMAP_THRESHOLD (glibc malloc.h)
_M_MMAP_THRESHOLD = -3


def map_large_blocks(threshold: int = 1 << 20) -> None:
    """Serve allocations of `threshold` bytes and more with their own mmap, returned to the
    OS when freed (glibc `mallopt(M_MMAP_THRESHOLD)`; a no-op elsewhere). Process-wide.

    Why: glibc raises its mmap threshold each time a large mmapped block is freed (up to 32
    MB), after which such blocks come from the heap and stay in the RSS once freed. FSDP2 frees
    and reallocates every layer's gathered weights and gradients each forward and backward;
    on the heap that fragmentation kept a 2-rank FSDP2 run's peak RSS per rank at 0.97x a
    single process's for SmolLM2-135M full fine-tuning (`tandem bench compute --what fsdp2`;
    the figure with it is in docs/distributed.md). Used for FSDP2 on the CPU only: applied to
    every run it cost step time (fresh pages for every large activation: with it, gradient
    checkpointing took 1.59x the step time of no checkpointing, against 1.05x without it;
    benchmarks/results/compute-2026-12-02-mmap-all.md and compute-2026-12-02-heap.md).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)


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
