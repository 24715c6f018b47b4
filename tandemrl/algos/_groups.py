"""NaN-aware per-group statistics over flat batches with arbitrary group ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GroupStats:
    """Statistics broadcast back to each element (same shape as the input values).

    mean/std over the group's valid (non-NaN) entries; ``count`` = number of valid entries;
    ``constant`` = fewer than two valid entries or all valid entries exactly equal (decided by
    max == min, not by std == 0, so float round-off in the mean cannot leak a tiny advantage).
    """

    mean: Tensor
    std: Tensor
    count: Tensor
    constant: Tensor
    valid: Tensor


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense index 0..G-1 per element and the number of groups G."""
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D [B], got shape {tuple(group_ids.shape)}")
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(uniq.numel())


def group_stats(values: Tensor, group_ids: Tensor, *, unbiased: bool = True) -> GroupStats:
    """Per-group moments of ``values`` [B] or [B, K] (columns independent), NaN = excluded."""
    squeeze = values.dim() == 1
    v = values.unsqueeze(-1) if squeeze else values
    if v.dim() != 2 or v.shape[0] != group_ids.shape[0]:
        raise ValueError(
            f"values {tuple(values.shape)} and group_ids {tuple(group_ids.shape)} disagree"
        )
    if not v.is_floating_point():
        v = v.float()
    inverse, num_groups = group_index(group_ids)
    valid = ~torch.isnan(v)
    filled = torch.where(valid, v, torch.zeros_like(v))
    shape = (num_groups, v.shape[1])
    count = v.new_zeros(shape).index_add_(0, inverse, valid.to(v.dtype))
    mean = v.new_zeros(shape).index_add_(0, inverse, filled) / count.clamp(min=1)
    dev = torch.where(valid, v - mean[inverse], torch.zeros_like(v))
    sq = v.new_zeros(shape).index_add_(0, inverse, dev * dev)
    dof = (count - 1) if unbiased else count
    std = (sq / dof.clamp(min=1)).sqrt()
    idx = inverse.unsqueeze(-1).expand_as(v)
    inf = torch.full_like(v, float("inf"))
    vmax = v.new_full(shape, -float("inf")).scatter_reduce(
        0, idx, torch.where(valid, v, -inf), "amax"
    )
    vmin = v.new_full(shape, float("inf")).scatter_reduce(
        0, idx, torch.where(valid, v, inf), "amin"
    )
    constant = (count < 2) | (vmax == vmin)
    out = [mean[inverse], std[inverse], count[inverse], constant[inverse], valid]
    if squeeze:
        out = [t.squeeze(-1) for t in out]
    return GroupStats(*out)
