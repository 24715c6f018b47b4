"""The dual-policy method (`method=dupo`: "Dual-Policy Optimization" as seed 000 describes it;
docs/dupo.md). Not the DuPO paper's duality reward (`reward=duality`, tasks/duality_reward.py).

Two LoRA adapters, `explore` and `exploit`, on one frozen base; the KL reference is that base with adapters off. `exploit` is
the policy that is served (eval, `tandem eval`, export); `explore` looks for new strategies.

One step, for N prompts (the same prompts for both policies: one input space):
  1. (rollout) one batched decode samples G responses per prompt, G_E from `explore` and
     G_X = G - G_E from `exploit` (one base forward, per-row adapters): GRPO's G samples;
  2. (score, prepare) task rewards r for all; reference log-probs (adapters off) when
     kl_coef > 0;
  3. (advantages) training rewards (each term switchable; cross_* use the GRPO advantage A over a group):
       explorer  R_E = r + diversity_coef * novelty + cross_reward_weight * c_E
       exploiter R_X = r + cross_reward_weight * c_X
     novelty_j = 1 - max_{k in exploiter's responses to the prompt} Jaccard(n-grams_j, _k);
     S_E = explorer responses with r >= success_reward and r > the exploiter's mean reward on
     that prompt (S_X symmetric); c_E,j = max(0, A_j in exploiter group ∪ S_E): the credit a
     shared response earns by pulling the exploiter's update; c_X,k = max(0, A_k in explorer
     group ∪ S_X): what an exploiter response would contribute back to the explorer;
  4. response sharing: S_E joins the exploiter's group (its baseline and its loss) with the
     off-policy token weight w_t = min(pi_X(y_t) / pi_E(y_t), share_is_cap), both log-probs
     taken before the update (decoupled clipped surrogate, see algos.dual);
  5. distillation: distill_coef * mean NLL of the exploiter on the tokens of S_E;
  6. losses: clipped surrogate (token-level A·w) + kl_coef * k3 KL to the base on each
     policy's own samples (+ optional entropy bonus for the explorer);
  7. (update) schedule: `alternating` updates one policy per `alternating_interval` steps (explore
     first), `simultaneous` both; gradient sharing (simultaneous only: alternating freezes the
     other policy) g'_E = g_E + lam g_X, g'_X = g_X + lam g_E on identically initialised
     adapters; adaptive weighting scales the lr of the policy whose task reward rises faster.

Lower layers can be shared by both policies with `lora.top_layers=N` (adapters on the top N
decoder layers only). Defaults follow the source (lr 2e-5 / 1e-5, interval 100, cross-policy
weight 0.3, KL 0.1), which assumed long GPU runs: at CPU scale (tens of steps) use larger lrs
and `schedule=simultaneous` or a small interval (configs/dupo_arith2.yaml).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tandemrl.algos import (
    ADVANTAGES,
    ClipBounds,
    LossNormalizer,
    adaptive_lr_scale,
    aggregate,
    cross_policy_reward,
    entropy_bonus,
    ngram_novelty,
    reward_progress,
    share_candidates,
    share_gradients,
    truncated_importance_weights,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import Method, StepState
from tandemrl.methods.dual_policy_metrics import Interactions, step_metrics, write_plot
from tandemrl.methods.objective import (
    GroupObjective,
    bapo_metrics,
    mean_over_updates,
    minibatch_rows,
)
from tandemrl.methods.reference import ReferencePolicy
from tandemrl.models import LoadedModel
from tandemrl.models.adapters import activate_adapter, adapter_parameters, apply_lora_adapters
from tandemrl.rollout import RolloutBatch, TokenScores, score_batch, score_tokens
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.signals import commit
from tandemrl.runtime.update import LossOutput, ParamGroup

EXPLORE, EXPLOIT = "explore", "exploit"
POLICIES = (EXPLORE, EXPLOIT)


@dataclass
class DualPolicyConfig(GroupObjective):
    schedule: Literal["alternating", "simultaneous"] = "alternating"
    alternating_interval: int = 100
    first_policy: Literal["explore", "exploit"] = "explore"
    lr_explore: float = 2e-5  # replaces optim.lr; other optim.* settings apply to both
    lr_exploit: float = 1e-5
    explore_samples: int | None = None  # G_E per prompt; None = rollout.group_size // 2
    kl_coef: float = 0.1
    diversity_coef: float = 0.1  # explorer's novelty bonus
    novelty_ngram: int = 2
    explore_entropy_coef: float = 0.0
    # A response is "successful" (shared) when its task reward beats the other policy's mean
    # on the prompt; a number here also requires reward >= it (None: no floor, which works
    # for continuous rewards too).
    success_reward: float | None = None
    response_sharing: bool = True
    share_is_cap: float = 2.0
    # g'_E = g_E + lam g_X and back; needs both policies' gradients in one step, so it
    # applies with schedule=simultaneous (None: 0.1 there, 0 under alternating).
    gradient_sharing: float | None = None
    distill_coef: float = 0.1
    cross_reward_weight: float = 0.3
    adaptive_lr: bool = True
    adaptive_window: int = 10
    adaptive_tolerance: float = 0.05
    adaptive_strength: float = 5.0
    adaptive_min_scale: float = 0.25
    frozen_metrics: bool = True  # entropy/KL of the frozen policy too (one no-grad forward)
    plot: bool = True  # <output_dir>/dupo_policies.png after the last step


@dataclass
class SampledBy:
    """Per row of the rollout: which policy sampled it."""

    explore: torch.Tensor  # [B] bool


@dataclass
class PolicyRows:
    """Per row of one policy's training batch (its own samples and the shared ones)."""

    own: torch.Tensor  # [b] the policy's own sample
    shared: torch.Tensor  # [b] the other policy's sample, in this policy's group and loss
    kl_mask: torch.Tensor  # [b, T] tokens of KL and entropy: own samples only
    distill_mask: torch.Tensor  # [b, T] tokens distilled (the explorer's shared samples)
    source_row: torch.Tensor  # [b] the row in the rollout
    behaviour_logp: torch.Tensor | None = None  # [b, T] the sampling policy's, shared rows


