"""DiPO: disentangled perplexity policy optimisation (arXiv 2604.13902; a
reconstruction: the primary text was not available, the choices below are documented in
docs/dipo.md).

GRPO (or DAPO with `clip_high=0.28`, `ppo_epochs=2`; `dipo.dynamic_sampling=true` drops
zero-variance groups from the main term without refilling the batch) plus a second term that
recovers a signal from the groups GRPO learns nothing from (every answer right, or every
answer wrong). One step:
  1. rollout and rewards as in GRPO; in `prepare`, sequence perplexity p_i = exp(mean token
     NLL) of every response under the current policy (a no-grad forward; reused from
     `old_logp` if present);
  2. push (p_i, 1[r_i >= success]) into a queue of the last `queue_batches` (2) batches, this
     one included, and learn tau* = argmin_tau mean |c_i - 1[p_i < tau]| over the queue.
     tau* is valid only if the low-perplexity side is mostly right and the high side mostly
     wrong; when it is not, nothing is reallocated and `dipo/invalid_reason` says why;
  3. reallocated rewards R_r, only on zero-variance groups: an all-wrong group in the
     low-perplexity space (mean p < tau*) gets `explore_value` (1) on its highest-perplexity
     response; an all-right group in the high-perplexity space gets `exploit_value` (0) on its
     highest-perplexity response; every other group gets R_r = 0 (no signal);
  4. objective J(R) + alpha J(R_r): the GRPO loss with A = est(R) plus alpha times the same
     loss with A_r = est(R_r) (same estimator), both on one forward. A group dynamic sampling
     drops from the main term still feeds the R_r term: the main term is normalised over the
     kept rows (its dropped rows have A = 0 anyway), the R_r term over every answered row.

With alpha = 0 the update is exactly GRPO's. Metrics: `dipo/threshold`, `dipo/valid`,
`dipo/invalid_reason` (text, only when invalid), `dipo/threshold_error`, `dipo/explore_groups`,
`dipo/exploit_groups`, `dipo/zero_var_groups` (all-equal groups this step),
`dipo/all_wrong_groups` / `dipo/all_right_groups` (the zero-variance groups each direction
could act on, before the perplexity test: the work it has), `dipo/used_groups`
(zero-variance groups the R_r term used: signal GRPO would have wasted) and
`dipo/used_groups_total` (since step 1), `dipo/ppl_mean`, `dipo/realloc_loss`. The queue and the
running total are in `state_dict()`, so a resumed run continues with the same threshold.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tandemrl.algos import (
    LossNormalizer,
    PerplexityQueue,
    dipo_reallocate,
    sequence_perplexity,
)
from tandemrl.algos._groups import group_index, group_stats
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.grpo import GRPO, GRPOConfig
from tandemrl.methods.policy_gradient import PolicyGradientStep
from tandemrl.rollout import RolloutBatch
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.update import LossOutput


@dataclass
class DiPOConfig(GRPOConfig):
    alpha: float = 0.1  # weight of the reallocated-reward term J(theta, R_r)
    queue_batches: int = 2  # batches of (perplexity, correctness) pairs the threshold sees
    success: float = 0.5  # a reward >= success counts as right
    space: Literal["mean", "all"] = "mean"  # group in a space: its mean ppl / all members
    explore_value: float = 1.0  # R_r of the top-perplexity response of an all-wrong group
    exploit_value: float = 0.0  # R_r of the top-perplexity response of an all-right group


@dataclass
class DiPORows:
    """Per row: the reallocated-reward advantage A_r and each term's loss mask."""

    realloc_advantages: torch.Tensor  # [B]
    main_mask: torch.Tensor  # [B, T] GRPO's rows (dynamic sampling and D³S applied)
    realloc_mask: torch.Tensor  # [B, T] every answered row


@dataclass
class DiPOStep(PolicyGradientStep):
    perplexity: torch.Tensor | None = None  # [B] p_i under the pre-update policy
    # each term's global normaliser over the update in progress (its minibatch)
    main_normalizer: LossNormalizer | None = None
    realloc_normalizer: LossNormalizer | None = None


