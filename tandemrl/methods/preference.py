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

One step:
  offline (`source=offline`, `data=FILE`): the next `rollout.prompts_per_step` pairs of the file
    in a seeded shuffled order (reshuffled each pass); the task only serves the evaluation.
  online (`source=online`): sample `rollout.group_size` responses per prompt with the policy,
    score them with the task's rewards, and take the best vs the worst response of each group
    (`algos.best_worst_pairs`); groups with no reward gap give no pair and are counted.
Then one AdamW update on the pairs (microbatches of `optim.micro_batch_size` sequences, the
loss divided by the step's pair count so microbatches sum to the full-batch loss).

Reference: the policy with adapters off (LoRA), or a frozen copy of the starting model (full
fine-tuning), so the implicit rewards β log π/π_ref start at exactly 0.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from tandemrl.algos import best_worst_pairs, dpo_loss, ipo_loss, rpo_sft_term, sequence_logps
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import Method, accumulate_and_step, reward_metrics, score_rewards
from tandemrl.methods.preference_data import PreferenceRow, load_preference_jsonl, pair_batch
from tandemrl.models import reference_mode
from tandemrl.rollout import RolloutBatch, score_tokens
from tandemrl.tasks import Example


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


class PreferenceMethod(Method):
    """The shared machinery; `loss_kind` picks the loss."""

    loss_kind: ClassVar[str] = "dpo"

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

    def __init__(self, run):
        super().__init__(run)
        cfg = self.cfg
        self.reference = None
        if not self.uses_lora():
            # Full fine-tuning has no adapter-free base to fall back on: keep a frozen copy.
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.rows: list[PreferenceRow] = []
        self.position = 0
        if cfg.source == "offline":
            self.rows = load_preference_jsonl(cfg.data, key=f"{self.loss_kind}.data")

    # -- pairs ----------------------------------------------------------------------------------
    def next_rows(self, n: int) -> list[PreferenceRow]:
        out = []
        for _ in range(n):
            epoch, idx = divmod(self.position, len(self.rows))
            order = list(range(len(self.rows)))
            random.Random(self.run.config.seed * 7919 + epoch).shuffle(order)
            out.append(self.rows[order[idx]])
            self.position += 1
        return out

    def online_pairs(self, step: int, examples: list[Example]) -> tuple[RolloutBatch, dict]:
        batch = self.rollout(step, examples)
        score_rewards(self.run.task, examples, batch)
        metrics = reward_metrics(batch)
        pairs = best_worst_pairs(batch.rewards, batch.group_ids, self.cfg.min_gap)
        gap = batch.rewards[pairs.chosen] - batch.rewards[pairs.rejected]
        metrics["pairs/skipped"] = float(pairs.skipped)
        metrics["pairs/reward_gap_mean"] = gap.mean().item() if gap.numel() else 0.0
        rows = torch.stack([pairs.chosen, pairs.rejected], dim=1).flatten()
        self.last_rollout = batch
        return batch.select(rows), metrics

    # -- scoring and the loss --------------------------------------------------------------------
    def seq_logps(self, model, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π(y) as configured, summed log π(y)) per row."""
        logp = score_tokens(model, batch, 1.0).logp
        mask = batch.response_mask
        return sequence_logps(logp, mask, self.cfg.average_logp), sequence_logps(logp, mask)

    @torch.no_grad()
    def reference_logps(self, batch: RolloutBatch) -> torch.Tensor:
        mb = self.run.config.optim.micro_batch_size
        if self.reference is not None:
            return torch.cat([self.seq_logps(self.reference, m)[0] for m in batch.microbatches(mb)])
        with reference_mode(self.policy):
            return torch.cat([self.seq_logps(self.policy, m)[0] for m in batch.microbatches(mb)])

    def pair_loss(self, policy_logp, ref_logp, chosen_sum, chosen_len, num_pairs):
        """The configured loss on pairs laid out [c_0, r_0, c_1, r_1, ...]."""
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

    # -- the step -------------------------------------------------------------------------------
    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        rc = self.run.config
        t0 = time.perf_counter()
        if self.cfg.source == "online":
            pairs, metrics = self.online_pairs(step, examples)
        else:
            pairs = pair_batch(self.tokenizer, self.next_rows(rc.rollout.prompts_per_step))
            metrics = {"pairs/skipped": 0.0}
        n_pairs = len(pairs) // 2
        metrics["pairs/used"] = float(n_pairs)
        t1 = time.perf_counter()
        if n_pairs == 0:  # no group had a reward gap: nothing to prefer
            self.scheduler.step()
            # Not a fault: `update_skipped` (which stops a run after a streak) stays 0.
            metrics.update({"loss": float("nan"), "update_skipped": 0.0, "update_empty": 1.0})
            metrics.update({"lr": self.scheduler.get_last_lr()[0], "time/generate_s": t1 - t0})
            return metrics
        pairs.extras["ref_logp"] = self.reference_logps(pairs)
        t2 = time.perf_counter()
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def loss_fn(micro: RolloutBatch, _normalizer):
            logp, logp_sum = self.seq_logps(self.policy, micro)
            seen.append((logp.detach(), logp_sum.detach()))
            lengths = micro.response_mask[0::2].sum(-1)
            return self.pair_loss(logp, micro.extras["ref_logp"], logp_sum[0::2], lengths, n_pairs)

        # An even microbatch size keeps each chosen/rejected pair together.
        micro = max(2, rc.optim.micro_batch_size - rc.optim.micro_batch_size % 2)
        out = accumulate_and_step(
            self.policy, self.optimizer, self.scheduler, pairs, loss_fn, micro,
            rc.optim.max_grad_norm,
        )  # fmt: skip
        t3 = time.perf_counter()
        # Pair metrics over the whole step (the microbatches' are token-weighted): the policy
        # log-probs are those before the update, so at step 1 every implicit reward is 0.
        logp, logp_sum = (torch.cat(parts) for parts in zip(*seen, strict=True))
        with torch.no_grad():
            lengths = pairs.response_mask[0::2].sum(-1)
            _, pair_metrics = self.pair_loss(
                logp, pairs.extras["ref_logp"], logp_sum[0::2], lengths, n_pairs
            )
        metrics.update(pair_metrics)
        metrics.update({k: out[k] for k in ("loss", "grad_norm", "lr", "update_skipped")})
        metrics["update_empty"] = 0.0
        metrics.update(
            {
                "response/chosen_length_mean": lengths.float().mean().item(),
                "time/generate_s": t1 - t0,
                "time/logprob_s": t2 - t1,
                "time/update_s": t3 - t2,
            }
        )
        self.last_batch = pairs
        return metrics

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
