"""PPO with a learned critic (Schulman et al., arXiv 1707.06347; for language models as in
Ziegler et al., arXiv 1909.08593, and InstructGPT, arXiv 2203.02155).

One step, for N prompts x G samples (G = 1 is fine: the critic is the baseline):
  1. sample with the policy, score with the task's rewards (NaN = abstain: the row is dropped);
  2. per-token rewards r_t = -kl_coef * KL_t (policy vs reference, `kl_in=reward`) on every
     response token, plus the task reward on the last one;
  3. values V_t from the critic, before any update; GAE (`algos.gae`, γ = `gamma`,
     λ = `lam`) gives advantages A_t and returns R_t = A_t + V_t; A is whitened over the
     batch's tokens (`whiten_advantages`);
  4. `ppo_epochs` passes over the batch cut into `minibatches` shuffled parts, each one AdamW
     update of the policy (clipped surrogate, `algos.clipped_policy_loss`) and one of the
     critic (clipped value loss, `algos.clipped_value_loss`) with its own lr `critic_lr`.

Where the critic lives: with LoRA (the default on pretrained models) the policy and the critic
are two adapters, `policy` and `critic`, on the one frozen base, and the value head is a linear
layer on the critic's last hidden state: no second copy of the base. The reference for the KL
is the base with adapters off. With full fine-tuning (`tiny`'s default) there is no frozen base
to hang a second adapter on, so the critic is the value head alone, reading the policy's last
hidden state without gradient (the trunk is shared read-only: the value loss never moves the
policy); the KL reference is then a frozen copy, as in GRPO.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tandemrl.algos import (
    clipped_value_loss,
    explained_variance,
    gae,
    kl_in_reward,
    kl_penalty,
    masked_mean,
    masked_whiten,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import (
    ClippedObjective,
    accumulate_and_step,
    build_scheduler,
    phase_times,
    reward_metrics,
    score_rewards,
)
from tandemrl.methods.grpo import GRPO
from tandemrl.models import LoadedModel
from tandemrl.models.adapters import activate_adapter, adapter_parameters, apply_lora_adapters
from tandemrl.rollout import RolloutBatch, score_tokens
from tandemrl.rollout.logprobs import states_before_responses
from tandemrl.tasks import Example

POLICY, CRITIC = "policy", "critic"


@dataclass
class PPOConfig(ClippedObjective):
    gamma: float = 1.0  # discount per token; 1 = the task reward reaches every token undiscounted
    lam: float = 0.95  # GAE λ: 1 = Monte-Carlo return minus V, 0 = one-step TD
    kl_coef: float = 0.05  # per-token KL penalty to the reference (0 = no reference forward)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # k1 = log π/π_ref, InstructGPT's penalty
    kl_in: Literal["reward", "loss"] = "reward"
    entropy_coef: float = 0.0
    value_clip: float | None = 0.2  # None = unclipped value loss
    critic_lr: float = 5e-4  # the critic's own AdamW lr (policy: optim.lr)
    whiten_advantages: bool = True
    ppo_epochs: int = 1
    minibatches: int = 1  # optimizer updates per epoch (rows shuffled, split evenly)
    value_head_init_std: float = 0.01


class ValueHead(nn.Module):
    """V(s) = w · h + b on the last hidden state h (float32 whatever the model dtype)."""

    def __init__(self, hidden_size: int, init_std: float):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # Small random weights rather than zeros: with w = 0 no gradient would reach the
        # critic adapter through the head on the first update.
        nn.init.normal_(self.linear.weight, std=init_std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


@register_method("ppo")
class PPO(GRPO):
    Config = PPOConfig
    default_policy = POLICY  # the adapter `tandem eval` / `tandem export` serve

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check()
        rows = config.rollout.prompts_per_step * config.rollout.group_size
        checks = [
            (0.0 <= cfg.gamma <= 1.0, f"ppo.gamma must be in [0, 1], got {cfg.gamma}"),
            (0.0 <= cfg.lam <= 1.0, f"ppo.lam must be in [0, 1], got {cfg.lam}"),
            (cfg.kl_coef >= 0, f"ppo.kl_coef must be >= 0, got {cfg.kl_coef}"),
            (cfg.critic_lr > 0, f"ppo.critic_lr must be > 0, got {cfg.critic_lr}"),
            (cfg.ppo_epochs >= 1, f"ppo.ppo_epochs must be >= 1, got {cfg.ppo_epochs}"),
            (
                cfg.value_clip is None or cfg.value_clip > 0,
                f"ppo.value_clip must be > 0 or null (no clipping), got {cfg.value_clip}",
            ),
            (
                1 <= cfg.minibatches <= rows,
                f"ppo.minibatches must be in [1, {rows}] (rollout.prompts_per_step x "
                f"rollout.group_size sequences per step), got {cfg.minibatches}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def __init__(self, run):
        super().__init__(run)
        rc, cfg = run.config, self.cfg
        updates = rc.steps * cfg.ppo_epochs * cfg.minibatches
        # Schedules count optimizer updates (ppo_epochs x minibatches per step).
        self.scheduler = build_scheduler(self.optimizer, rc.optim, updates)
        hidden = run.loaded.model.config.hidden_size
        self.value_head = ValueHead(hidden, cfg.value_head_init_std)
        critic = list(self.value_head.parameters())
        if self.uses_lora():
            critic += list(adapter_parameters(self.policy, CRITIC).values())
        # A view of the critic's parameters for `accumulate_and_step` (no copies).
        self.critic = nn.ParameterList(critic)
        opt = run.config.optim
        self.critic_optimizer = torch.optim.AdamW(
            critic, lr=cfg.critic_lr, betas=(opt.beta1, opt.beta2), weight_decay=opt.weight_decay
        )
        self.critic_scheduler = build_scheduler(self.critic_optimizer, opt, updates)

    def build_policy(self, loaded: LoadedModel) -> nn.Module:
        lora = self.run.config.lora
        if loaded.pretrained if lora.enabled == "auto" else bool(lora.enabled):
            return apply_lora_adapters(loaded.model, lora, [POLICY, CRITIC])
        loaded.model.requires_grad_(True)
        return loaded.model

    def uses_lora(self) -> bool:
        return hasattr(self.policy, "peft_config")

    def _use(self, adapter: str, trainable: bool) -> None:
        if self.uses_lora():
            activate_adapter(self.policy, adapter, trainable=trainable)

    def eval_policy(self) -> nn.Module:
        self._use(POLICY, trainable=True)
        return self.policy

    # -- the critic ----------------------------------------------------------------------------
    def values(self, batch: RolloutBatch, grad: bool) -> torch.Tensor:
        """V_t [B, T] for each response token t: the value head on the last hidden state at
        the position that predicts y_t (the state before y_t), as `score_tokens` aligns logits.

        Leaves the critic adapter active (trainable if `grad`): a parameter must keep
        requires_grad until the backward pass or autograd drops its gradient, so callers
        switch back to the policy after backward.
        """
        shares_trunk = not self.uses_lora()
        self._use(CRITIC, trainable=grad)
        # peft injects the adapters into the base's own layers: its decoder runs the active one.
        base = self.policy if shares_trunk else self.policy.get_base_model()
        decoder = base.get_decoder()
        trunk_grad = grad and not shares_trunk
        with contextlib.nullcontext() if trunk_grad else torch.no_grad():
            hidden = states_before_responses(
                decoder,
                batch.prompt_ids,
                batch.prompt_mask,
                batch.response_ids,
                batch.response_mask,
            )
        with contextlib.nullcontext() if grad else torch.no_grad():
            return self.value_head(hidden)

    def critic_loss(self, micro: RolloutBatch, normalizer):
        result = clipped_value_loss(
            self.values(micro, grad=True),
            micro.extras["old_values"],
            micro.extras["returns"],
            micro.train_mask,
            clip=self.cfg.value_clip,
            aggregation=self.cfg.aggregation,
            normalizer=normalizer,
        )
        return result.loss, result.metrics

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def _policy_logp(self, batch: RolloutBatch) -> torch.Tensor:
        mb = self.run.config.optim.micro_batch_size
        temp = self.sampling.temperature
        return torch.cat([score_tokens(self.policy, m, temp).logp for m in batch.microbatches(mb)])

    def prepare(self, batch: RolloutBatch) -> dict[str, float]:
        """Old log-probs, reference log-probs, values, per-token rewards, GAE: everything the
        updates need, computed once before any update."""
        cfg, mb = self.cfg, self.run.config.optim.micro_batch_size
        valid = ~torch.isnan(batch.rewards)
        mask = batch.response_mask * valid.unsqueeze(-1).to(batch.response_mask.dtype)
        batch.loss_mask = mask
        metrics: dict[str, float] = {"ppo/dropped_frac": 1.0 - valid.float().mean().item()}
        several_updates = cfg.ppo_epochs * cfg.minibatches > 1
        kl_reward = cfg.kl_coef > 0 and cfg.kl_in == "reward"
        if several_updates or kl_reward:
            batch.old_logp = self._policy_logp(batch)
        if cfg.kl_coef:
            batch.ref_logp = self.reference_logp(batch)
        old_values = torch.cat([self.values(m, grad=False) for m in batch.microbatches(mb)])
        self._use(POLICY, trainable=True)
        kl = torch.zeros_like(old_values)
        if kl_reward:
            kl = kl_penalty(batch.old_logp, batch.ref_logp, cfg.kl_estimator)
        coef = cfg.kl_coef if kl_reward else 0.0
        token_rewards, kl_metrics = kl_in_reward(
            torch.nan_to_num(batch.rewards), kl, mask, coef, token_level=True
        )
        if kl_reward:
            metrics.update(kl_metrics)
        adv, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
        metrics.update(
            {
                "advantage/mean": masked_mean(adv, mask).item(),
                "advantage/abs_mean": masked_mean(adv.abs(), mask).item(),
                "returns/mean": masked_mean(returns, mask).item(),
                "value/old_mean": masked_mean(old_values, mask).item(),
                "value/explained_variance": explained_variance(old_values, returns, mask),
            }
        )
        batch.advantages = masked_whiten(adv, mask) if cfg.whiten_advantages else adv
        batch.extras["old_values"], batch.extras["returns"] = old_values, returns
        return metrics

    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        rc, cfg = self.run.config, self.cfg
        t0 = time.perf_counter()
        self._use(POLICY, trainable=True)
        batch = self.rollout(step, examples)
        t1 = time.perf_counter()
        score_rewards(self.run.task, examples, batch)
        metrics = reward_metrics(batch)
        t2 = time.perf_counter()
        metrics.update(self.prepare(batch))
        t3 = time.perf_counter()
        gen = torch.Generator().manual_seed(rc.seed * 1_000_003 + step)
        updates: list[dict[str, float]] = []
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(batch), generator=gen)
            for rows in order.tensor_split(cfg.minibatches):
                part = batch.select(rows.sort().values)
                self._use(POLICY, trainable=True)
                out = accumulate_and_step(
                    self.policy, self.optimizer, self.scheduler, part, self.loss,
                    rc.optim.micro_batch_size, rc.optim.max_grad_norm,
                )  # fmt: skip
                critic = accumulate_and_step(
                    self.critic, self.critic_optimizer, self.critic_scheduler, part,
                    self.critic_loss, rc.optim.micro_batch_size, rc.optim.max_grad_norm,
                )  # fmt: skip
                for key in ("loss", "grad_norm", "lr", "update_skipped"):
                    out[f"critic/{key}"] = critic.pop(key)
                updates.append({**out, **critic})
        self._use(POLICY, trainable=True)
        t4 = time.perf_counter()
        # Mean over this step's updates (one by default).
        metrics.update({k: sum(u[k] for u in updates) / len(updates) for k in updates[0]})
        metrics.update(phase_times(t0, t1, t2, t3, t4))
        self.last_batch = batch
        return metrics

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "value_head": self.value_head.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "critic_scheduler": self.critic_scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.value_head.load_state_dict(state["value_head"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.critic_scheduler.load_state_dict(state["critic_scheduler"])


__all__ = ["PPO", "PPOConfig", "ValueHead"]
