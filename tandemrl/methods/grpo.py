"""GRPO: group-relative policy optimisation (DeepSeekMath, arXiv 2402.03300).

One step, filling the skeleton of `methods.base`:
  rollout     G responses for each of N prompts from the current policy;
  score       the task's reward functions (weighted sum, NaN = abstain);
  prepare     reference log-probs when kl_coef > 0 (with `kl_in=reward`, the KL penalty is
              subtracted from the rewards here);
  advantages  a registered estimator (`grpo` group z-score by default; `rloo`, Dr.GRPO via
              `advantage_options.std_mode=none`, or your own `module:function`);
  update      one AdamW update on the clipped surrogate (+ optional KL to the reference and
              entropy bonus), aggregated with an explicit global normaliser over microbatches.

DAPO-style options: `clip_high=0.28`, `aggregation=token-mean`, `dynamic_sampling=true`
(drop groups whose rewards are all equal: they carry no GRPO signal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tandemrl.algos import (
    LossNormalizer,
    entropy_bonus,
    groups_with_signal,
    kl_in_reward,
    kl_penalty,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import Method, StepState
from tandemrl.methods.objective import GroupObjective
from tandemrl.methods.reference import ReferencePolicy
from tandemrl.rollout import RolloutBatch, TokenScores, score_tokens
from tandemrl.runtime.update import LossOutput


@dataclass
class GRPOConfig(GroupObjective):
    kl_coef: float = 0.0  # 0 loads no reference and runs no reference forward
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False


@register_method("grpo")
class GRPO(Method):
    Config = GRPOConfig

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check()
        if config.rollout.group_size < 2 and cfg.advantage in ("grpo", "rloo"):
            raise ConfigError(
                f"grpo.advantage={cfg.advantage} needs rollout.group_size >= 2 (a group of one "
                "has no baseline: every advantage would be 0)"
            )

    def setup(self) -> None:
        self.reference = ReferencePolicy(self.policy) if self.cfg.kl_coef > 0 else None

    # -- hooks ------------------------------------------------------------------------------
    def prepare(self, state: StepState) -> dict[str, float]:
        cfg, batch = self.cfg, state.batch
        if not cfg.kl_coef:
            return {}
        batch.ref_logp = self.reference_logp(batch)
        if cfg.kl_in != "reward":
            return {}
        batch.old_logp = self.score_no_grad(batch).logp
        kl = kl_penalty(batch.old_logp, batch.ref_logp, cfg.kl_estimator)
        batch.rewards, metrics = kl_in_reward(batch.rewards, kl, batch.response_mask, cfg.kl_coef)
        return metrics

    def advantages(self, state: StepState) -> dict[str, float]:
        batch = state.batch
        result = self.cfg.group_advantages(batch.rewards, batch.group_ids)
        keep = result.keep
        if self.cfg.dynamic_sampling:
            keep = keep & groups_with_signal(batch.rewards, batch.group_ids)
        batch.advantages = result.advantages
        batch.loss_mask = batch.response_mask * keep.unsqueeze(-1).to(batch.response_mask.dtype)
        return {**result.metrics, "advantage/kept_frac": keep.float().mean().item()}

    def update(self, state: StepState) -> dict[str, float]:
        acc = self.update_engine.accumulate(
            "policy",
            state.batch,
            lambda micro, normalizer: self.loss(micro, normalizer, state),
            self.config.optim.micro_batch_size,
        )
        result = self.update_engine.step(["policy"])["policy"]
        return {**acc.metrics, "loss": acc.loss, **result}

    # -- pieces other methods reuse ---------------------------------------------------------
    def reference_logp(self, batch: RolloutBatch):
        mb = self.config.optim.micro_batch_size
        return self.reference.scores(batch, self.sampling.temperature, mb).logp

    def loss(self, micro: RolloutBatch, normalizer: LossNormalizer, state: StepState) -> LossOutput:
        scores = self.score_for_loss(micro)
        return self.loss_from_scores(micro, scores, normalizer)

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
        self, micro: RolloutBatch, scores: TokenScores, normalizer: LossNormalizer
    ) -> LossOutput:
        """GRPO's loss terms on an already computed forward (`scores`), so that a method
        adding its own terms (DiPO's reallocated-reward term) reuses the same forward."""
        cfg = self.cfg
        mask = micro.train_mask
        # One update per batch: the behaviour policy is the current one, so the ratio is
        # exactly 1 in value but still carries the gradient of log π.
        old_logp = micro.old_logp if micro.old_logp is not None else scores.logp.detach()
        policy = cfg.policy_loss(scores.logp, old_logp, micro.advantages, mask, normalizer)
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
