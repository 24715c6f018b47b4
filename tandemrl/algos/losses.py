"""Policy-gradient losses: the clipped surrogate (PPO/GRPO/DAPO) and BAPO adaptive clipping.

Registered in ``POLICY_LOSSES`` with one signature::

    fn(logp, old_logp, advantages, mask, *, aggregation="token-mean", normalizer=None, **options)
        -> LossResult

logp/old_logp/mask are [B, T]; advantages are [B] (broadcast over tokens) or [B, T]. Dropped
rollouts are handled by zeroing their mask rows. This module also re-exports aggregation, KL
and entropy helpers so ``tandemrl.algos.losses`` is the one import for loss terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tandemrl.algos.aggregation import (
    AGGREGATIONS,
    LossNormalizer,
    aggregate,
    masked_mean,
    masked_whiten,
)
from tandemrl.algos.entropy import (
    entropy_bonus,
    entropy_from_logits,
    logprobs_from_logits,
    sequence_perplexity,
)
from tandemrl.algos.kl import KL_ESTIMATORS, kl_in_reward, kl_loss, kl_penalty
from tandemrl.algos.registry import Registry
from tandemrl.algos.types import LossResult

PolicyLossFn = Callable[..., LossResult]

POLICY_LOSSES: Registry[PolicyLossFn] = Registry(
    "policy loss",
    signature="fn(logp, old_logp, advantages, mask, *, aggregation='token-mean',"
    " normalizer=None, **options) -> LossResult",
)

# exp(20) ~ 5e8: far outside any trust region, still finite in fp32.
_MAX_LOG_RATIO = 20.0


def _token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    if advantages.dim() == 1:
        return advantages.unsqueeze(-1).expand_as(like)
    if advantages.shape != like.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} vs tokens {tuple(like.shape)}")
    return advantages


@POLICY_LOSSES.register("clipped")
def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> LossResult:
    """Clipped surrogate, per token, then aggregated.

    rho = exp(logp - old_logp);  l = -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)
    (PPO, arXiv 1707.06347; asymmetric "clip-higher" bounds with clip_high = 0.28 in DAPO,
    arXiv 2503.14476). ``dual_clip = c > 1`` caps the loss of negative-advantage tokens at
    -c A (dual-clip PPO, arXiv 1912.09729), bounding the push from very large ratios.

    Metrics: ``clip/frac_low`` (A < 0 tokens clipped at 1 - clip_low), ``clip/frac_high``
    (A > 0 clipped at 1 + clip_high), ``clip/frac``, ``clip/dual_frac``,
    ``policy/approx_kl`` (k3 estimate of KL(pi_old || pi)), ``policy/ratio_mean``, ``policy/loss``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    adv = _token_advantages(advantages, logp).to(logp.dtype)
    log_ratio = (logp - old_logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        capped = torch.minimum(per_token, -adv * dual_clip)
        dual_active = (adv < 0) & (per_token > capped)
        per_token = torch.where(adv < 0, capped, per_token)
    else:
        dual_active = torch.zeros_like(adv, dtype=torch.bool)
    loss = aggregate(per_token, mask, aggregation, normalizer)

    with torch.no_grad():
        m = mask.to(logp.dtype)
        low = ((adv < 0) & (ratio < 1.0 - clip_low)).to(m.dtype)
        high = ((adv > 0) & (ratio > 1.0 + clip_high)).to(m.dtype)
        metrics = {
            "clip/frac_low": masked_mean(low, m).item(),
            "clip/frac_high": masked_mean(high, m).item(),
            "clip/frac": masked_mean(low + high, m).item(),
            "clip/dual_frac": masked_mean(dual_active.to(m.dtype), m).item(),
            "policy/approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, m).item(),
            "policy/ratio_mean": masked_mean(ratio, m).item(),
            "policy/loss": loss.item(),
        }
    return LossResult(loss, metrics)


@dataclass(frozen=True)
class ClipBounds:
    """Adaptive bounds as epsilons (ratio clipped to [1 - clip_low, 1 + clip_high])."""

    clip_low: float
    clip_high: float
    positive_share: float
    reached_target: bool


def positive_share(
    ratio: Tensor, advantages: Tensor, mask: Tensor, lower: float, upper: float
) -> float:
    """Share of the gradient-carrying surrogate mass from positive-advantage tokens.

    A token carries gradient unless clipped: A > 0 needs rho <= upper, A < 0 needs rho >= lower.
    share = sum_{A>0, active} rho |A| / sum_{active} rho |A|  (1.0 when nothing is active).
    """
    adv = _token_advantages(advantages, ratio)
    m = mask.to(ratio.dtype)
    pos = ((adv > 0) & (ratio <= upper)).to(m.dtype) * m
    neg = ((adv < 0) & (ratio >= lower)).to(m.dtype) * m
    mass = ratio * adv.abs()
    p, n = float((mass * pos).sum()), float((mass * neg).sum())
    return 1.0 if p + n <= 0 else p / (p + n)


@torch.no_grad()
def bapo_clip_bounds(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    target_positive: float = 0.5,
    lower_range: tuple[float, float] = (0.6, 0.9),
    upper_range: tuple[float, float] = (1.2, 3.0),
    lower_step: float = 0.05,
    upper_step: float = 0.05,
) -> ClipBounds:
    """BAPO adaptive clipping bounds (Xi et al., arXiv 2510.18927).

    Start at ratio bounds c_low = a-, c_high = a+ (``lower_range`` = [a-, b-], ``upper_range`` =
    [a+, b+]); while positive_share(c_low, c_high) < rho_0 and a bound can still move, raise
    c_high by ``upper_step`` (admits more low-probability positive tokens) and c_low by
    ``lower_step`` (clips more negative tokens whose probability already fell), each capped at
    its maximum. Defaults rho_0 = 0.5, [0.6, 0.9], [1.2, 3.0] are the values the authors'
    README gives for the paper; the steps are those of their released config.

    Reconstruction note: the paper text was not available; this follows the authors' README
    and public recipe, except that both bounds move together each iteration (the recipe moves
    the lower bound to its maximum first) and the balance is measured on gradient-carrying
    tokens only, as the Entropy-Clip analysis describes. Compute the bounds once on the whole
    step's batch and pass them to every microbatch, or ranks/microbatches will disagree.
    """
    ratio = (logp - old_logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    lower, upper = lower_range[0], upper_range[0]
    share = positive_share(ratio, advantages, mask, lower, upper)
    while share < target_positive:
        new_lower = min(lower + lower_step, lower_range[1])
        new_upper = min(upper + upper_step, upper_range[1])
        if new_lower <= lower and new_upper <= upper:
            break
        lower, upper = new_lower, new_upper
        share = positive_share(ratio, advantages, mask, lower, upper)
    return ClipBounds(1.0 - lower, upper - 1.0, share, share >= target_positive)


@POLICY_LOSSES.register("bapo")
def bapo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    bounds: ClipBounds | None = None,
    target_positive: float = 0.5,
    lower_range: tuple[float, float] = (0.6, 0.9),
    upper_range: tuple[float, float] = (1.2, 3.0),
    lower_step: float = 0.05,
    upper_step: float = 0.05,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> LossResult:
    """Clipped surrogate with BAPO's adaptive bounds (``bapo_clip_bounds``, arXiv 2510.18927).

    ``bounds`` precomputed on the full batch take precedence over a per-call search.
    """
    if bounds is None:
        bounds = bapo_clip_bounds(
            logp,
            old_logp,
            advantages,
            mask,
            target_positive=target_positive,
            lower_range=lower_range,
            upper_range=upper_range,
            lower_step=lower_step,
            upper_step=upper_step,
        )
    result = clipped_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        clip_low=bounds.clip_low,
        clip_high=bounds.clip_high,
        dual_clip=dual_clip,
        aggregation=aggregation,
        normalizer=normalizer,
    )
    result.metrics.update(
        {
            "bapo/clip_low": bounds.clip_low,
            "bapo/clip_high": bounds.clip_high,
            "bapo/positive_share": bounds.positive_share,
            "bapo/reached_target": float(bounds.reached_target),
        }
    )
    return result


__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "ClipBounds",
    "LossNormalizer",
    "LossResult",
    "aggregate",
    "bapo_clip_bounds",
    "bapo_policy_loss",
    "clipped_policy_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "kl_in_reward",
    "kl_loss",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_whiten",
    "positive_share",
    "sequence_perplexity",
]
