"""Data parallelism over torch.distributed: one process per device, launched by `torchrun`.

    torchrun --nproc_per_node 2 -m tandemrl.cli train model=tiny ...

What each rank does, and why the result is the single-process update on the same global batch:

- every rank holds the whole policy (same seed, then parameters broadcast from rank 0);
- the step's N prompts are cut into contiguous shards of N / world_size (`shard`), and each
  rank samples all G responses of its own prompts, so a group never spans ranks and group
  statistics (advantages, the dual-policy sharing sets) need no communication;
- loss denominators are global (`global_normalizer`: token and sequence counts summed over
  ranks), so rank r's loss is sum_{its tokens} l_t / N_global and the per-rank losses SUM to
  the single-process loss; hence gradients are all-reduced with SUM, not averaged
  (`all_reduce_gradients`), before clipping, and every rank takes the same optimizer step;
- metrics are gathered to rank 0 (`gather_metrics`): loss terms and counts add, timings take
  the max, everything else is averaged over ranks (exact for equal-size shards);
- only rank 0 writes (run directory, checkpoints, TensorBoard, progress bar, evaluation).

One process (no `WORLD_SIZE` in the environment) makes every function here a no-op, so the
methods call them unconditionally. Backend: NCCL when CUDA is available, else gloo.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from tandemrl.algos import LossNormalizer

T = TypeVar("T")

# Metric keys reduced by SUM over ranks: loss terms (each rank's share of a global mean) and
# counts. Keys reduced by MAX: wall-clock and memory. Every other metric is a rank mean.
_SUM_SUFFIXES = ("loss", "errors", "_count")
_MAX_PREFIXES = ("time/", "memory/")


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group `torchrun` describes (WORLD_SIZE, RANK, MASTER_ADDR/PORT in the
    environment). Returns whether this is a multi-process run; one process is a no-op."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _device() -> torch.device:
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: Sequence[T], what: str = "rollout.prompts_per_step") -> list[T]:
    """This rank's contiguous slice of `items`; rank order concatenates back to `items`."""
    n, w, r = len(items), world_size(), rank()
    if n % w:
        from tandemrl.errors import ConfigError

        raise ConfigError(
            f"{what}={n} does not split over {w} processes; use a multiple of {w} so every "
            "rank gets the same number of prompts"
        )
    size = n // w
    return list(items[r * size : (r + 1) * size])


def global_normalizer(*masks: torch.Tensor, horizon: float | None = None) -> LossNormalizer:
    """`LossNormalizer.from_masks` over this rank's masks, summed over all ranks; `horizon`
    (Dr.GRPO's constant) defaults to the widest mask."""
    return LossNormalizer.from_masks(*masks, horizon=horizon).all_reduce()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a list of floats over ranks (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.cpu().tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (e.g. a stop signal seen by one)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (missing grads count as zero).

    SUM, not mean: each rank's loss already carries the global denominator (see module
    docstring), so the sum is the gradient of the single-process loss.
    """
    params = list(params)
    if not is_distributed() or any(hasattr(p, "to_local") for p in params):
        return  # one process, or FSDP2-sharded parameters (reduced by FSDP itself)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params]).to(_device())
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (start of training, before any
    sharding)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            buf = tensor.data.to(_device())
            torch.distributed.broadcast(buf, src=0)
            tensor.data.copy_(buf)


def all_gather_object(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (pickled; small objects only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def reduce_metric(key: str, values: list[float]) -> float:
    """How one metric combines over ranks: SUM for loss terms and counts, MAX for time and
    memory, else the mean of the finite values (NaN if none)."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if key.startswith(_MAX_PREFIXES):
        return max(finite) if finite else math.nan
    if key.endswith(_SUM_SUFFIXES):
        return float(sum(finite)) if finite else math.nan
    return sum(finite) / len(finite) if finite else math.nan


def gather_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Every rank's step metrics combined by `reduce_metric` (identical on all ranks)."""
    if not is_distributed():
        return metrics
    parts = all_gather_object(metrics)
    keys = list(dict.fromkeys(k for part in parts for k in part))
    out: dict[str, Any] = {}
    for key in keys:
        values = [part[key] for part in parts if key in part]
        if all(isinstance(v, int | float) for v in values):
            out[key] = reduce_metric(key, [float(v) for v in values])
        else:
            out[key] = values[0]
    return out


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()
