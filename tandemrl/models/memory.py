"""Returning freed heap memory to the operating system between microbatches."""

from __future__ import annotations

import contextlib
import ctypes


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
