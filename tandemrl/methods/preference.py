"""DPO and IPO (`method=dpo`, `method=ipo`): preference optimisation against a frozen reference,
offline from a JSONL of (prompt, chosen, rejected) or online from the policy's own samples.

  DPO (Rafailov et al., arXiv 2305.18290):  h = β[(log π(y_w) - log π_ref(y_w))
                                                   - (log π(y_l) - log π_ref(y_l))]
                                            loss = -log σ(h)  (label smoothing ε: conservative DPO)
  IPO (Azar et al., arXiv 2310.12036):      loss = (h/β - 1/(2β))²
  RPO's SFT term (arXiv 2405.16436), either: + rpo_alpha · (-log π(y_w) / |y_w|)
(formulas and metrics in `tandemrl.algos.preference`). log π(y) is the response's summed
token log-prob, or the per-token mean with `average_logp` (IPO's default, as TRL runs it).
Log-probs are those of the model itself (temperature 1), whatever the sampling temperature.

One step, filling the skeleton of `methods.base`:
  offline (`source=offline`, `data=FILE`): `rollout` reads the next `rollout.prompts_per_step`
    pairs of the file in a seeded shuffled order (reshuffled each pass); the task only serves
    the evaluation.
  online (`source=online`): `rollout` samples `rollout.group_size` responses per prompt with
    the policy, `score` scores them with the task's rewards and takes the best vs the worst
    response of each group (`algos.best_worst_pairs`); groups with no reward gap give no pair
    and are counted.
`prepare` scores the pairs under the reference; `update` makes one AdamW update on the pairs (microbatches of `optim.micro_batch_size` sequences, the
loss divided by the step's pair count so microbatches sum to the full-batch loss).

Reference: the policy with adapters off (LoRA), or a frozen copy of the starting model (full
fine-tuning), so the implicit rewards β log π/π_ref start at exactly 0.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from tandemrl.algos import best_worst_pairs, dpo_loss, ipo_loss, rpo_sft_term, sequence_logps
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import Method, StepState
from tandemrl.methods.preference_data import PreferenceRow, load_preference_jsonl, pair_batch
from tandemrl.methods.reference import ReferencePolicy
from tandemrl.methods.rewards import reward_metrics, score_rewards
from tandemrl.rollout import RolloutBatch, TokenScores, score_tokens
from tandemrl.runtime.update import LossOutput


@dataclass
class DPOConfig:
    source: Literal["online", "offline"] = "online"
    data: str | None = None  # offline: path to a JSONL of prompt/chosen/rejected
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO's ε (DPO only)
    rpo_alpha: float = 0.0  # weight of RPO's length-normalised NLL of the chosen response
    average_logp: bool = False  # per-token mean log-prob instead of the sum
    min_gap: float = 0.0  # online: skip groups with best - worst reward <= min_gap


@dataclass
class IPOConfig(DPOConfig):
    average_logp: bool = True


@dataclass
class PairRows:
    """Per row of the pairs batch [c_0, r_0, c_1, r_1, ...]: log π_ref(y) as configured."""

    ref_logp: torch.Tensor  # [2P]


@dataclass
class PreferenceStep(StepState):
    pairs: RolloutBatch | None = None  # chosen/rejected rows, interleaved


class PreferenceMethod(Method):
    """The shared machinery; `loss_kind` picks the loss."""

    loss_kind: ClassVar[str] = "dpo"
    State = PreferenceStep

    @classmethod
    def check_config(cls, config) -> None:
        cfg, name = config.method_config, cls.loss_kind
        if cfg.beta <= 0:
            raise ConfigError(f"{name}.beta must be > 0, got {cfg.beta}")
        if not 0.0 <= cfg.label_smoothing < 0.5:
            raise ConfigError(
                f"{name}.label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}"
            )
        if cfg.label_smoothing and name != "dpo":
            raise ConfigError(f"{name}.label_smoothing applies to dpo only; remove it")
        if cfg.rpo_alpha < 0:
            raise ConfigError(f"{name}.rpo_alpha must be >= 0, got {cfg.rpo_alpha}")
        if cfg.source == "offline":
            if not cfg.data:
                raise ConfigError(
                    f"{name}.source=offline needs {name}.data=FILE.jsonl (prompt/chosen/rejected)"
                )
            load_preference_jsonl(cfg.data, key=f"{name}.data")
        elif cfg.data:
            raise ConfigError(f"{name}.data is read only with {name}.source=offline; set both")
        elif config.rollout.group_size < 2:
            raise ConfigError(
                f"online {name} pairs the best and worst of each group: rollout.group_size must "
                f"be >= 2, got {config.rollout.group_size}"
            )

    def setup(self) -> None:
        self.reference = ReferencePolicy(self.policy)
        self.rows: list[PreferenceRow] = []
        self.position = 0
        if self.cfg.source == "offline":
            self.rows = load_preference_jsonl(self.cfg.data, key=f"{self.loss_kind}.data")

    # -- hooks ----------------------------------------------------------------------------------
    def rollout(self, step: int, examples) -> RolloutBatch:
        if self.cfg.source == "online":
            return super().rollout(step, examples)
        return pair_batch(self.tokenizer, self.next_rows(self.config.rollout.prompts_per_step))

    def score(self, state: PreferenceStep) -> dict[str, float]:
        """Online: rewards, then the best vs the worst response of each group."""
        if self.cfg.source == "offline":
            state.pairs = state.batch
            return {"pairs/skipped": 0.0, "pairs/used": float(len(state.pairs) // 2)}
        batch = state.batch
        score_rewards(self.run.task, state.examples, batch)
        metrics = reward_metrics(batch)
        pairs = best_worst_pairs(batch.rewards, batch.group_ids, self.cfg.min_gap)
        gap = batch.rewards[pairs.chosen] - batch.rewards[pairs.rejected]
        metrics["pairs/skipped"] = float(pairs.skipped)
        metrics["pairs/reward_gap_mean"] = gap.mean().item() if gap.numel() else 0.0
        state.pairs = batch.select(torch.stack([pairs.chosen, pairs.rejected], dim=1).flatten())
        metrics["pairs/used"] = float(len(state.pairs) // 2)
        return metrics

    def prepare(self, state: PreferenceStep) -> dict[str, float]:
        if len(state.pairs):
            mb = self.config.optim.micro_batch_size
            token_logp = self.reference.scores(state.pairs, 1.0, mb).logp
            state.pairs.per_row = PairRows(self.sequence_logp(token_logp, state.pairs))
        return {}

    def update(self, state: PreferenceStep) -> dict[str, float]:
        pairs, n_pairs = state.pairs, len(state.pairs) // 2
        if n_pairs == 0:  # no group had a reward gap: nothing to prefer
            lr = self.update_engine.lr("policy")
            self.update_engine.advance_schedule(["policy"])
            # Not a fault: `update_skipped` (which stops a run after a streak) stays 0.
            return {"loss": float("nan"), "update_skipped": 0.0, "update_empty": 1.0, "lr": lr}
        # An even microbatch size keeps each chosen/rejected pair together.
        mb = self.config.optim.micro_batch_size
        acc = self.update_engine.accumulate(
            "policy", pairs, lambda micro, _: self.loss(micro, n_pairs), max(2, mb - mb % 2)
        )
        result = self.update_engine.step(["policy"])["policy"]
        # Pair metrics over the whole step (the microbatches' are token-weighted): the policy
        # log-probs are those before the update, so at step 1 every implicit reward is 0.
        lengths = pairs.response_mask[0::2].sum(-1)
        with torch.no_grad():
            _, pair_metrics = self.pairs_loss(acc.scores.logp, pairs, n_pairs)
        return {
            **pair_metrics,
            "loss": acc.loss,
            **result,
            "update_empty": 0.0,
            "response/chosen_length_mean": lengths.float().mean().item(),
        }

    # -- pairs ----------------------------------------------------------------------------------
    def next_rows(self, n: int) -> list[PreferenceRow]:
        out = []
        for _ in range(n):
            epoch, idx = divmod(self.position, len(self.rows))
            order = list(range(len(self.rows)))
            random.Random(self.config.seed * 7919 + epoch).shuffle(order)
            out.append(self.rows[order[idx]])
            self.position += 1
        return out

    # -- the loss -------------------------------------------------------------------------------
    def sequence_logp(self, token_logp: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
        """log π(y) per row as configured: summed, or the per-token mean (`average_logp`)."""
        return sequence_logps(token_logp, batch.response_mask, self.cfg.average_logp)

    def loss(self, micro: RolloutBatch, num_pairs: int) -> LossOutput:
        # Log-probs of the model itself (temperature 1), whatever the sampling temperature.
        scores = score_tokens(self.policy, micro, 1.0)
        loss, metrics = self.pairs_loss(scores.logp, micro, num_pairs)
        return LossOutput(loss, metrics, TokenScores(scores.logp, None))

    def pairs_loss(
        self, token_logp: torch.Tensor, pairs: RolloutBatch, num_pairs: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`pair_loss` from the policy's token log-probs of a pairs batch."""
        mask = pairs.response_mask
        return self.pair_loss(
            self.sequence_logp(token_logp, pairs),
            pairs.per_row.ref_logp,
            sequence_logps(token_logp, mask)[0::2],
            mask[0::2].sum(-1),
            num_pairs,
        )

    def pair_loss(self, policy_logp, ref_logp, chosen_sum, chosen_len, num_pairs):
        """The configured loss on pairs laid out [c_0, r_0, c_1, r_1, ...]: log π(y) and
        log π_ref(y) per row as configured, the chosen rows' summed log-probs and lengths
        (RPO's term), averaged over `num_pairs` (the step's, so microbatches add up)."""
        cfg = self.cfg
        args = (policy_logp[0::2], policy_logp[1::2], ref_logp[0::2], ref_logp[1::2])
        if self.loss_kind == "dpo":
            res = dpo_loss(*args, cfg.beta, cfg.label_smoothing, num_pairs=num_pairs)
        else:
            res = ipo_loss(*args, cfg.beta, num_pairs=num_pairs)
        loss, metrics = res.loss, dict(res.metrics)
        if cfg.rpo_alpha:
            sft = rpo_sft_term(chosen_sum, chosen_len)
            loss = loss + cfg.rpo_alpha * sft.sum() / num_pairs
            metrics[f"{self.loss_kind}/sft_nll"] = sft.detach().mean().item()
        return loss, metrics

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "pair_position": self.position}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.position = state.get("pair_position", 0)


@register_method("dpo")
class DPO(PreferenceMethod):
    Config = DPOConfig
    loss_kind = "dpo"


@register_method("ipo")
class IPO(PreferenceMethod):
    Config = IPOConfig
    loss_kind = "ipo"


__all__ = ["DPO", "DPOConfig", "IPO", "IPOConfig", "PreferenceMethod"]
