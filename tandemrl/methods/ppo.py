"""PPO with a learned critic (Schulman et al., arXiv 1707.06347; for language models as in
Ziegler et al., arXiv 1909.08593, and InstructGPT, arXiv 2203.02155).

One step, for N prompts x G samples (G = 1 is fine: the critic is the baseline):
  1. sample with the policy, score with the task's rewards (NaN = abstain: the row is dropped);
  2. (prepare) old and reference log-probs, and values V_t from the critic, before any
     update;
  3. (advantages) per-token rewards r_t = -kl_coef * KL_t (policy vs reference,
     `kl_in=reward`) on every response token, plus the task reward on the last one; GAE
     (`algos.gae`, γ = `gamma`, λ = `lam`) gives advantages A_t and returns R_t = A_t + V_t;
     A is whitened over the batch's tokens (`whiten_advantages`);
  4. (update) `ppo_epochs` passes over the batch cut into `minibatches` shuffled parts, each one AdamW
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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tandemrl.algos import (
    LossNormalizer,
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
from tandemrl.methods.objective import ClippedObjective
from tandemrl.methods.policy_gradient import PolicyGradient, PolicyGradientStep
from tandemrl.models import LoadedModel
from tandemrl.models.adapters import activate_adapter, adapter_parameters, apply_lora_adapters
from tandemrl.rollout import RolloutBatch
from tandemrl.rollout.logprobs import states_before_responses
from tandemrl.runtime.update import LossOutput, ParamGroup

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


@dataclass
class PPORows:
    """Per row: the critic's values before the update and the GAE returns [B, T]."""

    old_values: torch.Tensor
    returns: torch.Tensor


@dataclass
class PPOStep(PolicyGradientStep):
    values: torch.Tensor | None = None  # [B, T] V_t before any update
    mask: torch.Tensor | None = None  # [B, T] response tokens of rows with a reward


