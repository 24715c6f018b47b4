"""The clipped policy-gradient method every PPO-family method builds on (GRPO and its kin,
PPO): the reference, old log-probs, the loss terms, and several optimizer updates a step.

Not registered itself; `grpo.py` and `ppo.py` fill in where the advantages come from.
  prepare   old log-probs when the update needs them (several updates, BAPO), reference
            log-probs when kl_coef > 0 (with `kl_in=reward` the KL penalty is subtracted
            from the rewards);
  update    `ppo_epochs` x `minibatches` AdamW updates on the clipped surrogate (+ optional KL
            to the reference and entropy bonus) through the update engine; the ratio is 1 in
            the first update and the clip (clip_high=0.28 for DAPO, dual clip, BAPO's
            adaptive bounds) binds after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tandemrl.algos import ClipBounds, LossNormalizer, entropy_bonus, kl_in_reward, kl_penalty
from tandemrl.methods.base import Method, StepState
from tandemrl.methods.objective import (
    ClippedObjective,
    EngineLogp,
    bapo_metrics,
    mean_over_updates,
    minibatch_rows,
)
from tandemrl.methods.reference import ReferencePolicy
from tandemrl.rollout import RolloutBatch, TokenScores, score_tokens
from tandemrl.runtime.update import LossOutput


@dataclass
class PolicyGradientConfig(ClippedObjective):
    kl_coef: float = 0.0  # 0 loads no reference and runs no reference forward
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_coef: float = 0.0


@dataclass
class PolicyGradientStep(StepState):
    entropy: torch.Tensor | None = None  # [B, T] pre-update entropies, when scored
    clip_bounds: ClipBounds | None = None  # BAPO's bounds of the update in progress


class PolicyGradient(Method):
    """Clipped surrogate + KL + entropy over `ppo_epochs` x `minibatches` updates (module
    docstring); subclasses give the advantages."""

    State = PolicyGradientStep
    supports_tis = True  # loss_from_scores passes the engine's log-probs (engine_logp)
    minibatch_by_group = True  # keep a prompt's responses in one minibatch (PPO: rows)

    def setup(self) -> None:
        self.reference = ReferencePolicy(self.policy) if self.cfg.kl_coef > 0 else None

    def updates_per_step(self) -> int:
        return self.cfg.updates_per_step

    def sharded_modules(self) -> list:
        copy = self.reference.copy if self.reference is not None else None
        return [*super().sharded_modules(), *([copy] if copy is not None else [])]

    def needs_old_logp(self) -> bool:
        """Log-probs of the sampling policy, scored before any update: π_old from the second
        update on, and BAPO's bounds."""
        return self.cfg.updates_per_step > 1 or self.cfg.loss == "bapo"

    def needs_entropy(self) -> bool:
        return False

    # -- hooks ------------------------------------------------------------------------------
    def prepare(self, state: PolicyGradientStep) -> dict[str, float]:
        cfg, batch = self.cfg, state.batch
        if self.needs_old_logp() or (cfg.kl_coef and cfg.kl_in == "reward"):
            scores = self.score_no_grad(batch, with_entropy=self.needs_entropy())
            batch.old_logp, state.entropy = scores.logp, scores.entropy
        if not cfg.kl_coef:
            return {}
        batch.ref_logp = self.reference_logp(batch)
        if cfg.kl_in != "reward":
            return {}
        kl = kl_penalty(batch.old_logp, batch.ref_logp, cfg.kl_estimator)
        batch.rewards, metrics = kl_in_reward(batch.rewards, kl, batch.response_mask, cfg.kl_coef)
        return metrics

    def update(self, state: PolicyGradientStep) -> dict[str, float]:
        """`ppo_epochs` x `minibatches` optimizer updates; metrics are their means."""
        batch, cfg = self.training_batch(state), self.cfg
        seed = self.config.seed * 1_000_003 + state.step
        rows = minibatch_rows(batch, cfg.ppo_epochs, cfg.minibatches, seed, self.minibatch_by_group)
        parts = [batch] if len(rows) == 1 else [batch.select(r) for r in rows]
        return mean_over_updates([self.update_minibatch(state, part) for part in parts])

    def training_batch(self, state: PolicyGradientStep) -> RolloutBatch:
        """The rows the update trains on (Policy Split: its pairings)."""
        return state.batch

    def update_minibatch(self, state: PolicyGradientStep, part: RolloutBatch) -> dict[str, float]:
        """One optimizer update on the rows of `part`."""
        state.clip_bounds = self.clip_bounds(part)
        acc = self.update_engine.accumulate(
            "policy",
            part,
            lambda micro, normalizer: self.loss(micro, normalizer, state),
            self.config.optim.micro_batch_size,
        )
        result = self.update_engine.step(["policy"])["policy"]
        return {**acc.metrics, "loss": acc.loss, **result, **bapo_metrics(state.clip_bounds)}

    # -- pieces other methods reuse ---------------------------------------------------------
    def engine_logp(self, micro: RolloutBatch) -> EngineLogp:
        """The rollout engine's sampling log-probs of `micro` (vLLM) and the TIS cap."""
        return EngineLogp(micro.sampling_logp, self.config.rollout.tis_cap)

    def reference_logp(self, batch: RolloutBatch) -> torch.Tensor:
        mb = self.config.optim.micro_batch_size
        return self.reference.scores(batch, self.sampling.temperature, mb).logp

    def clip_bounds(self, part: RolloutBatch) -> ClipBounds | None:
        """BAPO's bounds for an update on `part` (None for other losses): the current
        policy's ratios to π_old over the whole update, one no-grad forward."""
        if self.cfg.loss != "bapo":
            return None
        current = self.score_no_grad(part).logp
        return self.cfg.bapo_bounds(current, part.old_logp, part.advantages, part.train_mask)

    def loss(
        self, micro: RolloutBatch, normalizer: LossNormalizer, state: PolicyGradientStep
    ) -> LossOutput:
        scores = self.score_for_loss(micro)
        return self.loss_from_scores(micro, scores, normalizer, state.clip_bounds)

    def score_for_loss(self, micro: RolloutBatch) -> TokenScores:
        """The differentiable forward of the loss; the entropy carries a gradient only when
        the entropy bonus is on (it costs the [B, T, V] probabilities in the backward)."""
        return score_tokens(
            self.policy,
            micro,
            self.sampling.temperature,
            with_entropy=True,
            entropy_grad=bool(self.cfg.entropy_coef),
        )

    def loss_from_scores(
        self,
        micro: RolloutBatch,
        scores: TokenScores,
        normalizer: LossNormalizer,
        bounds: ClipBounds | None = None,
    ) -> LossOutput:
        """GRPO's loss terms on an already computed forward (`scores`), so that a method
        adding its own terms (DiPO's reallocated-reward term) reuses the same forward."""
        cfg = self.cfg
        mask = micro.train_mask
        # Without π_old scored beforehand (one update a step), the behaviour policy is the
        # current one: the ratio is exactly 1 in value and carries the gradient of log π.
        old_logp = micro.old_logp if micro.old_logp is not None else scores.logp.detach()
        engine = self.engine_logp(micro)
        policy = cfg.policy_loss(
            scores.logp, old_logp, micro.advantages, mask, normalizer, bounds, engine
        )
        total = policy.loss
        metrics = dict(policy.metrics)
        ent = entropy_bonus(
            scores.entropy, micro.response_mask, cfg.entropy_coef, cfg.aggregation, normalizer
        )
        if cfg.entropy_coef:
            total = total + ent.loss
        metrics.update(ent.metrics)
        if cfg.kl_coef and cfg.kl_in == "loss":
            kl = cfg.kl_term(scores.logp, micro.ref_logp, mask, cfg.kl_coef, normalizer)
            total = total + kl.loss
            metrics.update(kl.metrics)
        return LossOutput(total, metrics, scores)
