"""A full method in one file: REINFORCE with a running-mean baseline, on tandemrl's skeleton.

    tandem train model=tiny task=arith2 method=examples.custom_method:RunningBaseline \
        reinforce.momentum=0.9 steps=2

What a method fills (tandemrl/methods/base.py runs them in this order, timed):
  Config       its config section (here `reinforce:` / `reinforce.momentum=...`);
  advantages   A_i = r_i - b, with b an exponential moving average of past mean rewards;
  update       one optimizer step through the update engine, loss = -sum_t A_i log pi(y_t)
               / (tokens in the batch), the engine's global normaliser;
  state_dict   the baseline, so a resumed run continues with it.
rollout, score and prepare keep the base class's defaults (G samples per prompt, the task's
rewards, nothing to precompute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tandemrl.algos import LossNormalizer, aggregate
from tandemrl.errors import ConfigError
from tandemrl.methods import Method
from tandemrl.methods.base import StepState
from tandemrl.rollout import RolloutBatch, score_tokens
from tandemrl.runtime.update import LossOutput


@dataclass
class ReinforceConfig:
    momentum: float = 0.9  # b <- momentum * b + (1 - momentum) * mean reward


class RunningBaseline(Method):
    name = "reinforce"  # its config section; `method=examples.custom_method:RunningBaseline`
    Config = ReinforceConfig

    @classmethod
    def check_config(cls, config) -> None:
        if not 0.0 <= config.method_config.momentum < 1.0:
            raise ConfigError("reinforce.momentum must be in [0, 1)")

    def setup(self) -> None:
        self.baseline: float | None = None

    def advantages(self, state: StepState) -> dict[str, float]:
        batch = state.batch
        rewards = torch.nan_to_num(batch.rewards)  # an abstained row counts as 0
        mean = rewards.mean().item()
        if self.baseline is None:
            self.baseline = mean
        batch.advantages = rewards - self.baseline
        m = self.cfg.momentum
        self.baseline = m * self.baseline + (1 - m) * mean
        return {"reinforce/baseline": self.baseline}

    def update(self, state: StepState) -> dict[str, float]:
        acc = self.update_engine.accumulate(
            "policy", state.batch, self.loss, self.config.optim.micro_batch_size
        )
        return {"loss": acc.loss, **self.update_engine.step(["policy"])["policy"]}

    def loss(self, micro: RolloutBatch, normalizer: LossNormalizer) -> LossOutput:
        logp = score_tokens(self.policy, micro, self.sampling.temperature).logp
        per_token = -micro.advantages.unsqueeze(-1) * logp
        return LossOutput(aggregate(per_token, micro.train_mask, "token-mean", normalizer))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.baseline = state["baseline"]
