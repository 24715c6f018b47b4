"""Per-token log-probs, entropy and sequence perplexity: computed once per forward, reused."""

from __future__ import annotations

import torch
from torch import Tensor

from tandemrl.algos.aggregation import LossNormalizer, aggregate, masked_mean
from tandemrl.algos.types import LossResult


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(y_t) [B, T] from logits [B, T, V] and token ids [B, T], via log_softmax."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor, chunk_size: int | None = None) -> Tensor:
    """Entropy of the next-token distribution, [B, T, V] -> [B, T].

    H = -sum_v p_v log p_v with log p = z - logsumexp(z): never exponentiates a raw logit, so
    large logits cannot overflow; logits of -inf (banned tokens) contribute exactly 0.
    ``chunk_size`` processes that many positions of T at a time, bounding the [B, T, V]
    temporaries (useful under no_grad with a large vocabulary).
    """
    if chunk_size is not None and logits.shape[1] > chunk_size:
        parts = torch.split(logits, chunk_size, dim=1)
        return torch.cat([entropy_from_logits(p) for p in parts], dim=1)
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    # p * log p is 0 * -inf = NaN at banned tokens, and its gradient would be NaN too.
    logp = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
    return -(logp.exp() * logp).sum(dim=-1)


def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    coef: float,
    aggregation: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> LossResult:
    """Entropy bonus as a loss term: -coef * aggregate(H), so minimising the loss raises H
    (the entropy term of PPO, arXiv 1707.06347). Metric ``entropy/mean``: masked token mean."""
    loss = -coef * aggregate(entropy, mask, aggregation, normalizer)
    return LossResult(loss, {"entropy/mean": masked_mean(entropy.detach(), mask).item()})


def sequence_perplexity(token_logp: Tensor, mask: Tensor) -> Tensor:
    """exp(-(1/n_i) sum_t log pi(y_it)) per row, [B]; NaN for rows with no valid token.

    The perplexity DiPO (arXiv 2604.13902) uses to split exploration and exploitation space.
    """
    m = mask.to(token_logp.dtype)
    n = m.sum(dim=-1)
    mean_nll = -(token_logp * m).sum(dim=-1) / n.clamp(min=1e-8)
    ppl = mean_nll.exp()
    return torch.where(n > 0, ppl, torch.full_like(ppl, float("nan")))
