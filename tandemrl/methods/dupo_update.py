"""DuPO's update machinery: one loss for either policy, per-adapter accumulation and steps,
gradient sharing, and no-grad scoring under a chosen adapter (or none: the reference).

Kept apart from `dupo.py` so that file reads as the method; the formulas are documented there
and in `tandemrl.algos.dual`.
"""

from __future__ import annotations

from typing import Any

import torch

from tandemrl.algos import (
    POLICY_LOSSES,
    LossNormalizer,
    aggregate,
    entropy_bonus,
    kl_loss,
    share_gradients,
    truncated_importance_weights,
)
from tandemrl.models import reference_mode
from tandemrl.models.adapters import activate_adapter, adapter_parameters
from tandemrl.models.memory import release_freed_memory
from tandemrl.rollout import RolloutBatch, score_tokens
from tandemrl.runtime import distributed as dist


class DualAdapterUpdates:
    """Mixin for a `Method` with `self.policy` (a peft model with several adapters),
    `self.cfg` (a `DuPOConfig`), `self.sampling`, per-adapter `self.optimizers` /
    `self.schedulers`, and `self.reward_history` / `self.history` (saved in checkpoints)."""

    def loss(self, policy: str, micro: RolloutBatch, norms: dict[str, LossNormalizer]):
        """Clipped surrogate with off-policy weights on shared rows, + KL, entropy, distill.

        Per token: A_i * w_t with w_t = min(pi(y_t) / pi_behaviour(y_t), cap) on shared rows
        (1 elsewhere); KL and entropy only on the policy's own samples (the k3 estimator
        assumes y ~ pi); distill = mean NLL over the distilled rows' tokens.
        """
        cfg = self.cfg
        bonus_on = policy == "explore" and bool(cfg.explore_entropy_coef)
        scores = score_tokens(
            self.policy, micro, self.sampling.temperature, with_entropy=True, entropy_grad=bonus_on
        )
        logp = scores.logp
        tok_adv = micro.advantages.unsqueeze(-1).expand_as(logp)
        shared = micro.extras["shared"]
        weights = torch.ones_like(logp)
        if shared.any():
            behaviour = torch.nan_to_num(micro.extras["behaviour_logp"])
            w = truncated_importance_weights(logp.detach(), behaviour, cfg.share_is_cap)
            weights = torch.where(shared.unsqueeze(-1), w, weights)
            tok_adv = tok_adv * weights
        result = POLICY_LOSSES.get(cfg.loss)(
            logp,
            logp.detach(),  # one update per batch: pi_old is pi before this update
            tok_adv,
            micro.train_mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            aggregation=cfg.aggregation,
            normalizer=norms["pg"],
        )
        total, metrics = result.loss, dict(result.metrics)
        kl_mask = micro.extras["kl_mask"]
        if bonus_on:
            bonus = entropy_bonus(
                scores.entropy, kl_mask, cfg.explore_entropy_coef, cfg.aggregation, norms["kl"]
            )
            total = total + bonus.loss
        if cfg.kl_coef:
            kl = kl_loss(
                logp,
                micro.ref_logp,
                kl_mask,
                coef=cfg.kl_coef,
                kind=cfg.kl_estimator,
                aggregation=cfg.aggregation,
                normalizer=norms["kl"],
            )
            total = total + kl.loss
        distill_mask = micro.extras["distill_mask"]
        if distill_mask.any():
            nll = aggregate(-logp, distill_mask, "token-mean", norms["distill"])
            total = total + cfg.distill_coef * nll
            metrics["distill_nll"] = nll.item()
        return total, metrics, scores, weights

    def accumulate(self, policy: str, batch: RolloutBatch) -> dict[str, Any]:
        """Forward/backward of `policy`'s loss over microbatches; no optimizer step yet.

        Each term's normaliser is taken over the whole batch (and all ranks), so microbatch
        losses sum to the full-batch loss (as `methods.base.accumulate_and_step` does for one
        policy); under torch.distributed the adapter's gradients are then summed over ranks.
        """
        ex = batch.extras
        norms: dict[str, LossNormalizer] = {
            "pg": dist.global_normalizer(batch.train_mask),
            "kl": dist.global_normalizer(ex["kl_mask"]),
            "distill": dist.global_normalizer(ex["distill_mask"]),
        }
        activate_adapter(self.policy, policy, trainable=True)
        self.policy.train()
        totals: dict[str, float] = {}
        loss_sum, weight = 0.0, 0.0
        logps, ents, is_weights = [], [], []
        for micro in batch.microbatches(self.run.config.optim.micro_batch_size):
            loss, metrics, scores, weights = self.loss(policy, micro, norms)
            loss.backward()
            release_freed_memory()
            loss_sum += loss.item()
            share = float(micro.train_mask.sum())
            weight += share
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * share
            logps.append(scores.logp.detach())
            ents.append(scores.entropy)
            is_weights.append(weights)
        dist.all_reduce_gradients(adapter_parameters(self.policy, policy).values())
        self.policy.eval()
        metrics = {k: v / max(weight, 1.0) for k, v in totals.items()}
        metrics["loss"] = loss_sum
        return {
            "metrics": metrics,
            "logp": torch.cat(logps),
            "entropy": torch.cat(ents),
            "is_weights": torch.cat(is_weights),
        }

    def share_adapter_gradients(self, a: str, b: str, coef: float) -> None:
        """g'_a = g_a + coef g_b and g'_b = g_b + coef g_a, parameter by parameter."""
        pa, pb = adapter_parameters(self.policy, a), adapter_parameters(self.policy, b)
        ga, gb = share_gradients(
            {k: p.grad for k, p in pa.items()}, {k: p.grad for k, p in pb.items()}, coef
        )
        for key in pa:
            pa[key].grad, pb[key].grad = ga[key], gb[key]

    def apply_update(self, policy: str, lr_scale: float) -> dict[str, float]:
        """Clip this adapter's gradient, step its optimizer at lr * lr_scale, advance its
        schedule. A non-finite gradient skips the step (the schedule still advances)."""
        params = list(adapter_parameters(self.policy, policy).values())
        opt, sched = self.optimizers[policy], self.schedulers[policy]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.run.config.optim.max_grad_norm)
        lr = sched.get_last_lr()[0] * lr_scale
        for group in opt.param_groups:
            group["lr"] = lr
        ok = bool(torch.isfinite(grad_norm))
        if ok:
            opt.step()
        sched.step()  # rewrites the group lr from the schedule, so the scale never compounds
        opt.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm.item(), "lr": lr, "update_skipped": float(not ok)}

    @torch.no_grad()
    def score_frozen(self, batch: RolloutBatch, adapter: str | None) -> dict[str, Any]:
        """Log-probs (and, under an adapter, entropies) without gradient; `adapter=None`
        scores the reference: the base with adapters disabled."""
        mb = self.run.config.optim.micro_batch_size
        temperature = self.sampling.temperature
        if adapter is None:
            with reference_mode(self.policy):
                parts = [score_tokens(self.policy, m, temperature) for m in batch.microbatches(mb)]
            return {"logp": torch.cat([p.logp for p in parts]), "entropy": None}
        activate_adapter(self.policy, adapter, trainable=False)
        parts = [
            score_tokens(self.policy, m, temperature, with_entropy=True)
            for m in batch.microbatches(mb)
        ]
        return {
            "logp": torch.cat([p.logp for p in parts]),
            "entropy": torch.cat([p.entropy for p in parts]),
        }

    # -- checkpointing --------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            f"{p}:{k}": v.detach().clone()
            for p in self.optimizers
            for k, v in adapter_parameters(self.policy, p).items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {p: o.state_dict() for p, o in self.optimizers.items()},
            "schedulers": {p: s.state_dict() for p, s in self.schedulers.items()},
            "reward_history": {p: list(h) for p, h in self.reward_history.items()},
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p in self.optimizers:
            self.optimizers[p].load_state_dict(state["optimizers"][p])
            self.schedulers[p].load_state_dict(state["schedulers"][p])
        self.reward_history = {p: list(h) for p, h in state["reward_history"].items()}
        self.history = list(state.get("history", []))
