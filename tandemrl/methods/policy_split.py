"""Policy Split: a normal and a high-entropy mode of one policy (arXiv 2604.11510; seed 003,
METHODS.md §4). One set of weights; the mode is chosen by the prompt (policy_split_modes).

One step, for N prompts and n = `n_per_mode` (default rollout.group_size / 2):
  1. one batched decode samples n responses per prompt in each mode (2n per prompt, as many
     as GRPO with group_size 2n); task rewards r for all;
  2. the correctness advantage A_i (`advantage`, GRPO z-score by default) over the pooled 2n
     responses of a prompt: both modes train on the same 2n responses, so they share A_i;
  3. four pairings (prompt mode x response mode): each mode trains on its own n and the other
     mode's n, all scored under the TRAINING mode's prompt;
  4. normal mode: A_i (optionally + the clamped token term below with its own surprisal,
     eta' = `normal_eta`); high-entropy mode, per token (algos.policy_split_token_advantages):
       e_t = alpha * (-log pi(y_t | s, q)) + (1 - alpha) * (-log pi(y_t | q))
       A_it = A_i + clip(eta * z(e)_t, -|A_i| / kappa, |A_i| / kappa), z over the group's tokens
  5. one AdamW update on the clipped surrogate over both modes' pairings (token-mean over all
     4Nn rows = the mean of the two modes' losses; + KL to the reference when kl_coef > 0);
  6. the entropy guard halves eta for the next step when the high-entropy mode's entropy runs
     away (policy_split_modes.EntropyGuard).

Old log-probs. With one update per batch, pi_old is the policy before this step's update,
evaluated under the training mode's prompt: the detached log-probs of the same forward, so the
ratio is exactly 1 in value and carries the gradient of log pi(y | training prompt). The
behaviour distribution of a cross pairing (the other prompt) is deliberately not used as
pi_old: rho = pi(y|s,q) / pi(y|q) would be far from 1 and the clip would zero most of the
shared responses' signal; the paper recomputes log-probs under the training mode's prompt.

Cost: the update runs the forward and backward over 2x GRPO's rows (each response under both
prompts); no extra scoring pass: the normal-prompt part runs first and its detached
log-probs are the (1 - alpha) term of the high-entropy part, whose microbatches hold whole
groups (optim.micro_batch_size is rounded down to a multiple of 2n, at least 2n).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from tandemrl.algos import (
    ADVANTAGES,
    POLICY_LOSSES,
    LossNormalizer,
    kl_loss,
    policy_split_token_advantages,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import (
    GroupObjective,
    accumulate_and_step,
    phase_times,
    reward_metrics,
    score_rewards,
)
from tandemrl.methods.grpo import GRPO
from tandemrl.methods.policy_split_modes import (
    DEFAULT_HIGH_ENTROPY_PROMPT,
    HIGH_ENTROPY,
    MODES,
    NORMAL,
    EntropyGuard,
    mode_metrics,
    mode_transform,
    pairings,
    trim_left_padding,
)
from tandemrl.rollout import RolloutBatch, generate, score_tokens
from tandemrl.tasks import Example


@dataclass
class PolicySplitConfig(GroupObjective):
    n_per_mode: int | None = None  # responses per mode per prompt; None = group_size // 2
    system_prompt: str = DEFAULT_HIGH_ENTROPY_PROMPT  # the high-entropy mode's instruction
    system_role: Literal["auto", "system", "prefix"] = "auto"  # where it goes (see modes)
    alpha: float = 0.5  # weight of the own-mode surprisal in e_t
    eta: float = 0.03  # high-entropy token term scale (starting value; the guard lowers it)
    kappa: float = 2.0  # the term is clamped to |A_i| / kappa
    normal_eta: float = 0.0  # eta' of the normal mode (own surprisal only; < 0 sharpens)
    kl_coef: float = 0.0  # KL to the reference in the loss, both modes (0 = no reference)
    entropy_guard: bool = True
    guard_ratio: float = 1.5  # H_he > ratio x its first-step value (0 = off)
    guard_vs_normal: float = 3.0  # H_he > this x the normal mode's H in the step (0 = off)
    guard_factor: float = 0.5  # eta <- factor * eta when triggered
    eta_floor: float = 0.003  # the guard never lowers eta below this


@register_method("policy_split")
class PolicySplit(GRPO):
    Config = PolicySplitConfig
    eval_modes: ClassVar[tuple[str, ...]] = MODES
    default_mode: ClassVar[str] = NORMAL

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check()
        g = config.rollout.group_size
        if cfg.n_per_mode is None and g % 2:
            raise ConfigError(
                f"policy_split splits rollout.group_size between two modes, so it must be even "
                f"(got {g}): set rollout.group_size={g + 1} or policy_split.n_per_mode=N "
                "(then 2N responses per prompt)"
            )
        checks = [
            (cls.per_mode(config) >= 1, "policy_split.n_per_mode must be >= 1"),
            (0.0 <= cfg.alpha <= 1.0, "policy_split.alpha must be in [0, 1]"),
            (cfg.kappa > 0, "policy_split.kappa must be > 0 (1 or more keeps sign(A_i))"),
            (cfg.eta >= 0, "policy_split.eta must be >= 0 (the high-entropy mode explores)"),
            (0 < cfg.guard_factor < 1, "policy_split.guard_factor must be in (0, 1)"),
            (cfg.eta_floor >= 0, "policy_split.eta_floor must be >= 0"),
            (min(cfg.guard_ratio, cfg.guard_vs_normal) >= 0, "policy_split.guard_* must be >= 0"),
            (cfg.system_prompt.strip() != "", "policy_split.system_prompt must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @staticmethod
    def per_mode(config) -> int:
        n = config.method_config.n_per_mode
        return config.rollout.group_size // 2 if n is None else n

    @classmethod
    def eval_prompt_transform(cls, config, tokenizer, mode: str):
        """The message transform `tandem eval mode=...` applies to every held-out prompt."""
        if mode not in MODES:
            raise ConfigError(f"policy_split has modes {', '.join(MODES)}; got mode={mode}")
        cfg = config.method_config
        return mode_transform(mode, cfg.system_prompt, cfg.system_role, tokenizer)

    def __init__(self, run):
        super().__init__(run)
        cfg, rc = self.cfg, run.config
        self.n = self.per_mode(rc)
        group = 2 * self.n
        self.micro_size = max(group, rc.optim.micro_batch_size // group * group)
        self.transforms = {
            m: mode_transform(m, cfg.system_prompt, cfg.system_role, self.tokenizer) for m in MODES
        }
        self.eta = cfg.eta
        self.guard = EntropyGuard(
            cfg.guard_ratio, cfg.guard_vs_normal, cfg.guard_factor, cfg.eta_floor,
            cfg.entropy_guard,
        )  # fmt: skip

    # -- rollout ------------------------------------------------------------------------------
    def rollout(self, step: int, examples: list[Example]) -> RolloutBatch:
        """n responses per prompt in each mode, one decode: rows [normal | high-entropy]."""
        rc, n_ex = self.run.config, len(examples)
        messages = [self.transforms[m](ex.messages) for m in MODES for ex in examples]
        batch = generate(
            self.policy,
            self.tokenizer,
            messages,
            self.n,
            self.sampling,
            seed=self.rollout_seed(step),
            batch_size=rc.rollout.generation_batch_size,
        )
        source = batch.group_ids.clone()
        batch.extras["high_entropy"] = source >= n_ex
        batch.group_ids = source % n_ex
        batch.example_index = [i % n_ex for i in batch.example_index]
        # Each example's prompt in each mode, padded alike: row (m * N + i) * n of the decode.
        first = torch.arange(2 * n_ex) * self.n
        self.prompts = {
            m: (batch.prompt_ids[first[k * n_ex : (k + 1) * n_ex]],
                batch.prompt_mask[first[k * n_ex : (k + 1) * n_ex]])
            for k, m in enumerate(MODES)
        }  # fmt: skip
        return batch

    def training_batch(self, full: RolloutBatch) -> RolloutBatch:
        """The four pairings with the pooled-group advantage A_i and the loss mask."""
        res = ADVANTAGES.get(self.cfg.advantage)(
            full.rewards, full.group_ids, **self.cfg.advantage_options
        )
        full.advantages = res.advantages.float()
        full.loss_mask = full.response_mask * res.keep.unsqueeze(-1).to(full.response_mask.dtype)
        self.advantage_metrics = res.metrics
        return pairings(full, self.prompts)

    # -- loss ---------------------------------------------------------------------------------
    def token_advantages(self, micro: RolloutBatch, logp: torch.Tensor) -> torch.Tensor:
        """[B, T] advantages of a microbatch of whole groups; `logp` = its detached log-probs
        under its own prompts. High-entropy rows need the normal-prompt log-probs of the same
        responses in `self.normal_logp` (filled by the earlier normal-prompt microbatches)."""
        cfg = self.cfg
        high = micro.extras["prompt_high"]
        adv = micro.advantages.unsqueeze(-1).expand_as(logp).clone() * micro.response_mask
        mask = micro.train_mask
        if high.any() and self.eta:
            other = self.normal_logp[micro.extras["row"][high]]
            if torch.isnan(other[mask[high] > 0]).any():
                raise RuntimeError("policy_split: a high-entropy row came before its normal row")
            adv[high], term = policy_split_token_advantages(
                micro.advantages[high], -logp[high], -other, mask[high], micro.group_ids[high],
                alpha=cfg.alpha, eta=self.eta, kappa=cfg.kappa,
            )  # fmt: skip
            weight = float(mask[high].sum())
            for key, value in term.items():
                self.term_sums[key] = self.term_sums.get(key, 0.0) + value * weight
            self.term_sums["_tokens"] = self.term_sums.get("_tokens", 0.0) + weight
        if (~high).any() and cfg.normal_eta:
            own = -logp[~high]
            adv[~high], _ = policy_split_token_advantages(
                micro.advantages[~high], own, own, mask[~high], micro.group_ids[~high],
                alpha=1.0, eta=cfg.normal_eta, kappa=cfg.kappa,
            )  # fmt: skip
        return adv

    def begin_update(self, full: RolloutBatch) -> None:
        """Empty the per-step buffers the microbatches fill: log-probs and entropies of every
        response under each prompt ([B_full, T], NaN = not scored yet) and term metrics."""
        shape = full.response_ids.shape
        self.scored_logp = {m: torch.full(shape, math.nan) for m in MODES}
        self.scored_entropy = {m: torch.full(shape, math.nan) for m in MODES}
        self.normal_logp = self.scored_logp[NORMAL]
        self.term_sums: dict[str, float] = {}

    def micro_advantages(self, micro: RolloutBatch, scores) -> torch.Tensor:
        """Record a microbatch's (detached) scores in the buffers, return its [B, T]
        advantages."""
        logp = scores.logp.detach()
        high, rows = micro.extras["prompt_high"], micro.extras["row"]
        for mode, sel in ((NORMAL, ~high), (HIGH_ENTROPY, high)):
            self.scored_logp[mode][rows[sel]] = logp[sel]
            self.scored_entropy[mode][rows[sel]] = scores.entropy[sel]
        return self.token_advantages(micro, logp)

    def loss(self, micro: RolloutBatch, normalizer: LossNormalizer):
        cfg = self.cfg
        micro = trim_left_padding(micro)
        scores = score_tokens(self.policy, micro, self.sampling.temperature, with_entropy=True)
        logp = scores.logp.detach()
        adv = self.micro_advantages(micro, scores)
        # pi_old = the pre-update policy under THIS row's (training) prompt: ratio 1 in value.
        policy = POLICY_LOSSES.get(cfg.loss)(
            scores.logp, logp, adv, micro.train_mask,
            clip_low=cfg.clip_low, clip_high=cfg.clip_high,
            aggregation=cfg.aggregation, normalizer=normalizer,
        )  # fmt: skip
        total, metrics = policy.loss, dict(policy.metrics)
        if cfg.kl_coef:
            kl = kl_loss(
                scores.logp, micro.ref_logp, micro.train_mask, coef=cfg.kl_coef,
                kind=cfg.kl_estimator, aggregation=cfg.aggregation, normalizer=normalizer,
            )  # fmt: skip
            total = total + kl.loss
            metrics.update(kl.metrics)
        return total, metrics

    # -- the step -----------------------------------------------------------------------------
    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        rc, cfg = self.run.config, self.cfg
        t0 = time.perf_counter()
        full = self.rollout(step, examples)
        t1 = time.perf_counter()
        score_rewards(self.run.task, examples, full)
        train = self.training_batch(full)
        t2 = time.perf_counter()
        ref = None
        if cfg.kl_coef:
            train.ref_logp = self.reference_logp(train)
            ref = self.per_prompt_mode(train, train.ref_logp)
        self.begin_update(full)
        eta_used = self.eta
        t3 = time.perf_counter()
        update = accumulate_and_step(
            self.policy, self.optimizer, self.scheduler, train, self.loss,
            self.micro_size, rc.optim.max_grad_norm,
        )  # fmt: skip
        t4 = time.perf_counter()
        # Unprefixed keys describe the served (normal) mode, as for single-mode methods.
        metrics = reward_metrics(full.select((~full.extras["high_entropy"]).nonzero().squeeze(-1)))
        metrics.update(self.advantage_metrics)
        metrics.update(update)
        tokens = self.term_sums.pop("_tokens", 0.0)
        metrics.update({k: v / tokens for k, v in self.term_sums.items()})
        metrics.update(
            mode_metrics(full, self.scored_logp, self.scored_entropy, ref, cfg.kl_estimator)
        )
        self.eta, triggered = self.guard.update(
            eta_used, metrics["normal/entropy/mean"], metrics["high_entropy/entropy/mean"]
        )
        metrics.update({"policy_split/eta": eta_used, "policy_split/guard_triggered": float(
            triggered), "policy_split/guard_triggers": float(self.guard.triggers)})  # fmt: skip
        metrics["entropy/mean"] = metrics["normal/entropy/mean"]
        if "normal/kl" in metrics:
            metrics["kl"] = metrics["normal/kl"]
        metrics.update(phase_times(t0, t1, t2, t3, t4))
        self.last_batch, self.last_full = train, full
        return metrics

    @staticmethod
    def per_prompt_mode(train: RolloutBatch, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """[2B, T] values over the pairings -> {mode: [B, T]} indexed like the full batch."""
        out = {}
        for mode, high in ((NORMAL, False), (HIGH_ENTROPY, True)):
            sel = train.extras["prompt_high"] == high
            part = torch.empty_like(values[sel])
            part[train.extras["row"][sel]] = values[sel]
            out[mode] = part
        return out

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "policy_split": {"eta": self.eta, **self.guard.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        own = state.get("policy_split")
        if own:
            self.eta = own["eta"]
            self.guard.load_state_dict(own)


__all__ = ["PolicySplit", "PolicySplitConfig"]
