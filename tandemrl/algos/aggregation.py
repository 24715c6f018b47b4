"""Loss aggregation with an explicit, global normaliser.

Why explicit: a per-token loss reduced with a *local* mean over each microbatch (or rank) weighs
tokens differently depending on how the batch was cut, so gradient accumulation and data
parallelism silently change the objective. Here every mode divides by counts taken from the
*global* batch, carried by ``LossNormalizer``; microbatch losses then SUM to the big-batch loss,
and so do their gradients.

Usage over accumulation steps and ranks::

    norm = LossNormalizer.from_masks(*[mb.mask for mb in my_microbatches])  # this rank
    norm = norm.all_reduce()  # sums counts over ranks, max of horizon; no-op without dist
    for mb in my_microbatches:
        loss = aggregate(per_token_loss(mb), mb.mask, "token-mean", norm)
        (loss * world_size).backward()  # DDP *averages* grads over ranks; undo it

Modes (m = mask, n_i = sum_t m_it, N = normalizer):
  token-mean:               sum_it v_it m_it / N.num_tokens   (DAPO, arXiv 2503.14476)
  seq-mean-token-mean:      sum_i [sum_t v_it m_it / n_i] / N.num_sequences   (GRPO original)
  seq-mean-token-sum-norm:  sum_it v_it m_it / N.horizon / N.num_sequences   (Dr.GRPO,
                            arXiv 2503.20783; horizon = a constant such as max response length)
An all-masked row contributes 0 and is *not* counted in num_sequences: such rows are padding or
dropped rollouts, and counting them would make the loss depend on how much padding a batcher
added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tandemrl.algos.registry import Registry

AggregationFn = Callable[[Tensor, Tensor, "LossNormalizer"], Tensor]

AGGREGATIONS: Registry[AggregationFn] = Registry(
    "loss aggregation",
    signature="fn(values: Tensor [B, T], mask: Tensor [B, T], normalizer: LossNormalizer)"
    " -> scalar Tensor",
)


@dataclass(frozen=True)
class LossNormalizer:
    """Global counts used as loss denominators (see module docstring).

    num_tokens: sum of mask over the whole global batch (all microbatches, all ranks).
    num_sequences: number of rows with at least one valid token, same scope.
    horizon: the constant of ``seq-mean-token-sum-norm``; None = not set (that mode then fails).
    """

    num_tokens: float
    num_sequences: float
    horizon: float | None = None

    @classmethod
    def from_masks(cls, *masks: Tensor, horizon: float | None = None) -> LossNormalizer:
        """Counts over one or several [B, T] masks (e.g. all microbatches of a step).

        ``horizon`` defaults to the widest mask's T; pass the max response length to make it a
        true constant across steps (Dr.GRPO).
        """
        if not masks:
            raise ValueError("from_masks needs at least one mask")
        tokens = sum(float(m.float().sum()) for m in masks)
        seqs = sum(float((m.float().sum(dim=-1) > 0).sum()) for m in masks)
        if horizon is None:
            horizon = float(max(m.shape[-1] for m in masks))
        return cls(tokens, seqs, float(horizon))

    @classmethod
    def merge(cls, *parts: LossNormalizer) -> LossNormalizer:
        """Combine per-rank normalisers: counts add, horizon is the max (what all_reduce does)."""
        horizons = [p.horizon for p in parts if p.horizon is not None]
        return cls(
            sum(p.num_tokens for p in parts),
            sum(p.num_sequences for p in parts),
            max(horizons) if horizons else None,
        )

    def all_reduce(
        self, group: object = None, device: torch.device | str | None = None
    ) -> LossNormalizer:
        """Sum counts (max horizon) over torch.distributed ranks; returns self when not running.

        ``device`` defaults to the current CUDA device under NCCL (which cannot reduce CPU
        tensors), else CPU.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return self
        if device is None:
            nccl = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu"
        f64 = {"dtype": torch.float64, "device": device}
        counts = torch.tensor([self.num_tokens, self.num_sequences], **f64)
        horizon = torch.tensor([self.horizon if self.horizon is not None else -1.0], **f64)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(horizon, op=dist.ReduceOp.MAX, group=group)
        h = float(horizon.item())
        return LossNormalizer(float(counts[0]), float(counts[1]), h if h >= 0 else None)


def _safe(denominator: float) -> float:
    # An empty global batch has a zero numerator too; return 0 rather than NaN.
    return denominator if denominator > 0 else 1.0


@AGGREGATIONS.register("token-mean")
def token_mean(values: Tensor, mask: Tensor, normalizer: LossNormalizer) -> Tensor:
    return (values * mask).sum() / _safe(normalizer.num_tokens)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(values: Tensor, mask: Tensor, normalizer: LossNormalizer) -> Tensor:
    m = mask.to(values.dtype)
    per_seq = (values * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1e-8)
    per_seq = torch.where(m.sum(dim=-1) > 0, per_seq, torch.zeros_like(per_seq))
    return per_seq.sum() / _safe(normalizer.num_sequences)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values: Tensor, mask: Tensor, normalizer: LossNormalizer) -> Tensor:
    if normalizer.horizon is None:
        raise ValueError("seq-mean-token-sum-norm needs LossNormalizer.horizon")
    total = (values * mask).sum()
    return total / normalizer.horizon / _safe(normalizer.num_sequences)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str | AggregationFn = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> Tensor:
    """Reduce per-token ``values`` [B, T] to a scalar with the named mode (see module docstring).

    ``normalizer=None`` means "this batch is the whole batch": counts come from ``mask``.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ")
    if normalizer is None:
        normalizer = LossNormalizer.from_masks(mask)
    return AGGREGATIONS.get(mode)(values, mask.to(values.dtype), normalizer)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over entries where mask is set (0 when there are none)."""
    m = mask.to(values.dtype)
    if dim is None:
        return (values * m).sum() / m.sum().clamp(min=1e-8)
    return (values * m).sum(dim) / m.sum(dim).clamp(min=1e-8)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over masked entries (PPO's advantage whitening); 0 outside the mask."""
    m = mask.to(values.dtype)
    mean = masked_mean(values, m)
    var = masked_mean((values - mean) ** 2, m)
    return (values - mean) * torch.rsqrt(var + eps) * m
