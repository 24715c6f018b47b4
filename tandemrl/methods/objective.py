"""The clipped policy-gradient objective the PPO family shares (PPO, GRPO and the methods
built on them): its config fields, the loss terms computed from them, and how a step's batch
is cut into several optimizer updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tandemrl.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    POLICY_LOSSES,
    AdvantageResult,
    ClipBounds,
    LossNormalizer,
    LossResult,
    bapo_clip_bounds,
    kl_loss,
    logprob_gap_metrics,
    truncated_importance_weights,
)
from tandemrl.errors import ConfigError
from tandemrl.rollout import RolloutBatch
from tandemrl.runtime import distributed as dist

BAPO = "bapo"


@dataclass
class EngineLogp:
    """A separate rollout engine's sampling log-probs of a microbatch [B, T] (None: the
    training module sampled) and the run's truncated-importance-sampling cap (None: off)."""

    logp: torch.Tensor | None
    tis_cap: float | None = None


@dataclass
class ClippedObjective:
    """Settings of the clipped surrogate; a method's config subclasses it and adds its own."""

    loss: str = "clipped"  # a POLICY_LOSSES name: clipped, bapo, or module:function
    # Extra keyword options of the loss: clipped {dual_clip}; bapo {target_positive,
    # lower_range, upper_range, lower_step, upper_step, dual_clip}.
    loss_options: dict[str, Any] = field(default_factory=dict)
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"  # an AGGREGATIONS name
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    # Policy updates per step (μ in the GRPO and DAPO papers): `ppo_epochs` passes over the
    # batch, each cut into `minibatches` optimizer updates. From the second update on, the
    # policy differs from the one that sampled (π_old, scored before the first update), so
    # the clip bounds bind.
    ppo_epochs: int = 1
    minibatches: int = 1

    def check(self, section: str = "grpo") -> None:
        """Raise the registry's error (listing the valid names) for an unknown loss or
        aggregation, and a ConfigError for counts out of range."""
        POLICY_LOSSES.get(self.loss)
        AGGREGATIONS.get(self.aggregation)
        if self.ppo_epochs < 1:
            raise ConfigError(f"{section}.ppo_epochs must be >= 1, got {self.ppo_epochs}")
        if self.minibatches < 1:
            raise ConfigError(f"{section}.minibatches must be >= 1, got {self.minibatches}")
        if self.loss == BAPO and {"clip_low", "clip_high"} & set(self.loss_options):
            raise ConfigError(f"{section}.loss=bapo sets its own clip bounds; drop them")

    @property
    def updates_per_step(self) -> int:
        return self.ppo_epochs * self.minibatches

    def policy_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        normalizer: LossNormalizer,
        bounds: ClipBounds | None = None,
        engine: EngineLogp | None = None,
    ) -> LossResult:
        """The configured surrogate (`POLICY_LOSSES[loss]`): the one place the loss registry
        is called. BAPO gets the update's adaptive `bounds` (`bapo_bounds`); every other
        loss the configured `clip_low` / `clip_high`. With a separate rollout `engine`, the
        gap between its sampling log-probs and `old_logp` is logged, and with its TIS cap
        each token's advantage is weighted by min(pi_old / pi_engine, cap) (a positive
        factor, so it scales the clipped surrogate token by token)."""
        fn = POLICY_LOSSES.get(self.loss)
        common = {"aggregation": self.aggregation, "normalizer": normalizer, **self.loss_options}
        gap: dict[str, float] = {}
        if engine is not None and engine.logp is not None:
            gap = logprob_gap_metrics(old_logp, engine.logp, mask, engine.tis_cap)
            if engine.tis_cap is not None:
                weights = truncated_importance_weights(old_logp, engine.logp, engine.tis_cap)
                per_token = advantages if advantages.dim() == 2 else advantages[:, None]
                advantages = per_token * weights
        if self.loss == BAPO:
            result = fn(logp, old_logp, advantages, mask, bounds=bounds, **common)
        else:
            clip = {"clip_low": self.clip_low, "clip_high": self.clip_high}
            result = fn(logp, old_logp, advantages, mask, **clip, **common)
        result.metrics.update(gap)
        return result

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

    def bapo_bounds(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
    ) -> ClipBounds | None:
        """BAPO's adaptive clip bounds for one optimizer update (None unless loss=bapo),
        searched on the update's whole batch over every rank, so that microbatches and ranks
        share one pair of bounds (`algos.losses.bapo_clip_bounds`, arXiv 2510.18927).
        `logp` are the current policy's log-probs, `old_logp` the sampling policy's."""
        if self.loss != BAPO:
            return None
        m = mask > 0
        adv = advantages.unsqueeze(-1).expand_as(logp) if advantages.dim() == 1 else advantages
        local = (logp[m].detach().cpu(), old_logp[m].cpu(), adv[m].detach().cpu())
        parts = dist.all_gather_object(local)
        cur, old, a = (torch.cat([p[i] for p in parts]).unsqueeze(0) for i in range(3))
        options = {k: v for k, v in self.loss_options.items() if k != "dual_clip"}
        return bapo_clip_bounds(cur, old, a, torch.ones_like(cur), **options)


@dataclass
class GroupObjective(ClippedObjective):
    """`ClippedObjective` plus a group-relative advantage estimator (GRPO and its kin)."""

    advantage: str = "grpo"  # an ADVANTAGES name
    # the estimator's keyword options, e.g. grpo's std_mode: group (default), batch, none
    # (Dr.GRPO)
    advantage_options: dict[str, Any] = field(default_factory=dict)

    def check(self, section: str = "grpo") -> None:
        super().check(section)
        ADVANTAGES.get(self.advantage)

    def group_advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> AdvantageResult:
        """The configured estimator (`ADVANTAGES[advantage]`) with its options."""
        return ADVANTAGES.get(self.advantage)(rewards, group_ids, **self.advantage_options)


def bapo_metrics(bounds: ClipBounds | None) -> dict[str, float]:
    """The bounds an update used (empty unless loss=bapo)."""
    if bounds is None:
        return {}
    return {
        "bapo/clip_low": bounds.clip_low,
        "bapo/clip_high": bounds.clip_high,
        "bapo/positive_share": bounds.positive_share,
        "bapo/reached_target": float(bounds.reached_target),
    }


def minibatch_rows(
    batch: RolloutBatch, epochs: int, minibatches: int, seed: int, by_group: bool = True
) -> list[torch.Tensor]:
    """The rows of each optimizer update of a step, in order: `epochs` passes, each a shuffle
    cut into `minibatches` parts (rows sorted within a part). `by_group` keeps a prompt's
    responses in one part (their prompt is then computed once, and per-group terms such as
    Policy Split's token z-score see whole groups); else rows are shuffled one by one (PPO).
    One update: all rows, in order."""
    if epochs * minibatches == 1:
        return [torch.arange(len(batch))]
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(epochs):
        if by_group:
            groups = batch.group_ids.unique()
            order = groups[torch.randperm(len(groups), generator=gen)]
            for chosen in order.tensor_split(minibatches):
                parts.append(torch.isin(batch.group_ids, chosen).nonzero().squeeze(-1))
        else:
            order = torch.randperm(len(batch), generator=gen)
            parts += [rows.sort().values for rows in order.tensor_split(minibatches)]
    return parts


def mean_over_updates(updates: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over a step's updates (over those that reported it)."""
    keys = dict.fromkeys(k for u in updates for k in u)
    return {k: sum(u[k] for u in updates if k in u) / sum(k in u for u in updates) for k in keys}
