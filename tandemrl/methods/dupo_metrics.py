"""Per-policy metrics for DuPO: reward, entropy, KL, diversity, sharing and cross-policy reward.

Every metric of policy P is logged as `P/<name>` (`explore/reward/mean`, `exploit/kl`, ...),
computed over P's own samples of the step, so the two policies are comparable line by line.
"""

from __future__ import annotations

import math

import torch

from tandemrl.algos import distinct_answers, group_distinct_n, kl_penalty, masked_mean
from tandemrl.methods.base import reward_metrics
from tandemrl.rollout import RolloutBatch
from tandemrl.tasks.extraction import answer_key


def policy_metrics(
    prefix: str,
    full: RolloutBatch,
    own: torch.Tensor,
    inter: dict[str, torch.Tensor],
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
    train_r = inter["train_rewards"][rows]
    train_r = train_r[~torch.isnan(train_r)]
    out[f"{prefix}train_reward/mean"] = train_r.mean().item() if train_r.numel() else math.nan
    mask = batch.response_mask
    if logp is not None and not torch.isnan(logp[rows]).any():
        out[f"{prefix}entropy/mean"] = masked_mean(entropy[rows], mask).item()
        if full.ref_logp is not None:
            kl = kl_penalty(logp[rows], batch.ref_logp, kl_estimator)
            out[f"{prefix}kl"] = masked_mean(kl, mask).item()
    seqs = batch.response_token_lists()
    out[f"{prefix}diversity/distinct_answers"] = distinct_answers(
        [answer_key(c) for c in batch.completions], batch.group_ids
    )
    out[f"{prefix}diversity/distinct_1"] = group_distinct_n(seqs, batch.group_ids, 1)
    out[f"{prefix}diversity/distinct_2"] = group_distinct_n(seqs, batch.group_ids, 2)
    if prefix == "explore/":
        out[f"{prefix}novelty/mean"] = inter["novelty"][rows].mean().item()
    out[f"{prefix}cross_reward/mean"] = inter["cross"][rows].mean().item()
    return out


def step_metrics(
    full: RolloutBatch,
    inter: dict[str, torch.Tensor],
    logp: dict[str, torch.Tensor],
    entropy: dict[str, torch.Tensor],
    batches: dict[str, RolloutBatch],
    active: tuple[str, ...],
    cfg,
) -> dict[str, float]:
    """Both policies' metrics, sharing statistics, and unprefixed keys for the served one."""
    out: dict[str, float] = {}
    for p in ("explore", "exploit"):
        own = inter["explore"] if p == "explore" else ~inter["explore"]
        scored = not torch.isnan(logp[p][own]).any()
        lp = logp[p] if scored else None
        out.update(policy_metrics(f"{p}/", full, own, inter, lp, entropy[p], cfg.kl_estimator))
    exploit = batches.get("exploit")
    shared = exploit.extras["shared"] if exploit is not None else None
    n_shared = int(shared.sum()) if shared is not None else 0
    out["explore/shared_count"] = float(n_shared)
    out["explore/eligible_count"] = float(inter["give_e"].sum())
    out["exploit/eligible_count"] = float(inter["give_x"].sum())
    if n_shared:
        w = exploit.extras["is_weights"][shared][exploit.response_mask[shared].bool()]
        out["dupo/is_weight_mean"] = w.mean().item()
        out["dupo/is_weight_capped_frac"] = (w >= cfg.share_is_cap).float().mean().item()
    out["dupo/active"] = 2.0 if len(active) == 2 else float(active[0] == "exploit")
    out["dupo/grad_share"] = cfg.gradient_sharing if len(active) == 2 else 0.0
    # Unprefixed keys describe the served policy, as they do for single-policy methods.
    out.update(reward_metrics(full.select((~inter["explore"]).nonzero().squeeze(-1))))
    for key in ("entropy/mean", "kl"):
        if f"exploit/{key}" in out:
            out[key] = out[f"exploit/{key}"]
    return out


def write_plot(history: list[dict[str, float]], path, policies: tuple[str, ...]) -> str | None:
    """The reward/diversity plot; returns an error message instead of raising (a missing
    matplotlib must not fail a finished run)."""
    try:
        from tandemrl.methods.dupo_plots import plot_policies

        plot_policies(history, path, policies)
    except Exception as err:  # noqa: BLE001 - reported to the user, the run is done anyway
        return f"could not write {path}: {err}"
    return None
