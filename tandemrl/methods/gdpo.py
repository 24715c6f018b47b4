"""GDPO and GD²PO: several named rewards without letting them cancel (docs/multi_reward.md).

Both are GRPO (same rollout, loss, KL, entropy, dynamic sampling, update) with another
advantage. The rewards are the task's named reward functions with their weights
(`task.rewards`, e.g. `task_options.weights` for bfcl); `batch.reward_matrix` [B, K] holds them.

  gdpo  (arXiv 2601.05242): A_{k,i} = (r_{k,i} - mean_g r_k) / (std_g r_k + eps) per reward,
        S_i = sum_k w_k A_{k,i}, then A_i = whiten_batch(S_i).
  gd2po (arXiv 2606.16771): a_{k,i} = w_k A_{k,i}; rollouts whose a_{k,i} have both signs
        conflict; `filter=hard` drops them, `filter=snr` drops them only when
        |sum_k a_{k,i}| / sum_k |a_{k,i}| < tau, `filter=none` keeps all; the query weight
        w_q = kept_q / G scales the group's sums; A_i = whiten over kept of (w_q sum_k a_{k,i}).

`gdpo.multi_reward=sum` is the baseline the papers compare with: plain GRPO on the weighted sum
of the rewards (the `advantage`/`advantage_options` keys apply), with the same per-reward
logging; `method=grpo` trains the same way but logs only the rewards' means.

Logged every step, besides GRPO's metrics: `reward/<name>/{mean,std,zero_var_group_frac}`,
`multi_reward/conflict_rate`, `multi_reward/kept_frac`, `multi_reward/query_weight_{mean,min,
max}`, `multi_reward/groups_all_dropped_frac`, and for gd2po `gd2po/{conflict_rate,
dropped_frac,query_weight_mean}` from the estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tandemrl.algos import AdvantageResult, gd2po_advantages, gdpo_advantages, groups_with_signal
from tandemrl.algos.reward_stats import multi_reward_stats
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import StepState
from tandemrl.methods.grpo import GRPO, GRPOConfig
from tandemrl.rollout import RolloutBatch


@dataclass
class GDPOConfig(GRPOConfig):
    # decoupled = GDPO's per-reward normalisation; sum = GRPO on the weighted sum (baseline)
    multi_reward: Literal["decoupled", "sum"] = "decoupled"
    batch_norm: bool = True  # whiten the summed advantages over the batch
    eps: float = 1e-6


@dataclass
class GD2POConfig(GDPOConfig):
    filter: Literal["hard", "snr", "none"] = "hard"
    tau: float = 0.5  # snr filter: drop a conflicting rollout when |s_i| < tau
    query_reweight: bool = True
    conflict_tol: float = 1e-6  # |a_{k,i}| at or below this counts as neither sign


@register_method("gdpo")
class GDPO(GRPO):
    Config = GDPOConfig

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.rollout.group_size < 2:
            raise ConfigError(
                f"{cls.name} normalises each reward within a group: rollout.group_size must be "
                f">= 2, got {config.rollout.group_size}"
            )
        cfg = config.method_config
        if cfg.multi_reward == "decoupled" and cfg.kl_coef > 0 and cfg.kl_in == "reward":
            raise ConfigError(
                f"{cls.name}.kl_in=reward would subtract the KL from the summed reward only, "
                f"which {cls.name} does not train on; use {cls.name}.kl_in=loss"
            )
        if cfg.eps <= 0:
            raise ConfigError(f"{cls.name}.eps must be > 0, e.g. {cls.name}.eps=1e-6")

    def setup(self) -> None:
        super().setup()
        self.weights = torch.tensor([spec.weight for spec in self.run.task.rewards])

    def multi_reward_advantages(self, batch: RolloutBatch) -> AdvantageResult:
        return gdpo_advantages(
            batch.reward_matrix,
            batch.group_ids,
            weights=self.weights,
            eps=self.cfg.eps,
            batch_norm=self.cfg.batch_norm,
        )

    def estimate(self, batch: RolloutBatch) -> AdvantageResult:
        if self.cfg.multi_reward == "sum":
            return super().estimate(batch)
        return self.multi_reward_advantages(batch)

    def with_signal(self, batch: RolloutBatch) -> torch.Tensor:
        """Decoupled: a group has signal when any of its rewards varies."""
        rewards = batch.rewards if self.cfg.multi_reward == "sum" else batch.reward_matrix
        return groups_with_signal(rewards, batch.group_ids)

    def advantages(self, state: StepState) -> dict[str, float]:
        metrics = super().advantages(state)
        batch = state.batch
        keep = batch.train_mask.sum(-1) > 0
        stats = multi_reward_stats(
            batch.reward_matrix, batch.group_ids, batch.reward_names, self.weights, keep
        )
        return {**metrics, **stats}


@register_method("gd2po")
class GD2PO(GDPO):
    Config = GD2POConfig

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        cfg = config.method_config
        if cfg.multi_reward == "sum":
            raise ConfigError(
                "gd2po.multi_reward=sum would skip GD²PO's filter; for the weighted-sum "
                "baseline use method=gdpo gdpo.multi_reward=sum"
            )
        if not cfg.batch_norm:
            raise ConfigError(
                "gd2po always whitens the kept rollouts' advantages: remove gd2po.batch_norm"
            )
        if cfg.filter == "snr" and not 0 <= cfg.tau <= 1:
            raise ConfigError(
                f"gd2po.tau must be in [0, 1] (|s_i| is at most 1), got {cfg.tau}; "
                "the paper's range is 0.2 to 0.8"
            )

    def multi_reward_advantages(self, batch: RolloutBatch):
        return gd2po_advantages(
            batch.reward_matrix,
            batch.group_ids,
            weights=self.weights,
            filter=self.cfg.filter,
            tau=self.cfg.tau,
            query_reweight=self.cfg.query_reweight,
            eps=self.cfg.eps,
            conflict_tol=self.cfg.conflict_tol,
        )
