"""GRPO: group-relative policy optimisation (DeepSeekMath, arXiv 2402.03300), with DAPO's
options (arXiv 2503.14476) and D³S selection (arXiv 2509.22115).

One step, filling the skeleton of `methods.base`:
  rollout     G responses for each of N prompts from the current policy;
  score       the task's reward functions (weighted sum, NaN = abstain); with
              `dynamic_sampling`, more prompts are sampled until N groups have reward variance
              (DAPO), at most `max_sampling_rounds` generations;
  prepare     old log-probs (several updates, BAPO, D³S tokens), reference log-probs when
              kl_coef > 0 (`methods.policy_gradient`);
  advantages  a registered estimator (`grpo` group z-score by default; `rloo`, Dr.GRPO via
              `advantage_options.std_mode=none` + `aggregation=seq-mean-token-sum-norm`, or
              your own `module:function`); D³S keeps the rollouts / tokens it selects;
  update      `ppo_epochs` x `minibatches` updates of the clipped surrogate with KL and entropy
              terms (`methods.policy_gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from tandemrl.algos import (
    AdvantageResult,
    d3s_sample_select,
    d3s_schedule,
    d3s_token_select,
    groups_with_signal,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.objective import GroupObjective
from tandemrl.methods.policy_gradient import PolicyGradient, PolicyGradientStep
from tandemrl.methods.rewards import reward_metrics, score_rewards
from tandemrl.rollout import RolloutBatch
from tandemrl.runtime import distributed as dist


@dataclass
class D3SConfig:
    """D³S down-sampling (arXiv 2509.22115): keep the rollouts of each group whose advantages
    vary most, and the tokens with the largest |A| x entropy; the kept shares go linearly from
    `*_start` (aggressive) to `*_end` (relaxed) over `schedule_steps` (None: the run). 1 = off."""

    sample_keep_start: float = 1.0
    sample_keep_end: float = 1.0
    token_keep_start: float = 1.0
    token_keep_end: float = 1.0
    token_scope: Literal["batch", "sequence"] = "batch"
    schedule_steps: int | None = None

    def check(self, section: str) -> None:
        for name in ("sample_keep_start", "sample_keep_end", "token_keep_start", "token_keep_end"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{section}.d3s.{name} must be in (0, 1] (1 = keep all)")

    def selects_tokens(self) -> bool:
        return min(self.token_keep_start, self.token_keep_end) < 1.0

    def selects_samples(self) -> bool:
        return min(self.sample_keep_start, self.sample_keep_end) < 1.0


@dataclass
class GRPOConfig(GroupObjective):
    kl_coef: float = 0.0  # 0 loads no reference and runs no reference forward
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False  # DAPO: fill the batch with groups that have variance
    max_sampling_rounds: int = 4  # generations a step may take to fill it (DAPO's cap)
    d3s: D3SConfig = field(default_factory=D3SConfig)


@register_method("grpo")
class GRPO(PolicyGradient):
    Config = GRPOConfig
    # dynamic_sampling refills the batch (DAPO); a method that learns from zero-variance
    # groups (DiPO) keeps them and only drops them from the group-advantage term.
    refills_batch = True

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check(cls.name)
        cfg.d3s.check(cls.name)
        if config.rollout.group_size < 2 and cfg.advantage in ("grpo", "rloo"):
            raise ConfigError(
                f"{cls.name}.advantage={cfg.advantage} needs rollout.group_size >= 2 (a group "
                "of one has no baseline: every advantage would be 0)"
            )
        if cfg.max_sampling_rounds < 1:
            raise ConfigError(f"{cls.name}.max_sampling_rounds must be >= 1")
        if cfg.minibatches > config.rollout.prompts_per_step:
            raise ConfigError(
                f"{cls.name}.minibatches={cfg.minibatches} exceeds rollout.prompts_per_step="
                f"{config.rollout.prompts_per_step}: each minibatch holds whole groups"
            )

    def needs_old_logp(self) -> bool:
        return super().needs_old_logp() or self.cfg.d3s.selects_tokens()

    def needs_entropy(self) -> bool:
        return self.cfg.d3s.selects_tokens()

    # -- hooks ------------------------------------------------------------------------------
    def score(self, state: PolicyGradientStep) -> dict[str, float]:
        if self.cfg.dynamic_sampling and self.refills_batch:
            return self.fill_with_signal(state)
        return super().score(state)

    def advantages(self, state: PolicyGradientStep) -> dict[str, float]:
        batch = state.batch
        result = self.estimate(batch)
        keep = result.keep
        if self.cfg.dynamic_sampling:  # groups the filling could not replace
            keep = keep & self.with_signal(batch)
        batch.advantages = torch.where(keep, result.advantages, 0.0)
        batch.loss_mask = batch.response_mask * keep.unsqueeze(-1).to(batch.response_mask.dtype)
        metrics = {**result.metrics, "advantage/kept_frac": keep.float().mean().item()}
        metrics.update(self.select_d3s(state))
        return metrics

    def estimate(self, batch: RolloutBatch) -> AdvantageResult:
        """The advantages of the rewarded batch (GRPO: the configured group estimator)."""
        return self.cfg.group_advantages(batch.rewards, batch.group_ids)

    def with_signal(self, batch: RolloutBatch) -> torch.Tensor:
        """[B] rows of groups whose rewards vary (what dynamic sampling keeps)."""
        return groups_with_signal(batch.rewards, batch.group_ids)

    # -- DAPO dynamic sampling and D³S ------------------------------------------------------
    def fill_with_signal(self, state: PolicyGradientStep) -> dict[str, float]:
        """DAPO's dynamic sampling: score the rollout, keep the groups whose rewards vary,
        and sample further prompts (`RunContext.draw_prompts`; the step's own prompts again
        when there is none) until this rank holds as many such groups as it has prompts, at
        most `max_sampling_rounds` generations. Ranks take the same number of rounds, so the
        data position stays the same on every rank."""
        target, examples = len(state.examples), list(state.examples)
        kept: list[RolloutBatch] = []
        batch, n_kept, rounds = state.batch, 0, 1
        while True:
            score_rewards(self.run.task, examples, batch)
            signal = self.with_signal(batch)
            groups = batch.group_ids[signal].unique()[: target - n_kept]
            if len(groups):
                kept.append(batch.select(torch.isin(batch.group_ids, groups).nonzero().squeeze(-1)))
                n_kept += len(groups)
            if rounds >= self.cfg.max_sampling_rounds or not dist.any_rank(n_kept < target):
                break
            more = self.run.draw_prompts() if self.run.draw_prompts else state.examples
            batch = self.sample(state.step, [ex.messages for ex in more], self.config.rollout.group_size, round=rounds)  # fmt: skip
            batch.example_index = [i + len(examples) for i in batch.example_index]
            batch.group_ids = batch.group_ids + len(examples)
            examples += more
            rounds += 1
        state.batch = RolloutBatch.concat(kept) if kept else state.batch.select([])
        state.examples = examples
        metrics = reward_metrics(state.batch) if len(state.batch) else {}
        metrics.update(
            {
                "dynamic_sampling/rounds": float(rounds),
                "dynamic_sampling/extra_prompts": float(len(examples) - target),
                "dynamic_sampling/groups_with_signal": float(n_kept),
                "dynamic_sampling/filled": float(n_kept >= target),
            }
        )
        return metrics

    def select_d3s(self, state: PolicyGradientStep) -> dict[str, float]:
        """D³S: narrow the loss mask to the selected rollouts and tokens (module docstring)."""
        d3s, batch = self.cfg.d3s, state.batch
        if not (d3s.selects_samples() or d3s.selects_tokens()):
            return {}
        steps = d3s.schedule_steps or self.config.steps
        metrics: dict[str, float] = {}
        mask = batch.train_mask
        if d3s.selects_samples():
            ratio = d3s_schedule(state.step, steps, d3s.sample_keep_start, d3s.sample_keep_end)
            rows = mask.sum(-1) > 0
            chosen, m = d3s_sample_select(batch.advantages, batch.group_ids, ratio, keep=rows)
            mask = mask * chosen.unsqueeze(-1).to(mask.dtype)
            metrics.update({**m, "d3s/sample_keep": ratio})
        if d3s.selects_tokens():
            ratio = d3s_schedule(state.step, steps, d3s.token_keep_start, d3s.token_keep_end)
            tokens, m = d3s_token_select(batch.advantages, state.entropy, mask, ratio, scope=d3s.token_scope)  # fmt: skip
            mask = mask * tokens.to(mask.dtype)
            metrics.update({**m, "d3s/token_keep": ratio})
        batch.loss_mask = mask
        return metrics
