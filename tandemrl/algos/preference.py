"""Preference losses over (chosen, rejected) pairs: DPO, IPO and RPO's SFT term; building
pairs from a group of scored samples (online DPO/IPO) and sequence log-probs.

Inputs are per-pair sequence log-probabilities [B] (sum of token log-probs of the response;
IPO is often used with the per-token mean instead, the caller decides). ``num_pairs`` is the
global pair count across microbatches and ranks; None = this batch is the whole batch, so the
losses sum correctly over accumulation steps just like ``aggregate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tandemrl.algos._groups import group_index
from tandemrl.algos.types import LossResult


def _reduce(per_pair: Tensor, num_pairs: float | None) -> Tensor:
    denom = float(per_pair.numel()) if num_pairs is None else float(num_pairs)
    return per_pair.sum() / max(denom, 1.0)


def _pair_metrics(prefix: str, chosen: Tensor, rejected: Tensor) -> dict[str, float]:
    margin = (chosen - rejected).detach()
    return {
        f"{prefix}/chosen_reward": chosen.detach().mean().item(),
        f"{prefix}/rejected_reward": rejected.detach().mean().item(),
        f"{prefix}/reward_margin": margin.mean().item(),
        f"{prefix}/accuracy": (margin > 0).float().mean().item(),
    }


def rpo_sft_term(policy_chosen_logp: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Per-pair NLL of the chosen response normalised by its token count: -log pi(y_w) / |y_w|
    (RPO's SFT regulariser, arXiv 2405.16436). Returns [B]."""
    return -policy_chosen_logp / chosen_lengths.to(policy_chosen_logp.dtype).clamp(min=1)


def dpo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    ref_chosen_logp: Tensor,
    ref_rejected_logp: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    *,
    alpha: float = 0.0,
    chosen_lengths: Tensor | None = None,
    num_pairs: float | None = None,
) -> LossResult:
    """DPO (Rafailov et al., arXiv 2305.18290), with optional label smoothing and RPO term.

    h = beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]
    loss = mean[-(1 - eps) log sigmoid(h) - eps log sigmoid(-h)]   (eps = label_smoothing,
           the conservative DPO of Mitchell 2023 for noisy labels)
         + alpha * mean[-log pi(y_w) / |y_w|]                        (RPO, arXiv 2405.16436;
           needs ``chosen_lengths``)
    Metrics: implicit rewards beta * (log pi - log pi_ref) of chosen/rejected, their margin,
    and accuracy (fraction of pairs with margin > 0).
    """
    chosen = beta * (policy_chosen_logp - ref_chosen_logp)
    rejected = beta * (policy_rejected_logp - ref_rejected_logp)
    h = chosen - rejected
    per_pair = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    metrics = _pair_metrics("dpo", chosen, rejected)
    if alpha:
        if chosen_lengths is None:
            raise ValueError("alpha > 0 (RPO) needs chosen_lengths")
        sft = rpo_sft_term(policy_chosen_logp, chosen_lengths)
        per_pair = per_pair + alpha * sft
        metrics["dpo/sft_nll"] = sft.detach().mean().item()
    loss = _reduce(per_pair, num_pairs)
    metrics["dpo/loss"] = loss.item()
    return LossResult(loss, metrics)


def ipo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    ref_chosen_logp: Tensor,
    ref_rejected_logp: Tensor,
    beta: float = 0.1,
    *,
    num_pairs: float | None = None,
) -> LossResult:
    """IPO (Azar et al., arXiv 2310.12036): a squared loss that targets a finite margin.

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
    loss = mean[(h - 1 / (2 beta))^2]
    Unlike DPO it stays bounded when preferences are deterministic (no push of h to infinity).
    Metrics use the same implicit rewards beta * (log pi - log pi_ref) as DPO.
    """
    if beta <= 0:
        raise ValueError(f"IPO needs beta > 0, got {beta}")
    chosen = policy_chosen_logp - ref_chosen_logp
    rejected = policy_rejected_logp - ref_rejected_logp
    per_pair = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    loss = _reduce(per_pair, num_pairs)
    metrics = _pair_metrics("ipo", beta * chosen, beta * rejected)
    metrics["ipo/loss"] = loss.item()
    return LossResult(loss, metrics)


@dataclass
class PreferencePairs:
    """Pairs built from scored samples: row indices into the batch, one pair per group.

    chosen/rejected: LongTensor [P]; groups: groups seen; skipped: groups that gave no pair
    (fewer than two scored samples, or no reward gap above ``min_gap``).
    """

    chosen: Tensor
    rejected: Tensor
    groups: int
    skipped: int


def best_worst_pairs(rewards: Tensor, group_ids: Tensor, min_gap: float = 0.0) -> PreferencePairs:
    """One (chosen, rejected) pair per group from the policy's own samples: the highest- vs the
    lowest-rewarded response (online / iterative DPO as in Xu et al., arXiv 2312.16682, and
    Guo et al., arXiv 2402.04792, with the task reward as the judge).

    A group is skipped when fewer than two of its rewards are valid (NaN = abstain) or when
    max r - min r <= ``min_gap`` (0: skip only exact ties): equal rewards say nothing about
    which response is better. Ties for best/worst go to the lowest row index, so the pairs are
    deterministic. Pairs are returned in increasing group-id order.
    """
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError("rewards and group_ids must both be [B]")
    inverse, num_groups = group_index(group_ids)
    r = rewards.float()
    rows = torch.arange(r.numel())
    chosen, rejected = [], []
    for g in range(num_groups):
        members = rows[(inverse == g) & ~torch.isnan(r)]
        if members.numel() < 2:
            continue
        vals = r[members]
        # argmax/argmin on CPU return the first occurrence of the extreme value.
        best, worst = members[int(torch.argmax(vals))], members[int(torch.argmin(vals))]
        if float(r[best] - r[worst]) <= min_gap:
            continue
        chosen.append(int(best))
        rejected.append(int(worst))
    return PreferencePairs(
        torch.tensor(chosen, dtype=torch.long),
        torch.tensor(rejected, dtype=torch.long),
        num_groups,
        num_groups - len(chosen),
    )


def sequence_logps(token_logp: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """Sequence log-probability [B] from per-token log-probs [B, T]: sum_t m_t log pi(y_t), or
    with ``average`` the per-token mean (IPO as TRL runs it, and length-normalised DPO)."""
    m = mask.to(token_logp.dtype)
    total = (token_logp * m).sum(-1)
    return total / m.sum(-1).clamp(min=1) if average else total


__all__ = [
    "PreferencePairs",
    "best_worst_pairs",
    "dpo_loss",
    "ipo_loss",
    "rpo_sft_term",
    "sequence_logps",
]
