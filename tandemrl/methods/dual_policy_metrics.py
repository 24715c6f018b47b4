"""Per-policy metrics of the dual-policy method (DuPO, docs/dupo.md): reward, entropy, KL, diversity, sharing and cross-policy reward.

Every metric of policy P is logged as `P/<name>` (`explore/reward/mean`, `exploit/kl`, ...),
computed over P's own samples of the step, so the two policies are comparable line by line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tandemrl.algos import kl_penalty, masked_mean
from tandemrl.methods.diversity import group_diversity
from tandemrl.methods.rewards import finite_mean, reward_metrics
from tandemrl.rollout import RolloutBatch


@dataclass
class Interactions:
    """What the two policies' samples do for each other in a step, per rollout row, from task
    rewards alone (`DualPolicy.interactions`)."""

    explore: torch.Tensor  # [B] sampled by the explorer
    give_e: torch.Tensor  # [B] explorer samples eligible to join the exploiter's group (S_E)
    give_x: torch.Tensor  # [B] exploiter samples eligible for the explorer's group (S_X)
    cross: torch.Tensor  # [B] cross-policy reward c
    novelty: torch.Tensor  # [B] n-gram novelty against the exploiter (explorer rows)
    train_rewards: torch.Tensor  # [B] the reward each policy trains on


def policy_metrics(
    prefix: str,
    full: RolloutBatch,
    own: torch.Tensor,
    inter: Interactions,
    logp: torch.Tensor | None,
    entropy: torch.Tensor | None,
    kl_estimator: str,
) -> dict[str, float]:
    """Metrics of the policy whose samples are rows `own` of `full`.

    logp/entropy: [B_full, T] under this policy with NaN on rows not scored this step (None
    when it was not scored at all); KL uses `full.ref_logp` when present.
    """
    rows = own.nonzero().squeeze(-1)
    batch = full.select(rows)
    out = reward_metrics(batch, prefix)
    out[f"{prefix}train_reward/mean"] = finite_mean(inter.train_rewards[rows])
    mask = batch.response_mask
    if logp is not None and not torch.isnan(logp[rows]).any():
        out[f"{prefix}entropy/mean"] = masked_mean(entropy[rows], mask).item()
        if full.ref_logp is not None:
            kl = kl_penalty(logp[rows], batch.ref_logp, kl_estimator)
            out[f"{prefix}kl"] = masked_mean(kl, mask).item()
    out.update(group_diversity(batch, prefix))
    if prefix == "explore/":
        out[f"{prefix}novelty/mean"] = inter.novelty[rows].mean().item()
    out[f"{prefix}cross_reward/mean"] = inter.cross[rows].mean().item()
    return out


def step_metrics(state, cfg, share_weights: Callable, grad_share: float) -> dict[str, float]:
    """Both policies' metrics, sharing statistics, and unprefixed keys for the served one.
    `state` is the step's `DualPolicyStep`; `share_weights(logp, rows)` the exploiter's token
    weights on shared rows (`DualPolicy.share_weights`); `grad_share` the lam in effect."""
    full, inter, active = state.batch, state.interactions, state.active
    out: dict[str, float] = {}
    for p in ("explore", "exploit"):
        own = inter.explore if p == "explore" else ~inter.explore
        logp = state.logp[p]
        scored = not torch.isnan(logp[own]).any()
        lp = logp if scored else None
        out.update(
            policy_metrics(f"{p}/", full, own, inter, lp, state.entropy[p], cfg.kl_estimator)
        )
    n_shared = 0
    if "exploit" in active:
        exploit = state.batches["exploit"]
        rows = exploit.per_row
        n_shared = int(rows.shared.sum())
    out["explore/shared_count"] = float(n_shared)
    out["explore/eligible_count"] = float(inter.give_e.sum())
    out["exploit/eligible_count"] = float(inter.give_x.sum())
    if n_shared:
        weights = share_weights(state.trained["exploit"].logp, rows)
        w = weights[rows.shared][exploit.response_mask[rows.shared].bool()]
        out["dupo/is_weight_mean"] = w.mean().item()
        out["dupo/is_weight_capped_frac"] = (w >= cfg.share_is_cap).float().mean().item()
    out["dupo/active"] = 2.0 if len(active) == 2 else float(active[0] == "exploit")
    out["dupo/grad_share"] = grad_share if len(active) == 2 else 0.0
    # Unprefixed keys describe the served policy, as they do for single-policy methods.
    out.update(reward_metrics(full.select((~inter.explore).nonzero().squeeze(-1))))
    for key in ("entropy/mean", "kl"):
        if f"exploit/{key}" in out:
            out[key] = out[f"exploit/{key}"]
    return out


def write_plot(history: list[dict[str, float]], path, policies: tuple[str, ...]) -> str | None:
    """The reward/diversity plot; returns an error message instead of raising (a missing
    matplotlib must not fail a finished run)."""
    try:
        from tandemrl.methods.dual_policy_plots import plot_policies

        plot_policies(history, path, policies)
    except Exception as err:  # noqa: BLE001 - reported to the user, the run is done anyway
        return f"could not write {path}: {err}"
    return None
