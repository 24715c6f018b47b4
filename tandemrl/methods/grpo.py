"""GRPO: group-relative policy optimisation (DeepSeekMath, arXiv 2402.03300).

One step:
  1. sample G responses for each of N prompts with the current policy;
  2. score them with the task's reward functions (weighted sum, NaN = abstain);
  3. advantages from a registered estimator (`grpo` group z-score by default; `rloo`, Dr.GRPO
     via `advantage_options.std_mode=none`, or your own `module:function`);
  4. one AdamW update on the clipped surrogate (+ optional KL to the reference and entropy
     bonus), aggregated with an explicit global normaliser over microbatches.

DAPO-style options: `clip_high=0.28`, `aggregation=token-mean`, `dynamic_sampling=true`
(drop groups whose rewards are all equal: they carry no GRPO signal).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import torch

from tandemrl.algos import (
    ADVANTAGES,
    POLICY_LOSSES,
    LossNormalizer,
    entropy_bonus,
    groups_with_signal,
    kl_in_reward,
    kl_loss,
    kl_penalty,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import (
    GroupObjective,
    Method,
    accumulate_and_step,
    phase_times,
    reward_metrics,
    score_rewards,
)
from tandemrl.models import reference_mode
from tandemrl.rollout import RolloutBatch, score_tokens
from tandemrl.tasks import Example


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

    def __init__(self, run):
        super().__init__(run)
        self.reference = None
        if self.cfg.kl_coef > 0 and not self.uses_lora():
            # Full fine-tuning has no adapter-free base to fall back on: keep a frozen copy.
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)

    # -- pieces other methods reuse ---------------------------------------------------------
    @torch.no_grad()
    def reference_logp(self, batch: RolloutBatch) -> torch.Tensor:
        mb = self.run.config.optim.micro_batch_size
        if self.reference is not None:
            parts = [
                score_tokens(self.reference, m, self.sampling.temperature).logp
                for m in batch.microbatches(mb)
            ]
        else:
            with reference_mode(self.policy):
                parts = [
                    score_tokens(self.policy, m, self.sampling.temperature).logp
                    for m in batch.microbatches(mb)
                ]
        return torch.cat(parts)

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        estimator = ADVANTAGES.get(self.cfg.advantage)
        result = estimator(batch.rewards, batch.group_ids, **self.cfg.advantage_options)
        keep = result.keep
        if self.cfg.dynamic_sampling:
            keep = keep & groups_with_signal(batch.rewards, batch.group_ids)
        batch.advantages = result.advantages
        batch.loss_mask = batch.response_mask * keep.unsqueeze(-1).to(batch.response_mask.dtype)
        return {**result.metrics, "advantage/kept_frac": keep.float().mean().item()}

    def loss(self, micro: RolloutBatch, normalizer: LossNormalizer):
        scores = self.score_for_loss(micro)
        return self.loss_from_scores(micro, scores, normalizer)

    def score_for_loss(self, micro: RolloutBatch):
        """The differentiable forward of the loss; the entropy carries a gradient only when
        the entropy bonus is on (it costs the [B, T, V] probabilities in the backward)."""
        return score_tokens(
            self.policy,
            micro,
            self.sampling.temperature,
            with_entropy=True,
            entropy_grad=bool(self.cfg.entropy_coef),
        )

    def loss_from_scores(self, micro: RolloutBatch, scores, normalizer: LossNormalizer):
        """GRPO's loss terms on an already computed forward (`scores`), so that a method
        adding its own terms (DiPO's reallocated-reward term) reuses the same forward."""
        cfg = self.cfg
        mask = micro.train_mask
        # One update per batch: the behaviour policy is the current one, so the ratio is
        # exactly 1 in value but still carries the gradient of log π.
        old_logp = micro.old_logp if micro.old_logp is not None else scores.logp.detach()
        policy = POLICY_LOSSES.get(cfg.loss)(
            scores.logp,
            old_logp,
            micro.advantages,
            mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            aggregation=cfg.aggregation,
            normalizer=normalizer,
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
            kl = kl_loss(
                scores.logp,
                micro.ref_logp,
                mask,
                coef=cfg.kl_coef,
                kind=cfg.kl_estimator,
                aggregation=cfg.aggregation,
                normalizer=normalizer,
            )
            total = total + kl.loss
            metrics.update(kl.metrics)
        return total, metrics

    # -- the step ----------------------------------------------------------------------------
    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        rc = self.run.config
        t0 = time.perf_counter()
        batch = self.rollout(step, examples)
        t1 = time.perf_counter()
        score_rewards(self.run.task, examples, batch)
        metrics = reward_metrics(batch)
        t2 = time.perf_counter()
        if self.cfg.kl_coef:
            batch.ref_logp = self.reference_logp(batch)
            if self.cfg.kl_in == "reward":
                with torch.no_grad():
                    mb = rc.optim.micro_batch_size
                    batch.old_logp = torch.cat(
                        [
                            score_tokens(self.policy, m, self.sampling.temperature).logp
                            for m in batch.microbatches(mb)
                        ]
                    )
                kl = kl_penalty(batch.old_logp, batch.ref_logp, self.cfg.kl_estimator)
                batch.rewards, kl_metrics = kl_in_reward(
                    batch.rewards, kl, batch.response_mask, self.cfg.kl_coef
                )
                metrics.update(kl_metrics)
        metrics.update(self.compute_advantages(batch))
        t3 = time.perf_counter()
        metrics.update(
            accumulate_and_step(
                self.policy,
                self.optimizer,
                self.scheduler,
                batch,
                self.loss,
                rc.optim.micro_batch_size,
                rc.optim.max_grad_norm,
            )
        )
        t4 = time.perf_counter()
        metrics.update(phase_times(t0, t1, t2, t3, t4))
        self.last_batch = batch
        return metrics
