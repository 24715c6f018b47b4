"""Advantage estimators: group-relative (GRPO family, RLOO, GDPO, GD²PO) and GAE.

Conventions shared by the group estimators (registered in ``ADVANTAGES``):

- ``rewards`` is [B] (one reward) or [B, K] (K named rewards); ``group_ids`` LongTensor [B] with
  arbitrary ids (members need not be contiguous; groups may differ in size).
- NaN = abstain (a reward function returned None; see ``to_reward_tensor``). An abstained entry is
  left out of its group's statistics and gets advantage 0. With K rewards abstention is per
  reward; a rollout that abstains on every reward is dropped (``keep`` False).
- A group with fewer than two valid rewards gets advantage 0: its std is undefined and a
  baseline from the sample itself leaves nothing to learn. A group whose rewards are all equal
  also gets exactly 0.
- std is the unbiased (Bessel) sample std, as in TRL's and verl's GRPO; pass ``unbiased=False``
  for the population std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tandemrl.algos._groups import group_index, group_stats
from tandemrl.algos.registry import Registry
from tandemrl.algos.types import AdvantageResult

AdvantageFn = Callable[..., AdvantageResult]

ADVANTAGES: Registry[AdvantageFn] = Registry(
    "advantage estimator",
    signature="fn(rewards: Tensor [B] or [B, K], group_ids: LongTensor [B], **options)"
    " -> AdvantageResult",
)


def to_reward_tensor(values: Sequence[float | None] | Sequence[Sequence[float | None]]) -> Tensor:
    """Reward lists (None = abstain) -> float32 tensor with NaN for None."""

    def conv(x: float | None) -> float:
        return float("nan") if x is None else float(x)

    if values and isinstance(values[0], Sequence):
        return torch.tensor([[conv(x) for x in row] for row in values], dtype=torch.float32)
    return torch.tensor([conv(x) for x in values], dtype=torch.float32)


def _summary(adv: Tensor, keep: Tensor) -> dict[str, float]:
    kept = adv[keep]
    n = max(int(keep.numel()), 1)
    return {
        "advantage/mean": kept.mean().item() if kept.numel() else 0.0,
        "advantage/std": kept.std().item() if kept.numel() > 1 else 0.0,
        "advantage/abs_mean": kept.abs().mean().item() if kept.numel() else 0.0,
        "advantage/kept_frac": keep.sum().item() / n,
    }


def _zero_var_group_frac(constant: Tensor, group_ids: Tensor) -> float:
    inverse, num_groups = group_index(group_ids)
    per_group = constant.new_zeros(num_groups).index_put_((inverse,), constant)
    return per_group.float().mean().item()


def _as_float(rewards: Tensor) -> Tensor:
    return rewards if rewards.is_floating_point() else rewards.float()


@ADVANTAGES.register("grpo")
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    std_mode: str = "group",
    eps: float = 1e-6,
    unbiased: bool = True,
) -> AdvantageResult:
    """GRPO group-relative advantage (DeepSeekMath, arXiv 2402.03300).

    A_i = (r_i - mean_g r) / (s + eps), where s depends on ``std_mode``:
      "group": std of the group's rewards (GRPO);
      "batch": std of all valid rewards in the batch (batch-level scale, still group-centred);
      "none":  s + eps := 1, i.e. A_i = r_i - mean_g r (Dr.GRPO, arXiv 2503.20783).
    """
    if rewards.dim() != 1:
        raise ValueError(f"grpo expects rewards [B], got {tuple(rewards.shape)}; use 'gdpo' for K")
    r = _as_float(rewards)
    st = group_stats(r, group_ids, unbiased=unbiased)
    centred = torch.where(st.valid, r - st.mean, torch.zeros_like(r))
    if std_mode == "group":
        adv = centred / (st.std + eps)
    elif std_mode == "batch":
        valid_r = r[st.valid]
        batch_std = valid_r.std(unbiased=unbiased) if valid_r.numel() > 1 else r.new_zeros(())
        adv = centred / (batch_std + eps)
    elif std_mode == "none":
        adv = centred
    else:
        raise ValueError(f"std_mode must be 'group', 'batch' or 'none', got {std_mode!r}")
    adv = torch.where(st.constant | ~st.valid, torch.zeros_like(adv), adv)
    keep = st.valid
    metrics = _summary(adv, keep)
    metrics["advantage/abstain_frac"] = 1.0 - keep.float().mean().item()
    metrics["advantage/zero_var_group_frac"] = _zero_var_group_frac(st.constant, group_ids)
    return AdvantageResult(adv, keep, metrics)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> AdvantageResult:
    """REINFORCE leave-one-out baseline (Ahmadian et al., arXiv 2402.14740).

    A_i = r_i - (1/(n-1)) sum_{j != i} r_j = n/(n-1) * (r_i - mean_g r), n = valid group size.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rloo expects rewards [B], got {tuple(rewards.shape)}")
    r = _as_float(rewards)
    st = group_stats(r, group_ids)
    n = st.count
    adv = (r - st.mean) * n / (n - 1).clamp(min=1)
    adv = torch.where(st.constant | ~st.valid, torch.zeros_like(r), adv)
    metrics = _summary(adv, st.valid)
    metrics["advantage/zero_var_group_frac"] = _zero_var_group_frac(st.constant, group_ids)
    return AdvantageResult(adv, st.valid, metrics)