@dataclass
class TermNormalizers:
    """Global normalisers of a policy's loss terms (each over its own mask)."""

    pg: LossNormalizer
    kl: LossNormalizer
    distill: LossNormalizer


@dataclass
class DualPolicyStep(StepState):
    active: tuple[str, ...] = ()  # policies updated this step
    interactions: Interactions | None = None
    batches: dict[str, RolloutBatch] = field(default_factory=dict)  # per policy
    # [B, T] each policy's log-probs / entropies on the rollout rows it scored (NaN elsewhere)
    logp: dict[str, torch.Tensor] = field(default_factory=dict)
    entropy: dict[str, torch.Tensor] = field(default_factory=dict)
    # each updated policy's pre-update scores of its training batch's rows
    trained: dict[str, TokenScores] = field(default_factory=dict)


@register_method("dupo")
class DualPolicy(Method):
    Config = DualPolicyConfig
    State = DualPolicyStep
    default_policy = EXPLOIT
    # Mixed-adapter decoding (rows of one batch through different adapters): not sharded yet.
    supports_fsdp2 = False

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check("dupo")
        if config.lora.enabled is False:
            raise ConfigError("dupo trains two LoRA adapters on one base: lora.enabled=false")
        g = config.rollout.group_size
        n_e = g // 2 if cfg.explore_samples is None else cfg.explore_samples
        if min(n_e, g - n_e) < 2:
            raise ConfigError(
                f"dupo needs >= 2 samples per prompt for each policy (group-relative "
                f"advantages): rollout.group_size={g}, dupo.explore_samples={n_e}"
            )
        if cfg.schedule == "alternating" and cfg.gradient_sharing:
            raise ConfigError(
                f"dupo.gradient_sharing={cfg.gradient_sharing} needs both policies' gradients in "
                "one step, which dupo.schedule=alternating never has: set "
                "dupo.schedule=simultaneous or dupo.gradient_sharing=0"
            )
        checks = [
            (cfg.alternating_interval >= 1, "dupo.alternating_interval must be >= 1"),
            (min(cfg.lr_explore, cfg.lr_exploit) > 0, "dupo.lr_explore/lr_exploit must be > 0"),
            (cfg.share_is_cap > 0, "dupo.share_is_cap must be > 0"),
            (cfg.adaptive_window >= 1, "dupo.adaptive_window must be >= 1"),
            (0 < cfg.adaptive_min_scale <= 1, "dupo.adaptive_min_scale must be in (0, 1]"),
            (cfg.novelty_ngram >= 1, "dupo.novelty_ngram must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    # -- set-up ---------------------------------------------------------------------------
    def build_policy(self, loaded: LoadedModel) -> torch.nn.Module:
        # Always LoRA, also on `tiny` (where lora.enabled=auto would mean full fine-tuning).
        return apply_lora_adapters(loaded.model, self.config.lora, [EXPLOIT, EXPLORE])

    def setup(self) -> None:
        cfg, rc = self.cfg, self.config
        g = rc.rollout.group_size
        self.n_explore = g // 2 if cfg.explore_samples is None else cfg.explore_samples
        self.reference = ReferencePolicy(self.policy)
        self.reward_history: dict[str, list[float]] = {p: [] for p in POLICIES}
        self.history: list[dict[str, float]] = []
        if rc.steps and not any(EXPLOIT in self.active_policies(s) for s in range(rc.steps)):
            print(
                f"[tandemrl] warning: dupo.alternating_interval={cfg.alternating_interval} >= "
                f"steps={rc.steps}: the served exploit policy is never updated; set "
                "dupo.schedule=simultaneous or a smaller interval",
                file=sys.stderr,
                flush=True,
            )

    def param_groups(self) -> list[ParamGroup]:
        """One group per adapter, each at its own lr, its schedule as long as its updates."""
        lrs = {EXPLORE: self.cfg.lr_explore, EXPLOIT: self.cfg.lr_exploit}
        steps = range(self.config.steps)
        return [
            ParamGroup(
                p,
                list(adapter_parameters(self.policy, p).values()),
                lrs[p],
                sum(p in self.active_policies(s) for s in steps),
            )
            for p in POLICIES
        ]

    def gradient_sharing(self) -> float:
        """lam of gradient sharing: as configured, else 0.1 with both policies updated in a
        step (simultaneous), 0 otherwise."""
        lam = self.cfg.gradient_sharing
        return (0.1 if self.cfg.schedule == "simultaneous" else 0.0) if lam is None else lam

    def active_policies(self, step: int) -> tuple[str, ...]:
        """Policies updated at `step`: both, or one per block of `alternating_interval`."""
        cfg = self.cfg
        if cfg.schedule == "simultaneous":
            return POLICIES
        other = EXPLOIT if cfg.first_policy == EXPLORE else EXPLORE
        return (cfg.first_policy,) if (step // cfg.alternating_interval) % 2 == 0 else (other,)

    def eval_policy(self) -> torch.nn.Module:
        return activate_adapter(self.policy, EXPLOIT, trainable=False)

    # -- hooks --------------------------------------------------------------------------------
    def rollout(self, step: int, examples) -> RolloutBatch:
        """G_X responses per prompt from `exploit` and G_E from `explore`, in one decode.

        Rows are ordered [all exploit rows | all explore rows] so each adapter's rows are one
        contiguous slice in every layer (`models.adapters.rows_per_adapter`); group ids are
        the prompt index, so a prompt's responses from both policies share a group id.
        """
        n_x = self.config.rollout.group_size - self.n_explore
        order = [(i, EXPLOIT) for i in range(len(examples)) for _ in range(n_x)]
        order += [(i, EXPLORE) for i in range(len(examples)) for _ in range(self.n_explore)]
        prompts = [examples[i].messages for i, _ in order]
        batch = self.sample(step, prompts, 1, adapter_names=[name for _, name in order])
        batch.group_ids = torch.tensor([i for i, _ in order])
        batch.example_index = [i for i, _ in order]
        batch.per_row = SampledBy(explore=torch.tensor([name == EXPLORE for _, name in order]))
        return batch

    def score(self, state: DualPolicyStep) -> dict[str, float]:
        super().score(state)
        return {}  # per-policy reward metrics come with the rest in `finish`

    def prepare(self, state: DualPolicyStep) -> dict[str, float]:
        state.active = self.active_policies(state.step)
        if self.cfg.kl_coef:
            mb = self.config.optim.micro_batch_size
            state.batch.ref_logp = self.reference.scores(
                state.batch, self.sampling.temperature, mb
            ).logp
        return {}

    def advantages(self, state: DualPolicyStep) -> dict[str, float]:
        """Training rewards, sharing sets and each policy's batch with its advantages."""
        state.interactions = self.interactions(state.batch, state.active)
        state.batches = {p: self.policy_batch(state.batch, p, state.interactions) for p in POLICIES}
        return {}

    def update(self, state: DualPolicyStep) -> dict[str, float]:
        """`ppo_epochs` x `minibatches` updates of the active policies; in each, the explorer's
        loss first (its log-probs are the behaviour log-probs of the rows it shares when
        they are not scored beforehand), gradient sharing, then one step of both."""
        cfg, active = self.cfg, state.active
        self.score_before_update(state)
        seed = self.config.seed * 1_000_003 + state.step
        plan = minibatch_rows(state.batch, cfg.ppo_epochs, cfg.minibatches, seed)
        groups = [None] if len(plan) == 1 else [state.batch.group_ids[r].unique() for r in plan]
        share = None
        if len(active) == 2 and self.gradient_sharing():
            share = lambda: self.share_adapter_gradients(self.gradient_sharing())  # noqa: E731
        updates, scales = [], {}
        for chosen in groups:
            metrics = self.backward_active(state, chosen)
            with commit():  # the adapters and the reward history change together or not at all
                if not scales:
                    for p in active:
                        self.record_reward(p, state.batch, state.interactions)
                    scales = {p: self.lr_scale(p) for p in POLICIES}
                results = self.update_engine.step(active, lr_scale=scales, before_clip=share)
            for p, result in results.items():
                metrics.update({f"{p}/{k}": v for k, v in result.items()})
            updates.append(metrics)
        metrics = mean_over_updates(updates)
        for p in POLICIES:
            metrics.update({f"{p}/lr_scale": scales[p], f"{p}/updated": float(p in active)})
        activate_adapter(self.policy, EXPLOIT, trainable=False)
        metrics["loss"] = sum(metrics.get(f"{p}/loss", 0.0) for p in POLICIES)
        return metrics

    def score_before_update(self, state: DualPolicyStep) -> None:
        """Scores taken before any update (no gradient): each active policy's old log-probs
        of its batch when the update needs them (several updates, BAPO), and the frozen
        policy's scores of its own samples (metrics) and of the rows the explorer shares (the
        exploiter's behaviour log-probs). `state.logp` / `state.entropy` hold them per
        rollout row; an active policy's are filled by its first loss otherwise."""
        cfg, active = self.cfg, state.active
        shape = state.batch.response_ids.shape
        state.logp = {p: torch.full(shape, math.nan) for p in POLICIES}
        state.entropy = {p: torch.full(shape, math.nan) for p in POLICIES}
        needs_old = cfg.updates_per_step > 1 or cfg.loss == "bapo"
        for p in POLICIES:
            batch = state.batches[p]
            src, own = batch.per_row.source_row, batch.per_row.own
            if p in active:
                if not needs_old:
                    continue
                scores = self.score_frozen(batch, p)
                batch.old_logp, state.trained[p] = scores.logp, scores
            else:
                need = own if cfg.frozen_metrics else torch.zeros_like(own)
                if p == EXPLORE and EXPLOIT in active:
                    need = need | state.interactions.give_e[src]  # the exploiter's shared rows
                if not need.any():
                    continue
                scores = self.score_frozen(batch.select(need.nonzero().squeeze(-1)), p)
                src, own = src[need], torch.ones(int(need.sum()), dtype=torch.bool)
            state.logp[p][src[own]] = scores.logp[own]
            state.entropy[p][src[own]] = scores.entropy[own]
        if needs_old:  # the explorer's sampling log-probs of every row it shares
            for p in active:
                rows = state.batches[p].per_row
                rows.behaviour_logp = state.logp[EXPLORE][rows.source_row]

    def backward_active(self, state: DualPolicyStep, groups: torch.Tensor | None) -> dict:
        """Forward and backward of each active policy's loss on its rows of `groups` (None:
        all), explorer first; no optimizer step."""
        metrics: dict[str, float] = {}
        for p in (p for p in POLICIES if p in state.active):
            batch = state.batches[p]
            if groups is not None:
                batch = batch.select(torch.isin(batch.group_ids, groups).nonzero().squeeze(-1))
            rows: PolicyRows = batch.per_row
            rows.behaviour_logp = state.logp[EXPLORE][rows.source_row]
            bounds = None
            if self.cfg.loss == "bapo":
                current = self.score_frozen(batch, p).logp
                bounds = self.cfg.bapo_bounds(current, batch.old_logp, batch.advantages, batch.train_mask)  # fmt: skip
            scores, loss_metrics = self.accumulate(p, batch, bounds)
            if batch.old_logp is None:  # one update: these are the pre-update scores
                state.trained[p] = scores
                src, own = rows.source_row, rows.own
                state.logp[p][src[own]] = scores.logp[own]
                state.entropy[p][src[own]] = scores.entropy[own]
            metrics.update({f"{p}/{k}": v for k, v in loss_metrics.items()})
            metrics.update({f"{p}/{k}": v for k, v in bapo_metrics(bounds).items()})
        return metrics

    def finish(self, state: DualPolicyStep) -> dict[str, float]:
        """Both policies' metrics; the reward/diversity plot after the last step."""
        cfg = self.cfg
        metrics = step_metrics(state, cfg, self.share_weights, self.gradient_sharing())
        self.history.append({"step": state.step + 1, **metrics})
        if cfg.plot and state.step + 1 == self.config.steps and dist.is_main():
            path = Path(self.config.output_dir) / "dupo_policies.png"
            if err := write_plot(self.history, path, POLICIES):
                print(f"[tandemrl] warning: {err}", file=sys.stderr, flush=True)
        return metrics

    # -- interactions ---------------------------------------------------------------------------
    def interactions(self, full: RolloutBatch, active: tuple[str, ...]) -> Interactions:
        """Training rewards and the sharing sets, from task rewards only (no forward).

        Sharing goes one way, explorer -> exploiter, and only happens when the exploiter
        trains on the shared rows this step (response sharing on, exploiter updated): the
        cross-policy reward credits that and nothing else, so it is 0 in any other step.
        `give_x` (exploiter samples that beat the explorer's mean) is a diagnostic only."""
        cfg, r, g = self.cfg, full.rewards, full.group_ids
        is_e = full.per_row.explore
        is_x = ~is_e
        estimator, opts = ADVANTAGES.get(cfg.advantage), cfg.advantage_options
        floor = -math.inf if cfg.success_reward is None else cfg.success_reward
        give_e = share_candidates(r, g, is_e, is_x, floor)
        give_x = share_candidates(r, g, is_x, is_e, floor)
        shared = cfg.response_sharing and EXPLOIT in active
        cross = torch.zeros(len(full))
        if shared and give_e.any():
            cross = cross_policy_reward(r, g, give_e, is_x, estimator, **opts)
        seqs = full.response_token_lists()
        e_rows, x_rows = is_e.nonzero().squeeze(-1), is_x.nonzero().squeeze(-1)
        novelty = torch.zeros(len(full))
        novelty[e_rows] = ngram_novelty(
            [seqs[i] for i in e_rows.tolist()],
            g[e_rows],
            [seqs[i] for i in x_rows.tolist()],
            g[x_rows],
            cfg.novelty_ngram,
        )
        train_r = r + cfg.cross_reward_weight * cross + cfg.diversity_coef * novelty * is_e
        return Interactions(is_e, give_e, give_x, cross, novelty, train_r)

    def policy_batch(self, full: RolloutBatch, policy: str, inter: Interactions) -> RolloutBatch:
        """The rows `policy` trains on, with advantages, masks and sharing flags set."""
        cfg = self.cfg
        own = inter.explore if policy == EXPLORE else ~inter.explore
        shared = torch.zeros_like(own)
        extra = torch.zeros_like(own)
        if policy == EXPLOIT:
            extra = inter.give_e if cfg.response_sharing or cfg.distill_coef > 0 else extra
            shared = inter.give_e if cfg.response_sharing else shared
        rows = (own | extra).nonzero().squeeze(-1)
        batch = full.select(rows)
        own, shared, extra = own[rows], shared[rows], extra[rows]
        pg = own | shared
        # Shared responses are judged on task reward; bonuses are for a policy's own samples.
        rewards = torch.where(own, inter.train_rewards[rows], full.rewards[rows])
        adv = torch.zeros(len(rows))
        keep = torch.zeros(len(rows), dtype=torch.bool)
        if pg.any():
            res = cfg.group_advantages(rewards[pg], batch.group_ids[pg])
            adv[pg], keep[pg] = res.advantages.float(), res.keep
        batch.rewards, batch.advantages = rewards, adv
        rmask = batch.response_mask
        batch.loss_mask = rmask * keep.unsqueeze(-1).to(rmask.dtype)
        batch.per_row = PolicyRows(
            own=own,
            shared=shared,
            kl_mask=batch.loss_mask * own.unsqueeze(-1).to(rmask.dtype),
            distill_mask=rmask * (extra & (cfg.distill_coef > 0)).unsqueeze(-1).to(rmask.dtype),
            source_row=rows,
        )
        return batch

    # -- the update -----------------------------------------------------------------------------
    def accumulate(
        self, policy: str, batch: RolloutBatch, bounds: ClipBounds | None = None
    ) -> tuple[TokenScores, dict[str, float]]:
        """Forward and backward of `policy`'s loss over `batch` (no optimizer step yet)."""
        rows: PolicyRows = batch.per_row
        engine = self.update_engine
        norms = TermNormalizers(
            pg=engine.normalizer(batch.train_mask),
            kl=engine.normalizer(rows.kl_mask),
            distill=engine.normalizer(rows.distill_mask),
        )
        activate_adapter(self.policy, policy, trainable=True)
        acc = engine.accumulate(
            policy,
            batch,
            lambda micro, _: self.loss(policy, micro, norms, bounds),
            self.config.optim.micro_batch_size,
            norms.pg,
        )
        return acc.scores, {**acc.metrics, "loss": acc.loss}

    def loss(
        self,
        policy: str,
        micro: RolloutBatch,
        norms: TermNormalizers,
        bounds: ClipBounds | None = None,
    ) -> LossOutput:
        """Clipped surrogate with off-policy weights on shared rows, + KL, entropy, distill.

        Per token: A_i * w_t with w_t = min(pi_old(y_t) / pi_behaviour(y_t), cap) on shared
        rows (1 elsewhere; pi_old = the exploiter before this step's updates); KL and entropy only on the policy's own samples (the k3 estimator
        assumes y ~ pi); distill = mean NLL over the distilled rows' tokens.
        """
        cfg, rows = self.cfg, micro.per_row
        bonus_on = policy == EXPLORE and bool(cfg.explore_entropy_coef)
        scores = score_tokens(
            self.policy, micro, self.sampling.temperature, with_entropy=True, entropy_grad=bonus_on
        )
        logp = scores.logp
        # π_old: scored before the first update, or (one update a step) π itself, detached
        old_logp = micro.old_logp if micro.old_logp is not None else logp.detach()
        tok_adv = micro.advantages.unsqueeze(-1).expand_as(logp)
        if rows.shared.any():
            tok_adv = tok_adv * self.share_weights(old_logp, rows)
        result = cfg.policy_loss(logp, old_logp, tok_adv, micro.train_mask, norms.pg, bounds)
        total, metrics = result.loss, dict(result.metrics)
        if bonus_on:
            bonus = entropy_bonus(
                scores.entropy, rows.kl_mask, cfg.explore_entropy_coef, cfg.aggregation, norms.kl
            )
            total = total + bonus.loss
        if cfg.kl_coef:
            total = (
                total + cfg.kl_term(logp, micro.ref_logp, rows.kl_mask, cfg.kl_coef, norms.kl).loss
            )
        if rows.distill_mask.any():
            nll = aggregate(-logp, rows.distill_mask, "token-mean", norms.distill)
            total = total + cfg.distill_coef * nll
            metrics["distill_nll"] = nll.item()
        return LossOutput(total, metrics, scores)

    def share_weights(self, logp: torch.Tensor, rows: PolicyRows) -> torch.Tensor:
        """[b, T] token weights: min(pi / pi_behaviour, cap) on shared rows, 1 elsewhere."""
        behaviour = torch.nan_to_num(rows.behaviour_logp)
        w = truncated_importance_weights(logp, behaviour, self.cfg.share_is_cap)
        return torch.where(rows.shared.unsqueeze(-1), w, torch.ones_like(logp))

    def share_adapter_gradients(self, coef: float) -> None:
        """g'_E = g_E + coef g_X and g'_X = g_X + coef g_E, parameter by parameter."""
        pa, pb = adapter_parameters(self.policy, EXPLORE), adapter_parameters(self.policy, EXPLOIT)
        ga, gb = share_gradients(
            {k: p.grad for k, p in pa.items()}, {k: p.grad for k, p in pb.items()}, coef
        )
        for key in pa:
            pa[key].grad, pb[key].grad = ga[key], gb[key]

    def score_frozen(self, batch: RolloutBatch, adapter: str) -> TokenScores:
        """Log-probs and entropies under `adapter` without gradient."""
        activate_adapter(self.policy, adapter, trainable=False)
        mb = self.config.optim.micro_batch_size
        return score_batch(self.policy, batch, self.sampling.temperature, mb, with_entropy=True)

    def record_reward(self, policy: str, full: RolloutBatch, inter: Interactions) -> None:
        """Task reward of an updated policy's samples: the progress adaptive weighting reads."""
        own = inter.explore if policy == EXPLORE else ~inter.explore
        r = full.rewards[own]
        r = r[~torch.isnan(r)]
        # Over all ranks: every rank must compute the same lr scale.
        total, count = dist.all_reduce_sum([r.sum().item(), r.numel()])
        if count:
            self.reward_history[policy].append(total / count)

    def lr_scale(self, policy: str) -> float:
        """lr multiplier from both policies' recent progress (algos.dual.adaptive_lr_scale).

        Progress is measured over each policy's own updates, so in alternating mode a frozen
        policy is compared by how it moved while it was last trained, not penalised for rest.
        """
        cfg = self.cfg
        if not cfg.adaptive_lr:
            return 1.0
        other = EXPLOIT if policy == EXPLORE else EXPLORE
        return adaptive_lr_scale(
            reward_progress(self.reward_history[policy], cfg.adaptive_window),
            reward_progress(self.reward_history[other], cfg.adaptive_window),
            tolerance=cfg.adaptive_tolerance,
            strength=cfg.adaptive_strength,
            min_scale=cfg.adaptive_min_scale,
        )

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "reward_history": {p: list(h) for p, h in self.reward_history.items()},
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reward_history = {p: list(h) for p, h in state["reward_history"].items()}
        self.history = list(state.get("history", []))
