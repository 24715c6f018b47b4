"""The clipped policy-gradient objective the PPO family shares (PPO, GRPO and the methods
built on them): its config fields, and the loss terms computed from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tandemrl.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    POLICY_LOSSES,
    AdvantageResult,
    LossNormalizer,
    LossResult,
    kl_loss,
)


@dataclass
class ClippedObjective:
    """Settings of the clipped surrogate; a method's config subclasses it and adds its own."""

    loss: str = "clipped"  # a POLICY_LOSSES name
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"  # an AGGREGATIONS name
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"

    def check(self) -> None:
        """Raise the registry's error (listing the valid names) for an unknown loss or
        aggregation."""
        POLICY_LOSSES.get(self.loss)
        AGGREGATIONS.get(self.aggregation)

    def policy_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        normalizer: LossNormalizer,
    ) -> LossResult:
        """The configured surrogate (`POLICY_LOSSES[loss]`) with these clip bounds and this
        aggregation: the one place the loss registry is called."""
        return POLICY_LOSSES.get(self.loss)(
            logp,
            old_logp,
            advantages,
            mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            aggregation=self.aggregation,
            normalizer=normalizer,
        )

    def kl_term(
        self,
        logp: torch.Tensor,
        ref_logp: torch.Tensor,
        mask: torch.Tensor,
        coef: float,
        normalizer: LossNormalizer,
    ) -> LossResult:
        """coef x KL(π || π_ref) with the configured estimator and aggregation."""
        return kl_loss(
            logp,
            ref_logp,
            mask,
            coef=coef,
            kind=self.kl_estimator,
            aggregation=self.aggregation,
            normalizer=normalizer,
        )


@dataclass
class GroupObjective(ClippedObjective):
    """`ClippedObjective` plus a group-relative advantage estimator (GRPO and its kin)."""

    advantage: str = "grpo"  # an ADVANTAGES name
    advantage_options: dict[str, Any] = field(default_factory=lambda: {"std_mode": "group"})

    def check(self) -> None:
        super().check()
        ADVANTAGES.get(self.advantage)

    def group_advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> AdvantageResult:
        """The configured estimator (`ADVANTAGES[advantage]`) with its options."""
        return ADVANTAGES.get(self.advantage)(rewards, group_ids, **self.advantage_options)