def _weights(weights: Sequence[float] | Tensor | None, k: int, like: Tensor) -> Tensor:
    if weights is None:
        return like.new_ones(k)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != k:
        raise ValueError(f"{w.numel()} weights for {k} rewards")
    return w


def per_reward_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """GDPO's per-reward group advantages (arXiv 2601.05242), [B] or [B, K] -> [B, K]:
    A_{k,i} = (r_{k,i} - mean_g r_k) / (std_g r_k + eps); 0 if abstained or the group is constant.
    """
    r = _as_float(rewards)
    r = r.unsqueeze(-1) if r.dim() == 1 else r
    st = group_stats(r, group_ids)
    adv = (r - st.mean) / (st.std + eps)
    return torch.where(st.constant | ~st.valid, torch.zeros_like(adv), adv)


def whiten(values: Tensor, keep: Tensor, eps: float = 1e-6) -> Tensor:
    """(x - mean_kept x) / (std_kept x + eps) on kept entries, 0 elsewhere (0 if all equal)."""
    kept = values[keep]
    if kept.numel() < 2 or bool(kept.max() == kept.min()):
        return torch.zeros_like(values)
    out = (values - kept.mean()) / (kept.std() + eps)
    return torch.where(keep, out, torch.zeros_like(out))


def _multi_reward_inputs(rewards: Tensor, weights) -> tuple[Tensor, Tensor, Tensor]:
    r = rewards.unsqueeze(-1) if rewards.dim() == 1 else rewards
    if r.dim() != 2:
        raise ValueError(f"rewards must be [B] or [B, K], got {tuple(rewards.shape)}")
    w = _weights(weights, r.shape[1], _as_float(r))
    answered = ~torch.isnan(_as_float(r)).all(dim=1)
    return r, w, answered


@ADVANTAGES.register("gdpo")
def gdpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    weights: Sequence[float] | Tensor | None = None,
    eps: float = 1e-6,
    batch_norm: bool = True,
) -> AdvantageResult:
    """GDPO: normalise each reward within its group, then sum (arXiv 2601.05242).

    A_{k,i} = (r_{k,i} - mean_g r_k) / (std_g r_k + eps);  S_i = sum_k w_k A_{k,i};
    A_i = (S_i - mean_B S) / (std_B S + eps) over rollouts with any answered reward
    (``batch_norm=False`` returns S). Normalising per reward first stops a reward with a large
    spread from drowning the others, which a sum-then-normalise GRPO would do. A group with no
    variance in any reward keeps A = 0.
    """
    r, w, keep = _multi_reward_inputs(rewards, weights)
    summed = (per_reward_advantages(r, group_ids, eps) * w).sum(dim=1)
    zeros = torch.zeros_like(summed)
    adv = whiten(summed, keep, eps) if batch_norm else torch.where(keep, summed, zeros)
    adv = torch.where(_without_signal(r, group_ids), zeros, adv)
    return AdvantageResult(adv, keep, _summary(adv, keep))


def _without_signal(r: Tensor, group_ids: Tensor) -> Tensor:
    """[B] rows whose group has no variance in any reward: they carry no signal, and keep
    advantage 0 whatever the batch whitening shifts (its mean is not 0 once rows are dropped)."""
    st = group_stats(_as_float(r), group_ids)
    return (st.constant | ~st.valid).all(dim=1)