@register_method("ppo")
class PPO(PolicyGradient):
    Config = PPOConfig
    State = PPOStep
    default_policy = POLICY  # the adapter `tandem eval` / `tandem export` serve
    minibatch_by_group = False  # the critic is the baseline: single rows shuffle freely
    # The value head reads the trunk through a second, decoder-only forward: not sharded yet.
    supports_fsdp2 = False

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check("ppo")
        rows = config.rollout.prompts_per_step * config.rollout.group_size
        checks = [
            (0.0 <= cfg.gamma <= 1.0, f"ppo.gamma must be in [0, 1], got {cfg.gamma}"),
            (0.0 <= cfg.lam <= 1.0, f"ppo.lam must be in [0, 1], got {cfg.lam}"),
            (cfg.kl_coef >= 0, f"ppo.kl_coef must be >= 0, got {cfg.kl_coef}"),
            (cfg.critic_lr > 0, f"ppo.critic_lr must be > 0, got {cfg.critic_lr}"),
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

    def build_policy(self, loaded: LoadedModel) -> nn.Module:
        if self.uses_lora_config():
            return apply_lora_adapters(loaded.model, self.config.lora, [POLICY, CRITIC])
        loaded.model.requires_grad_(True)
        return loaded.model

    def setup(self) -> None:
        super().setup()
        hidden = self.run.loaded.model.config.hidden_size
        self.value_head = ValueHead(hidden, self.cfg.value_head_init_std).to(self.device)

    def param_groups(self) -> list[ParamGroup]:
        total = self.config.steps * self.updates_per_step()
        critic = list(self.value_head.parameters())
        if self.uses_lora():
            policy = list(adapter_parameters(self.policy, POLICY).values())
            critic += list(adapter_parameters(self.policy, CRITIC).values())
        else:
            policy = list(self.policy.parameters())
        return [
            ParamGroup(POLICY, policy, self.config.optim.lr, total),
            ParamGroup(CRITIC, critic, self.cfg.critic_lr, total),
        ]

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

    def critic_loss(self, micro: RolloutBatch, normalizer: LossNormalizer) -> LossOutput:
        rows: PPORows = micro.per_row
        result = clipped_value_loss(
            self.values(micro, grad=True),
            rows.old_values,
            rows.returns,
            micro.train_mask,
            clip=self.cfg.value_clip,
            aggregation=self.cfg.aggregation,
            normalizer=normalizer,
        )
        return LossOutput(result.loss, result.metrics)

    # -- hooks ---------------------------------------------------------------------------------
    def rollout(self, step: int, examples) -> RolloutBatch:
        self._use(POLICY, trainable=True)
        return super().rollout(step, examples)

    def prepare(self, state: PPOStep) -> dict[str, float]:
        """Old log-probs, reference log-probs and values: computed once before any update."""
        cfg, batch, mb = self.cfg, state.batch, self.config.optim.micro_batch_size
        valid = ~torch.isnan(batch.rewards)
        state.mask = batch.response_mask * valid.unsqueeze(-1).to(batch.response_mask.dtype)
        batch.loss_mask = state.mask
        if self.needs_old_logp() or self.kl_in_reward():
            batch.old_logp = self.score_no_grad(batch).logp
        if cfg.kl_coef:
            batch.ref_logp = self.reference_logp(batch)
        values = [self.values(m, grad=False) for m in batch.microbatches(mb)]
        state.values = torch.cat(values).cpu()  # GAE runs with the rewards, on the CPU
        self._use(POLICY, trainable=True)
        return {"ppo/dropped_frac": 1.0 - valid.float().mean().item()}

    def kl_in_reward(self) -> bool:
        return self.cfg.kl_coef > 0 and self.cfg.kl_in == "reward"

    def advantages(self, state: PPOStep) -> dict[str, float]:
        """Per-token rewards (task reward + KL penalty) and GAE over the critic's values."""
        cfg, batch, mask, values = self.cfg, state.batch, state.mask, state.values
        metrics: dict[str, float] = {}
        kl = torch.zeros_like(values)
        if self.kl_in_reward():
            kl = kl_penalty(batch.old_logp, batch.ref_logp, cfg.kl_estimator)
        coef = cfg.kl_coef if self.kl_in_reward() else 0.0
        token_rewards, kl_metrics = kl_in_reward(
            torch.nan_to_num(batch.rewards), kl, mask, coef, token_level=True
        )
        if self.kl_in_reward():
            metrics.update(kl_metrics)
        adv, returns = gae(token_rewards, values, mask, cfg.gamma, cfg.lam)
        metrics.update(
            {
                "advantage/mean": masked_mean(adv, mask).item(),
                "advantage/abs_mean": masked_mean(adv.abs(), mask).item(),
                "returns/mean": masked_mean(returns, mask).item(),
                "value/old_mean": masked_mean(values, mask).item(),
                "value/explained_variance": explained_variance(values, returns, mask),
            }
        )
        batch.advantages = masked_whiten(adv, mask) if cfg.whiten_advantages else adv
        batch.per_row = PPORows(old_values=values, returns=returns)
        return metrics

    def update_minibatch(self, state: PPOStep, part: RolloutBatch) -> dict[str, float]:
        """The policy's update on `part`, then the critic's (which then reads the updated
        trunk when it shares the policy's)."""
        self._use(POLICY, trainable=True)
        out = super().update_minibatch(state, part)
        engine = self.update_engine
        critic = engine.accumulate(
            CRITIC, part, self.critic_loss, self.config.optim.micro_batch_size
        )
        out.update(critic.metrics)
        out["critic/loss"] = critic.loss
        for key, value in engine.step([CRITIC])[CRITIC].items():
            out[f"critic/{key}"] = value
        self._use(POLICY, trainable=True)
        return out

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "value_head": self.value_head.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.value_head.load_state_dict(state["value_head"])


__all__ = ["PPO", "PPOConfig", "ValueHead"]
