"""One torch thread for the tiny model: fastest on its small matrices, keeps a loaded CI
machine from thrashing, and makes float results repeat (reduction order follows threads)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
