"""Token-level advantage shaping and selection: Policy Split's entropy term and D³S."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tandemrl.algos._groups import group_index


def policy_split_token_advantages(
    advantages: Tensor,
    surprisal_own: Tensor,
    surprisal_other: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    *,
    alpha: float = 0.5,
    eta: float = 0.03,
    kappa: float = 2.0,
) -> tuple[Tensor, dict[str, float]]:
    """Policy Split high-entropy-mode token advantages (arXiv 2604.11510, METHODS §4).

    e_it = alpha * (-log pi(y_t | s, q)) + (1 - alpha) * (-log pi(y_t | q))   (own / other mode)
    z_it = (e_it - mean_g e) / std_g e over all valid tokens of the group (0 if std is 0)
    A_it = A_i + clip(eta * z_it, -|A_i| / kappa, |A_i| / kappa);  0 outside the mask.

    The clamp makes the term vanish when A_i = 0 (no outcome signal, no entropy push) and, for
    kappa > 1, never flips the sign of A_i. kappa is not given by the source; default 2.0 keeps
    every token advantage within [A_i/2, 3A_i/2]: the entropy preference reorders tokens inside
    a response but cannot cancel the outcome signal, the guard the paper's collapse at large
    eta calls for. The normal mode uses plain A_i. Inputs are treated as constants (detached).
    """
    m = mask > 0
    e = (alpha * surprisal_own + (1.0 - alpha) * surprisal_other).detach().double()
    inverse, num_groups = group_index(group_ids)
    idx = inverse.unsqueeze(-1).expand_as(e).reshape(-1)
    w = m.reshape(-1).double()
    count = e.new_zeros(num_groups).index_add_(0, idx, w).clamp(min=1)
    mean = e.new_zeros(num_groups).index_add_(0, idx, (e * m).reshape(-1)) / count
    dev = torch.where(m, e - mean[inverse].unsqueeze(-1), torch.zeros_like(e))
    var = e.new_zeros(num_groups).index_add_(0, idx, (dev * dev).reshape(-1)) / count
    std = var.sqrt()[inverse].unsqueeze(-1)
    z = torch.where(std > 0, dev / std.clamp(min=1e-30), torch.zeros_like(dev))
    a = advantages.detach().double().unsqueeze(-1)
    bound = a.abs() / kappa
    raw = eta * z
    bonus = torch.maximum(torch.minimum(raw, bound), -bound)
    token_adv = torch.where(m, a + bonus, torch.zeros_like(bonus)).to(advantages.dtype)
    with torch.no_grad():
        n = max(int(m.sum()), 1)
        clipped = m & (raw.abs() > bound) & (a != 0)
        metrics = {
            "policy_split/entropy_term_mean": float((e * m).sum() / n),
            "policy_split/bonus_abs_mean": float((bonus.abs() * m).sum() / n),
            "policy_split/clip_frac": float(clipped.sum() / n),
        }
    return token_adv, metrics


def _max_variance_subset(values: Tensor, k: int) -> Tensor:
    """Indices of the size-k subset of ``values`` with the largest (population) variance.

    The optimum is always "j smallest + (k - j) largest": for fixed other members the variance
    is convex in one member, so any member can be swapped for an extreme without loss. That
    leaves k + 1 candidates to check instead of C(n, k).
    """
    order = torch.argsort(values, stable=True)
    n = values.numel()
    best, best_var = order[:k], -1.0
    for j in range(k + 1):
        chosen = torch.cat([order[:j], order[n - (k - j) :]])
        var = float(values[chosen].double().var(unbiased=False)) if k > 1 else 0.0
        if var > best_var + 1e-12:
            best, best_var = chosen, var
    return best


def d3s_sample_select(
    advantages: Tensor,
    group_ids: Tensor,
    keep_ratio: float,
    *,
    keep: Tensor | None = None,
    min_keep: int = 2,
) -> tuple[Tensor, dict[str, float]]:
    """D³S sample-level down-sampling (arXiv 2509.22115): per group, keep the
    k = min(n, max(min_keep, ceil(keep_ratio * n))) rollouts whose advantages have maximal
    variance Var(A), which the paper ties to a larger policy-gradient norm bound.

    n counts the group's candidates (``keep`` True, default all). Advantages are not recomputed
    on the subset. Returns a bool mask [B] and metrics.
    """
    candidates = torch.ones_like(advantages, dtype=torch.bool) if keep is None else keep.bool()
    selected = torch.zeros_like(candidates)
    inverse, num_groups = group_index(group_ids)
    var_before, var_after = [], []
    for g in range(num_groups):
        members = torch.nonzero((inverse == g) & candidates).squeeze(-1)
        n = members.numel()
        if n == 0:
            continue
        k = min(n, max(min_keep, math.ceil(keep_ratio * n)))
        vals = advantages[members].detach()
        chosen = members[_max_variance_subset(vals, k)]
        selected[chosen] = True
        var_before.append(float(vals.double().var(unbiased=False)))
        var_after.append(float(advantages[chosen].double().var(unbiased=False)))
    total = max(int(candidates.sum()), 1)
    metrics = {
        "d3s/sample_kept_frac": float(selected.sum()) / total,
        "d3s/adv_var_before": sum(var_before) / max(len(var_before), 1),
        "d3s/adv_var_after": sum(var_after) / max(len(var_after), 1),
    }
    return selected, metrics


def d3s_token_select(
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor,
    keep_ratio: float,
    *,
    scope: str = "batch",
) -> tuple[Tensor, dict[str, float]]:
    """D³S token-level down-sampling (arXiv 2509.22115): keep the top ceil(keep_ratio * n)
    valid tokens by score |A_it| * H_it, counted over the whole batch (``scope="batch"``) or
    within each sequence (``"sequence"``). advantages [B] or [B, T]. Returns bool [B, T].
    """
    m = mask > 0
    adv = advantages.unsqueeze(-1).expand_as(entropy) if advantages.dim() == 1 else advantages
    score = (adv.abs() * entropy).detach().float()
    score = torch.where(m, score, torch.full_like(score, -float("inf")))
    selected = torch.zeros_like(m)
    if scope == "batch":
        k = min(math.ceil(keep_ratio * int(m.sum())), int(m.sum()))
        flat = selected.view(-1)
        flat[torch.topk(score.view(-1), k).indices] = True
    elif scope == "sequence":
        for i in range(m.shape[0]):
            k = min(math.ceil(keep_ratio * int(m[i].sum())), int(m[i].sum()))
            selected[i, torch.topk(score[i], k).indices] = True
    else:
        raise ValueError(f"scope must be 'batch' or 'sequence', got {scope!r}")
    selected &= m
    kept = float(selected.sum()) / max(int(m.sum()), 1)
    return selected, {"d3s/token_kept_frac": kept}


def d3s_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear keep-ratio schedule from ``start`` (aggressive, e.g. 0.5) at step 0 to ``end``
    (relaxed, e.g. 1.0) at ``total_steps``, constant afterwards (D³S, arXiv 2509.22115)."""
    if total_steps <= 0:
        return end
    frac = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * frac
