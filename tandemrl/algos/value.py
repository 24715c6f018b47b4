"""The critic's side of PPO: the clipped value loss and the explained variance of a critic.

Token layout as everywhere in the core: values/returns/mask are [B, T]; V_t is the critic's
estimate of the return from the state before response token t (the same position whose
logits score y_t), so GAE (``advantages.gae``) and the loss below line up token for token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tandemrl.algos.aggregation import LossNormalizer, aggregate, masked_mean
from tandemrl.algos.types import LossResult


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = 0.2,
    aggregation: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> LossResult:
    """PPO's clipped value loss, per token, then aggregated like the policy loss.

    V_clip = V_old + clip(V - V_old, -eps, eps)
    l_t    = 1/2 * max((V - R)^2, (V_clip - R)^2)           (eps = ``clip``)
    (PPO, arXiv 1707.06347, as implemented in OpenAI baselines' ppo2 and used for LM
    fine-tuning by Ziegler et al., arXiv 1909.08593.) The max makes the clip pessimistic: a
    new value may not move more than eps away from the value the returns were computed with
    unless that also moves it towards the return. ``clip=None`` gives 1/2 (V - R)^2.

    ``old_values`` and ``returns`` are treated as constants (no gradient). Metrics:
    ``value/loss``, ``value/clip_frac`` (tokens where the clipped term is the larger one,
    i.e. the gradient is cut), ``value/mean``, ``value/mse`` (unclipped, for monitoring).
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError("values, old_values, returns and mask must all be [B, T]")
    if clip is not None and clip <= 0:
        raise ValueError(f"value clip must be > 0 (or None for no clipping), got {clip}")
    old = old_values.detach()
    target = returns.detach()
    unclipped = (values - target) ** 2
    if clip is None:
        per_token = 0.5 * unclipped
        clipped_more = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clip = old + (values - old).clamp(-clip, clip)
        clipped = (v_clip - target) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        # Inside the clip V_clip equals V only up to rounding (V_old + (V - V_old) is not
        # always V), so `clipped > unclipped` alone counts float noise that differs by CPU.
        clipped_more = ((values - old).abs() > clip) & (clipped > unclipped)
    loss = aggregate(per_token, mask, aggregation, normalizer)
    with torch.no_grad():
        m = mask.to(values.dtype)
        metrics = {
            "value/loss": loss.item(),
            "value/clip_frac": masked_mean(clipped_more.to(m.dtype), m).item(),
            "value/mean": masked_mean(values.detach(), m).item(),
            "value/mse": masked_mean(unclipped.detach(), m).item(),
        }
    return LossResult(loss, metrics)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens (population variances).

    1 = the critic predicts the returns exactly, 0 = no better than predicting their mean,
    < 0 = worse than that. NaN when the returns have no variance (nothing to explain), up to
    float round-off (variance <= 1e-10 (1 + mean^2)).
    """
    m = mask.to(values.dtype)
    r_mean = masked_mean(returns, m)
    var_r = masked_mean((returns - r_mean) ** 2, m)
    err = returns - values
    err_mean = masked_mean(err, m)
    var_err = masked_mean((err - err_mean) ** 2, m)
    # Returns rebuilt as A + V carry float round-off: "constant" means variance at that level.
    if float(var_r) <= 1e-10 * (1.0 + float(r_mean) ** 2):
        return float("nan")
    return float(1.0 - var_err / var_r)


__all__ = ["clipped_value_loss", "explained_variance"]
