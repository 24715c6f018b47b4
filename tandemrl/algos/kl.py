"""KL to a reference policy: per-token estimators, as a loss term or as a reward penalty.

Tokens are sampled from the current policy pi, and x = log pi(y_t) - log pi_ref(y_t). Unbiased or
low-variance estimators of KL(pi || pi_ref) from one sample (Schulman, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html; k3 as used by GRPO, arXiv 2402.03300):
  k1 = x                      (unbiased, can be negative per token)
  k2 = x^2 / 2                (biased, >= 0; its gradient is the true KL gradient on-policy)
  k3 = exp(-x) + x - 1        (unbiased, >= 0, low variance)
x is clamped to [-clamp, clamp] before the estimator so a single bad token cannot overflow k3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tandemrl.algos.aggregation import LossNormalizer, aggregate, masked_mean
from tandemrl.algos.registry import Registry
from tandemrl.algos.types import LossResult

KLEstimatorFn = Callable[[Tensor], Tensor]

KL_ESTIMATORS: Registry[KLEstimatorFn] = Registry(
    "KL estimator",
    signature="fn(log_ratio: Tensor [B, T]) -> Tensor [B, T]; log_ratio = logp - ref_logp",
)


@KL_ESTIMATORS.register("k1")
def kl_k1(x: Tensor) -> Tensor:
    return x


@KL_ESTIMATORS.register("k2")
def kl_k2(x: Tensor) -> Tensor:
    return 0.5 * x * x


@KL_ESTIMATORS.register("k3")
def kl_k3(x: Tensor) -> Tensor:
    # expm1 keeps precision near x = 0, where exp(-x) - 1 would cancel.
    return torch.expm1(-x) + x


def kl_penalty(
    logp: Tensor,
    ref_logp: Tensor,
    kind: str | KLEstimatorFn = "k1",
    clamp: float | None = 10.0,
) -> Tensor:
    """Per-token KL estimate [B, T] of KL(pi || pi_ref) with estimator ``kind`` (module doc)."""
    x = logp - ref_logp
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return KL_ESTIMATORS.get(kind)(x)


def kl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    coef: float,
    kind: str | KLEstimatorFn = "k3",
    clamp: float | None = 10.0,
    aggregation: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> LossResult:
    """KL in the loss: coef * aggregate(kl_t). Aggregate it like the policy loss it joins."""
    kl = kl_penalty(logp, ref_logp, kind, clamp)
    loss = coef * aggregate(kl, mask, aggregation, normalizer)
    return LossResult(loss, {"kl": masked_mean(kl.detach(), mask).item()})


def kl_in_reward(
    rewards: Tensor,
    kl: Tensor,
    mask: Tensor,
    beta: float,
    *,
    token_level: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """KL in the reward (InstructGPT-style, arXiv 2203.02155).

    token_level False: r_i - beta * sum_t kl_it m_it, shape [B] (for group estimators).
    token_level True:  per-token rewards [B, T] = -beta * kl_it m_it, plus r_i on the last valid
    token of row i (for GAE). ``kl`` is detached: the penalty is a reward, not a gradient path.
    NaN (abstained) rewards stay NaN; rows without valid tokens keep r_i unchanged.
    """
    m = mask.to(kl.dtype)
    penal = beta * kl.detach() * m
    metrics = {
        "kl": masked_mean(kl.detach(), m).item(),
        "kl/seq_sum_mean": (kl.detach() * m).sum(-1).mean().item(),
    }
    if not token_level:
        return rewards - penal.sum(dim=-1), metrics
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m > 0, positions, -1).max(dim=-1).values
    token_rewards = -penal
    has_tokens = last >= 0
    rows = torch.nonzero(has_tokens).squeeze(-1)
    token_rewards = token_rewards.index_put(
        (rows, last[has_tokens]), token_rewards[rows, last[has_tokens]] + rewards[rows].to(kl.dtype)
    )
    return token_rewards, metrics
