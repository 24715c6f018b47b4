"""The maths of two interacting policies (the dual-policy method, DuPO of seed 000; docs/dupo.md), as pure functions.

The source blog names the interactions but gives no formulas; the ones below are ours and are
what ``tandemrl.methods.dupo`` uses. Notation: E = exploration policy, X = exploitation policy,
r = task reward, g(i) = the group (prompt) of response i, R_g / S_g = receiver / giver rows of g.

  share_candidates        i in S shared iff r_i >= r_min and r_i > mean_{k in R_g} r_k
  truncated_importance    w_t = min(exp(log pi_X(y_t) - log mu_E(y_t)), C), detached
  cross_policy_reward     c_i = max(0, A_i), A = group advantage over R_g ∪ S_g, i in S
  reward_progress         p = mean(last W rewards) - mean(W before)
  adaptive_lr_scale       s = max(s_min, 1 / (1 + k * max(0, p_self - p_other - tol)))
  share_gradients         g'_E = g_E + lam * g_X,  g'_X = g_X + lam * g_E
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tandemrl.algos._groups import group_index
from tandemrl.algos.types import AdvantageResult


def share_candidates(
    rewards: Tensor, group_ids: Tensor, giver: Tensor, receiver: Tensor, min_reward: float
) -> Tensor:
    """Giver responses worth handing to the receiver, bool [B].

    Row i qualifies when it belongs to the giver, is successful (r_i >= ``min_reward``) and
    beats the receiver's own mean reward on the same prompt (r_i > mean_{k in R_g} r_k): a
    response no better than what the receiver already produces would carry no positive
    advantage in its group and teaches it nothing. A prompt where the receiver has no valid
    reward counts its mean as -inf. NaN (abstained) rewards never qualify.
    """
    giver, receiver = giver.bool(), receiver.bool()
    inverse, num_groups = group_index(group_ids)
    valid_recv = receiver & ~torch.isnan(rewards)
    r = torch.nan_to_num(rewards.float())
    sums = r.new_zeros(num_groups).index_add_(0, inverse, r * valid_recv)
    counts = r.new_zeros(num_groups).index_add_(0, inverse, valid_recv.float())
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, -torch.inf))
    ok = ~torch.isnan(rewards) & (rewards >= min_reward) & (rewards > mean[inverse])
    return giver & ok


def truncated_importance_weights(
    target_logp: Tensor, behaviour_logp: Tensor, cap: float = 2.0
) -> Tensor:
    """Per-token truncated importance weights min(pi/mu, C) [B, T], without gradient.

    For responses sampled by another policy mu (the explorer) and trained on by pi (the
    exploiter): the off-policy gradient E_mu[(pi/mu) A grad log pi] is unbiased, and truncating
    the ratio at C bounds its variance at the price of a small bias (Retrace / IMPALA's
    V-trace, arXiv 1802.01561). Used as a per-token multiplier of the advantage inside the
    clipped surrogate, this is the decoupled PPO objective of Hilton et al. (arXiv 2110.00641)
    with the behaviour policy mu and the proximal policy pi_old = pi before the update.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    with torch.no_grad():
        log_ratio = (target_logp - behaviour_logp).clamp(max=20.0)
        return log_ratio.exp().clamp(max=cap)


def logprob_gap_metrics(
    trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float | None = None
) -> dict[str, float]:
    """How far a rollout engine's sampling log-probs are from the trainer's for the same
    tokens: mean and max of |log pi_trainer - log pi_engine| over `mask`, and with a TIS `cap`
    the mean truncated weight and the share of tokens the cap binds on.

    The two differ by kernels and precision (vLLM vs the training forward), which makes the
    sampled data slightly off-policy (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"; verl and TRL log the same gap).
    """
    m = mask.bool()
    if not m.any():
        return {}
    gap = (trainer_logp.detach() - engine_logp)[m]
    out = {"rollout/logprob_diff_mean": gap.abs().mean().item()}
    out["rollout/logprob_diff_max"] = gap.abs().max().item()
    if cap is not None:
        ratio = gap.clamp(max=20.0).exp()
        out["rollout/tis_weight_mean"] = ratio.clamp(max=cap).mean().item()
        out["rollout/tis_capped_frac"] = (ratio > cap).float().mean().item()
    return out


def cross_policy_reward(
    rewards: Tensor,
    group_ids: Tensor,
    giver: Tensor,
    receiver: Tensor,
    estimator: Callable[..., AdvantageResult],
    **options,
) -> Tensor:
    """Credit for what the giver's responses do for the receiver, float [B] (0 off giver rows).

    c_i = max(0, A_i) for giver rows i, where A is ``estimator``'s advantage (GRPO z-score by
    default in DuPO) computed per prompt over the receiver's responses together with the
    giver's rows: how strongly response i pulls the receiver's update towards it when it
    joins the receiver's group. Non-giver rows get 0.
    """
    giver, receiver = giver.bool(), receiver.bool()
    rows = torch.nonzero(giver | receiver).squeeze(-1)
    out = torch.zeros(rewards.shape[0], dtype=torch.float32)
    if rows.numel() == 0:
        return out
    adv = estimator(rewards[rows], group_ids[rows], **options).advantages.float()
    is_giver = giver[rows]
    out[rows[is_giver]] = adv[is_giver].clamp(min=0.0)
    return out


def reward_progress(history: Sequence[float], window: int) -> float | None:
    """How much a policy's reward rose lately: mean of the last ``window`` values minus the
    mean of the ``window`` before them; None until 2 * window values exist."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(history) < 2 * window:
        return None
    recent = history[-window:]
    before = history[-2 * window : -window]
    return sum(recent) / window - sum(before) / window


def adaptive_lr_scale(
    progress_self: float | None,
    progress_other: float | None,
    *,
    tolerance: float = 0.05,
    strength: float = 5.0,
    min_scale: float = 0.25,
) -> float:
    """Learning-rate multiplier for a policy that improves faster than the other one.

    s = max(min_scale, 1 / (1 + strength * max(0, (p_self - p_other) - tolerance))).
    1.0 while either progress is unknown or the lead is within ``tolerance``; the slower
    policy is never sped up (seed 000: "if one policy develops too quickly, its learning rate
    is reduced").
    """
    if progress_self is None or progress_other is None:
        return 1.0
    lead = max(0.0, (progress_self - progress_other) - tolerance)
    return max(min_scale, 1.0 / (1.0 + strength * lead))


def share_gradients(
    grads_a: dict[str, Tensor | None], grads_b: dict[str, Tensor | None], coef: float
) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """Mix two same-shaped gradient sets: g'_a = g_a + coef * g_b, g'_b = g_b + coef * g_a.

    Keys pair the corresponding parameters of two identically shaped adapters; a missing
    gradient counts as zero. Both outputs use the gradients *before* mixing.
    """
    if grads_a.keys() != grads_b.keys():
        raise ValueError("gradient sets must pair the same parameter names")
    out_a: dict[str, Tensor | None] = {}
    out_b: dict[str, Tensor | None] = {}
    for key in grads_a:
        ga, gb = grads_a[key], grads_b[key]
        out_a[key] = ga if gb is None else (gb * coef if ga is None else ga + coef * gb)
        out_b[key] = gb if ga is None else (ga * coef if gb is None else gb + coef * ga)
    return out_a, out_b


__all__ = [
    "adaptive_lr_scale",
    "cross_policy_reward",
    "reward_progress",
    "share_candidates",
    "share_gradients",
    "truncated_importance_weights",
]