@ADVANTAGES.register("gd2po")
def gd2po_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    weights: Sequence[float] | Tensor | None = None,
    filter: str = "hard",
    tau: float = 0.5,
    query_reweight: bool = True,
    eps: float = 1e-6,
    conflict_tol: float = 1e-6,
) -> AdvantageResult:
    """GD²PO: GDPO with conflict filtering and query reweighting (arXiv 2606.16771).

    With a_{k,i} = w_k A_{k,i} (GDPO per-reward advantages, weighted):
      conflict C_i = (exists k: a_{k,i} > 0) and (exists k': a_{k',i} < 0);
      filter "hard": drop if C_i;  "snr": drop if C_i and |s_i| < tau with
      s_i = sum_k a_{k,i} / sum_k |a_{k,i}|;  "none": drop nothing;
      query weight w_q = kept_q / G_q (G_q = all rollouts of the group, abstained included);
      A_i = whiten over kept rollouts of (w_q * sum_k a_{k,i}); dropped -> 0, keep False;
      a group with no variance in any reward -> 0 (the whitening's shift would otherwise give
      it a signal it does not have once filtering breaks the batch's symmetry).
    With unit weights this is the paper's rule; the weights enter before the conflict test so
    that, with no conflicts, the result equals ``gdpo_advantages`` exactly. A per-reward
    advantage with |a| <= ``conflict_tol`` counts as neither sign: a rollout sitting at a
    reward's group mean must not "conflict" through float round-off.
    """
    r, w, answered = _multi_reward_inputs(rewards, weights)
    a = per_reward_advantages(r, group_ids, eps) * w
    conflict = (a > conflict_tol).any(dim=1) & (a < -conflict_tol).any(dim=1) & answered
    total = a.sum(dim=1)
    if filter == "hard":
        drop = conflict
    elif filter == "snr":
        snr = total / a.abs().sum(dim=1).clamp(min=1e-12)
        drop = conflict & (snr.abs() < tau)
    elif filter == "none":
        drop = torch.zeros_like(conflict)
    else:
        raise ValueError(f"filter must be 'hard', 'snr' or 'none', got {filter!r}")
    keep = answered & ~drop
    inverse, num_groups = group_index(group_ids)
    kept_per_group = total.new_zeros(num_groups).index_add_(0, inverse, keep.to(total.dtype))
    size_per_group = total.new_zeros(num_groups).index_add_(0, inverse, torch.ones_like(total))
    q_weight = (kept_per_group / size_per_group)[inverse]
    scaled = total * q_weight if query_reweight else total
    adv = whiten(scaled, keep, eps)
    adv = torch.where(_without_signal(r, group_ids), torch.zeros_like(adv), adv)
    metrics = _summary(adv, keep)
    n_answered = max(int(answered.sum()), 1)
    metrics["gd2po/conflict_rate"] = conflict.sum().item() / n_answered
    metrics["gd2po/dropped_frac"] = drop.sum().item() / n_answered
    metrics["gd2po/query_weight_mean"] = (kept_per_group / size_per_group).mean().item()
    return AdvantageResult(adv, keep, metrics)


def gae(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation for PPO (Schulman et al., arXiv 1506.02438).

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  returns = A + V.
    "t+1" is the next *valid* token: masked positions are skipped (right padding acts as the
    terminal state with V = 0, interior gaps such as tool outputs are stepped over), so a padded
    row gives exactly the values of the same row unpadded. Outputs are 0 where mask is 0.
    Not registered in ``ADVANTAGES``: it needs a critic, not groups.
    """
    if token_rewards.shape != values.shape or values.shape != mask.shape:
        raise ValueError("token_rewards, values and mask must all be [B, T]")
    m = mask.to(values.dtype)
    next_value = values.new_zeros(values.shape[0])
    next_adv = values.new_zeros(values.shape[0])
    adv = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_adv
        adv[:, t] = a_t * m[:, t]
        next_value = torch.where(m[:, t] > 0, values[:, t], next_value)
        next_adv = torch.where(m[:, t] > 0, a_t, next_adv)
    returns = (adv + values) * m
    return adv, returns


__all__ = [
    "ADVANTAGES",
    "gae",
    "gd2po_advantages",
    "gdpo_advantages",
    "grpo_advantages",
    "per_reward_advantages",
    "rloo_advantages",
    "to_reward_tensor",
    "whiten",
]