@register_method("dipo")
class DiPO(GRPO):
    Config = DiPOConfig
    State = DiPOStep
    refills_batch = False  # zero-variance groups are what the reallocated term learns from

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        cfg = config.method_config
        if cfg.alpha < 0:
            raise ConfigError(f"dipo.alpha must be >= 0 (0 = plain GRPO), got {cfg.alpha}")
        if cfg.queue_batches < 1:
            raise ConfigError(f"dipo.queue_batches must be >= 1, got {cfg.queue_batches}")
        if config.rollout.group_size < 2:
            raise ConfigError("dipo reallocates within groups: rollout.group_size must be >= 2")

    def setup(self) -> None:
        super().setup()
        self.queue = PerplexityQueue(self.cfg.queue_batches)
        self.used_total = 0
        self._last_reason = "ok"  # the threshold's validity, to report only its changes

    def prepare(self, state: DiPOStep) -> dict[str, float]:
        metrics = super().prepare(state)
        batch = state.batch
        logp = batch.old_logp if batch.old_logp is not None else self.score_no_grad(batch).logp
        state.perplexity = sequence_perplexity(logp, batch.response_mask)
        return metrics

    def advantages(self, state: DiPOStep) -> dict[str, float]:
        cfg, batch, ppl = self.cfg, state.batch, state.perplexity
        metrics = super().advantages(state)  # main term: A, and the kept rows' mask
        main_mask = batch.train_mask
        hit = (batch.rewards >= cfg.success).float()
        correct = torch.where(torch.isnan(batch.rewards), batch.rewards, hit)
        # One threshold for the global batch: every rank pushes every rank's pairs.
        gathered = dist.all_gather_object((ppl.detach().cpu(), correct.cpu()))
        self.queue.push(torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered]))
        thr = self.queue.threshold()
        realloc, realloc_metrics = dipo_reallocate(
            batch.rewards,
            ppl,
            batch.group_ids,
            thr.threshold,
            thr.valid,
            space=cfg.space,
            success=cfg.success,
            correct_value=cfg.explore_value,
            wrong_value=cfg.exploit_value,
        )
        realloc_adv = cfg.group_advantages(realloc, batch.group_ids).advantages
        answered = ~torch.isnan(batch.rewards)
        realloc_mask = batch.response_mask * answered.unsqueeze(-1).to(main_mask.dtype)
        batch.per_row = DiPORows(realloc_adv, main_mask, realloc_mask)
        batch.loss_mask = torch.maximum(main_mask, realloc_mask)

        used = int(realloc_metrics["dipo/explore_groups"] + realloc_metrics["dipo/exploit_groups"])
        self.used_total += used
        metrics.update(realloc_metrics)
        metrics.update(
            {
                "dipo/threshold_error": thr.error,
                "dipo/zero_var_groups": float(_zero_var_groups(batch.rewards, batch.group_ids)),
                **_uniform_groups(batch.rewards, batch.group_ids, cfg.success),
                "dipo/used_groups": float(used),
                "dipo/used_groups_total": float(self.used_total),
                "dipo/ppl_mean": ppl[~torch.isnan(ppl)].mean().item(),
            }
        )
        if not thr.valid:
            metrics["dipo/invalid_reason"] = thr.reason
        if thr.reason != self._last_reason:  # say it when validity changes, not every step
            status = "valid" if thr.valid else f"invalid ({thr.reason}): no reallocation"
            print(f"tandem: dipo threshold {status}", file=sys.stderr, flush=True)
            self._last_reason = thr.reason
        return metrics

    def update_minibatch(self, state: DiPOStep, part: RolloutBatch) -> dict[str, float]:
        state.main_normalizer, state.realloc_normalizer = self.term_normalizers(part)
        return super().update_minibatch(state, part)

    def term_normalizers(self, part: RolloutBatch) -> tuple[LossNormalizer, LossNormalizer]:
        """Each term's normaliser over its own rows of an update's minibatch: the main term
        exactly GRPO's, the reallocated term every answered row."""
        rows = part.per_row
        engine = self.update_engine
        return engine.normalizer(rows.main_mask), engine.normalizer(rows.realloc_mask)

    def loss(self, micro: RolloutBatch, normalizer: LossNormalizer, state: DiPOStep) -> LossOutput:
        cfg, rows = self.cfg, micro.per_row
        scores = self.score_for_loss(micro)
        # The main term sees exactly GRPO's rows and normaliser (dynamic sampling included).
        main = dataclasses.replace(micro, loss_mask=rows.main_mask)
        out = self.loss_from_scores(main, scores, state.main_normalizer, state.clip_bounds)
        if cfg.alpha:
            old_logp = micro.old_logp if micro.old_logp is not None else scores.logp.detach()
            term = cfg.policy_loss(
                scores.logp,
                old_logp,
                rows.realloc_advantages,
                micro.train_mask,
                state.realloc_normalizer,
                state.clip_bounds,
                self.engine_logp(micro),
            )
            out.loss = out.loss + cfg.alpha * term.loss
            out.metrics["dipo/realloc_loss"] = term.loss.item()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "dipo_queue": self.queue.state_dict(),
            "dipo_used_total": self.used_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "dipo_queue" in state:
            self.queue.load_state_dict(state["dipo_queue"])
            self.used_total = int(state.get("dipo_used_total", 0))


def _uniform_groups(
    rewards: torch.Tensor, group_ids: torch.Tensor, success: float
) -> dict[str, float]:
    """The zero-variance groups split as ``dipo_reallocate`` splits them, before its
    perplexity test: all wrong (common reward < ``success``: explore's candidates) and all
    right (exploit's). Groups with no answered reward are in neither."""
    inverse, num_groups = group_index(group_ids)
    r = rewards.float()
    st = group_stats(r, group_ids)
    rows = st.constant & st.valid
    side = torch.zeros(num_groups, dtype=torch.bool)
    seen = side.clone().index_put_((inverse[rows],), torch.ones_like(r[rows], dtype=torch.bool))
    wrong = side.clone().index_put_((inverse[rows],), r[rows] < success)
    return {
        "dipo/all_wrong_groups": float((seen & wrong).sum()),
        "dipo/all_right_groups": float((seen & ~wrong).sum()),
    }


def _zero_var_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> int:
    inverse, num_groups = group_index(group_ids)
    constant = group_stats(rewards.float(), group_ids).constant
    flags = torch.zeros(num_groups, dtype=torch.bool).index_put_((inverse,), constant)
    return int(flags.sum())
