"""Per-reward diagnostics for multi-reward training (GDPO / GD²PO and their weighted-sum
baseline): what each named reward does within groups, and how often rewards disagree."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tandemrl.algos._groups import group_index, group_stats
from tandemrl.algos.advantages import per_reward_advantages


def conflicts(
    rewards: Tensor,
    group_ids: Tensor,
    weights: Sequence[float] | Tensor | None = None,
    tol: float = 1e-6,
) -> Tensor:
    """GD²PO's conflict test (arXiv 2606.16771), bool [B]:
    C_i = (exists k: w_k A_{k,i} > tol) and (exists k': w_k' A_{k',i} < -tol),
    with A_{k,i} GDPO's per-reward group z-scores (``per_reward_advantages``).
    The same rule ``gd2po_advantages`` filters on, usable as a diagnostic for any method.
    """
    a = per_reward_advantages(rewards, group_ids)
    if weights is not None:
        a = a * torch.as_tensor(weights, dtype=a.dtype).flatten()
    return (a > tol).any(dim=1) & (a < -tol).any(dim=1)


def query_weights(keep: Tensor, group_ids: Tensor) -> Tensor:
    """GD²PO's query weight per group, w_q = kept_q / G_q, [num_groups] in sorted-id order."""
    inverse, num_groups = group_index(group_ids)
    kept = torch.zeros(num_groups).index_add_(0, inverse, keep.float())
    size = torch.zeros(num_groups).index_add_(0, inverse, torch.ones(keep.shape[0]))
    return kept / size


def multi_reward_stats(
    rewards: Tensor,
    group_ids: Tensor,
    names: Sequence[str],
    weights: Sequence[float] | Tensor | None = None,
    keep: Tensor | None = None,
) -> dict[str, float]:
    """Step metrics for K named rewards ``rewards`` [B, K] (NaN = abstain):

    ``reward/<name>/std`` (population std over the batch's answered rows),
    ``reward/<name>/zero_var_group_frac`` (share of groups where that reward is constant, i.e.
    gives no group-relative signal on its own), ``multi_reward/conflict_rate`` (share of answered
    rows whose weighted per-reward advantages have both signs, see ``conflicts``), and, when
    ``keep`` [B] is given, ``multi_reward/kept_frac`` and the query weights' mean/min/max and
    ``multi_reward/groups_all_dropped_frac``.
    """
    r = rewards.float()
    if r.dim() != 2 or r.shape[1] != len(names):
        raise ValueError(f"rewards {tuple(r.shape)} do not match {len(names)} reward names")
    inverse, num_groups = group_index(group_ids)
    st = group_stats(r, group_ids)
    out: dict[str, float] = {}
    for k, name in enumerate(names):
        col = r[:, k][~torch.isnan(r[:, k])]
        out[f"reward/{name}/std"] = col.std(unbiased=False).item() if col.numel() else 0.0
        first = torch.zeros(num_groups, dtype=torch.bool).index_put_((inverse,), st.constant[:, k])
        out[f"reward/{name}/zero_var_group_frac"] = first.float().mean().item()
    answered = ~torch.isnan(r).all(dim=1)
    c = conflicts(r, group_ids, weights) & answered
    out["multi_reward/conflict_rate"] = c.sum().item() / max(int(answered.sum()), 1)
    if keep is not None:
        w = query_weights(keep, group_ids)
        out["multi_reward/kept_frac"] = keep.float().mean().item()
        out["multi_reward/query_weight_mean"] = w.mean().item()
        out["multi_reward/query_weight_min"] = w.min().item()
        out["multi_reward/query_weight_max"] = w.max().item()
        out["multi_reward/groups_all_dropped_frac"] = (w == 0).float().mean().item()
    return out
