"""Policy Split: a normal and a high-entropy mode of one policy (arXiv 2604.11510;
docs/policy_split.md). One set of weights; the mode is chosen by the prompt
(policy_split_modes).

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
prompts); no extra scoring pass: the update is two passes into one optimizer step, the
normal-prompt pairings first, whose detached log-probs are handed to the high-entropy pass
as the (1 - alpha) term. Microbatches hold whole groups (optim.micro_batch_size is rounded
down to a multiple of 2n, at least 2n), since the token z-score is per group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from tandemrl.algos import LossNormalizer, policy_split_token_advantages
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.objective import GroupObjective, bapo_metrics
from tandemrl.methods.policy_gradient import PolicyGradient, PolicyGradientStep
from tandemrl.methods.policy_split_modes import (
    DEFAULT_HIGH_ENTROPY_PROMPT,
    HIGH_ENTROPY,
    MODES,
    NORMAL,
    EntropyGuard,
    ModeRows,
    PairingRows,
    mode_metrics,
    mode_transform,
    pairings,
    trim_left_padding,
)
from tandemrl.methods.rewards import reward_metrics
from tandemrl.rollout import RolloutBatch, TokenScores, score_tokens
from tandemrl.runtime.update import Accumulated, LossOutput


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


@dataclass
class SplitStep(PolicyGradientStep):
    pairings: RolloutBatch | None = None  # every response under each mode's prompt
    eta: float = 0.0  # the token-term scale this step uses
    scores: dict[str, TokenScores] | None = None  # [B_full, T] under each mode's prompt
    ref_logp: dict[str, torch.Tensor] | None = None  # likewise, the reference's


@register_method("policy_split")
class PolicySplit(PolicyGradient):
    Config = PolicySplitConfig
    supports_tis = False  # rows train under another mode's prompt than they were sampled in
    State = SplitStep
    eval_modes: ClassVar[tuple[str, ...]] = MODES
    default_mode: ClassVar[str] = NORMAL

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check("policy_split")
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

    def setup(self) -> None:
        super().setup()
        cfg, rc = self.cfg, self.config
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

    # -- hooks --------------------------------------------------------------------------------
    def rollout(self, step: int, examples) -> RolloutBatch:
        """n responses per prompt in each mode, one decode: rows [normal | high-entropy]."""
        n_ex = len(examples)
        messages = [self.transforms[m](ex.messages) for m in MODES for ex in examples]
        batch = self.sample(step, messages, self.n)
        source = batch.group_ids.clone()
        batch.per_row = ModeRows(high_entropy=source >= n_ex)
        batch.group_ids = source % n_ex
        batch.example_index = [i % n_ex for i in batch.example_index]
        return batch

    def score(self, state: SplitStep) -> dict[str, float]:
        super().score(state)
        full = state.batch
        # Unprefixed keys describe the served (normal) mode, as for single-mode methods.
        return reward_metrics(full.select((~full.per_row.high_entropy).nonzero().squeeze(-1)))

    def prepare(self, state: SplitStep) -> dict[str, float]:
        """The four pairings; their old log-probs (several updates, BAPO) and the
        reference's (kl_coef > 0)."""
        state.pairings = pairings(state.batch)
        if self.needs_old_logp():
            old = self.score_no_grad(state.pairings, with_entropy=True)
            state.pairings.old_logp = old.logp
            state.scores = self.per_prompt_mode_scores_of(state.pairings, old)
        if self.cfg.kl_coef:
            state.pairings.ref_logp = self.reference_logp(state.pairings)
            state.ref_logp = self.per_prompt_mode(state.pairings, state.pairings.ref_logp)
        return {}

    def advantages(self, state: SplitStep) -> dict[str, float]:
        """A_i over the pooled 2n responses of a prompt, shared by both modes' pairings (the
        token term is added per microbatch, where the log-probs are)."""
        full, train = state.batch, state.pairings
        res = self.cfg.group_advantages(full.rewards, full.group_ids)
        full.advantages = res.advantages.float()
        full.loss_mask = full.response_mask * res.keep.unsqueeze(-1).to(full.response_mask.dtype)
        rows = train.per_row.row
        train.advantages, train.loss_mask = full.advantages[rows], full.loss_mask[rows]
        state.eta = self.eta
        return dict(res.metrics)

    def training_batch(self, state: SplitStep) -> RolloutBatch:
        return state.pairings

    def update_minibatch(self, state: SplitStep, part: RolloutBatch) -> dict[str, float]:
        state.clip_bounds = self.clip_bounds(part)
        normal, high = self.backward_passes(state, part)
        result = self.update_engine.step(["policy"])["policy"]
        merged = normal.merge(high)
        return {**merged.metrics, "loss": merged.loss, **result, **bapo_metrics(state.clip_bounds)}

    def backward_passes(
        self, state: SplitStep, part: RolloutBatch | None = None
    ) -> tuple[Accumulated, Accumulated]:
        """One update's forward and backward (of `part`, default all pairings), in two passes
        into one gradient: the normal-prompt pairings, then the high-entropy-prompt pairings
        with the normal pass's log-probs of the same responses (row i of each half is the
        same response). Without old log-probs (one update a step), the passes' scores are
        the pre-update ones the per-mode metrics read (`state.scores`)."""
        train, engine = state.pairings if part is None else part, self.update_engine
        normalizer = engine.normalizer(train.train_mask)
        high = train.per_row.prompt_high
        parts = {NORMAL: train.select((~high).nonzero().squeeze(-1)),
                 HIGH_ENTROPY: train.select(high.nonzero().squeeze(-1))}  # fmt: skip
        loss = lambda micro, norm: self.loss(micro, norm, state)  # noqa: E731
        normal = engine.accumulate("policy", parts[NORMAL], loss, self.micro_size, normalizer)
        parts[HIGH_ENTROPY].per_row.normal_logp = normal.scores.logp
        high_pass = engine.accumulate(
            "policy", parts[HIGH_ENTROPY], loss, self.micro_size, normalizer
        )
        if state.scores is None:
            state.scores = {
                mode: self.per_prompt_mode_scores(parts[mode], acc.scores)
                for mode, acc in ((NORMAL, normal), (HIGH_ENTROPY, high_pass))
            }
        return normal, high_pass

    def finish(self, state: SplitStep) -> dict[str, float]:
        """Per-mode metrics, and the entropy guard's eta for the next step."""
        cfg = self.cfg
        metrics = mode_metrics(state.batch, state.scores, state.ref_logp, cfg.kl_estimator)
        self.eta, triggered = self.guard.update(
            state.eta, metrics["normal/entropy/mean"], metrics["high_entropy/entropy/mean"]
        )
        metrics.update(
            {
                "policy_split/eta": state.eta,
                "policy_split/guard_triggered": float(triggered),
                "policy_split/guard_triggers": float(self.guard.triggers),
                "entropy/mean": metrics["normal/entropy/mean"],
            }
        )
        if "normal/kl" in metrics:
            metrics["kl"] = metrics["normal/kl"]
        return metrics

    # -- the loss -----------------------------------------------------------------------------
    def token_advantages(
        self, micro: RolloutBatch, logp: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """[B, T] advantages of a microbatch of whole groups under one prompt mode; `logp` =
        its detached log-probs. The high-entropy mode's term reads the normal-prompt
        log-probs of the same responses (`per_row.normal_logp`)."""
        cfg, rows = self.cfg, micro.per_row
        adv = micro.advantages.unsqueeze(-1).expand_as(logp).clone() * micro.response_mask
        mask, groups = micro.train_mask, micro.group_ids
        if bool(rows.prompt_high.any()):
            if rows.normal_logp is None:
                raise RuntimeError("policy_split: the high-entropy pass needs the normal pass's")
            if not eta:
                return adv, {}
            return policy_split_token_advantages(
                micro.advantages, -logp, -rows.normal_logp, mask, groups,
                alpha=cfg.alpha, eta=eta, kappa=cfg.kappa,
            )  # fmt: skip
        if cfg.normal_eta:
            own = -logp
            adv, _ = policy_split_token_advantages(
                micro.advantages, own, own, mask, groups,
                alpha=1.0, eta=cfg.normal_eta, kappa=cfg.kappa,
            )  # fmt: skip
        return adv, {}

    def loss(self, micro: RolloutBatch, normalizer: LossNormalizer, state: SplitStep) -> LossOutput:
        cfg = self.cfg
        micro = trim_left_padding(micro)
        scores = score_tokens(self.policy, micro, self.sampling.temperature, with_entropy=True)
        logp = scores.logp.detach()
        adv, term_metrics = self.token_advantages(micro, logp, state.eta)
        # pi_old = the pre-update policy under THIS row's (training) prompt: ratio 1 in value.
        old_logp = micro.old_logp if micro.old_logp is not None else logp
        policy = cfg.policy_loss(
            scores.logp, old_logp, adv, micro.train_mask, normalizer, state.clip_bounds
        )
        total, metrics = policy.loss, {**policy.metrics, **term_metrics}
        if cfg.kl_coef:
            kl = cfg.kl_term(scores.logp, micro.ref_logp, micro.train_mask, cfg.kl_coef, normalizer)
            total = total + kl.loss
            metrics.update(kl.metrics)
        return LossOutput(total, metrics, scores)

    @staticmethod
    def per_prompt_mode(train: RolloutBatch, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """[2B, T] values over the pairings -> {mode: [B, T]} indexed like the full batch."""
        out = {}
        for mode, high in ((NORMAL, False), (HIGH_ENTROPY, True)):
            sel = train.per_row.prompt_high == high
            part = torch.empty_like(values[sel])
            part[train.per_row.row[sel]] = values[sel]
            out[mode] = part
        return out

    @classmethod
    def per_prompt_mode_scores_of(
        cls, train: RolloutBatch, scores: TokenScores
    ) -> dict[str, TokenScores]:
        """Scores of all pairings -> {mode: TokenScores [B_full, T]} like the rollout."""
        high = train.per_row.prompt_high
        out = {}
        for mode, sel in ((NORMAL, ~high), (HIGH_ENTROPY, high)):
            rows = sel.nonzero().squeeze(-1)
            part = TokenScores(scores.logp[rows], scores.entropy[rows])
            out[mode] = cls.per_prompt_mode_scores(train.select(rows), part)
        return out

    @staticmethod
    def per_prompt_mode_scores(part: RolloutBatch, scores: TokenScores) -> TokenScores:
        """One mode's pass scores, re-indexed like the full batch."""
        rows = part.per_row.row
        logp, entropy = torch.empty_like(scores.logp), torch.empty_like(scores.entropy)
        logp[rows], entropy[rows] = scores.logp, scores.entropy
        return TokenScores(logp, entropy)

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


__all__ = ["PairingRows", "PolicySplit", "PolicySplitConfig"]
