"""DuPO: dual-policy optimisation (seed 000, METHODS.md §1). Two LoRA adapters, `explore` and
`exploit`, on one frozen base; the KL reference is that base with adapters off. `exploit` is
the policy that is served (eval, `tandem eval`, export); `explore` looks for new strategies.

One step, for N prompts (the same prompts for both policies: one input space):
  1. one batched decode samples G responses per prompt, G_E from `explore` and G_X = G - G_E
     from `exploit` (one base forward, per-row adapters): as many samples as GRPO's G;
  2. task rewards r for all; reference log-probs (adapters off) when kl_coef > 0;
  3. training rewards (each term switchable; cross_* use the GRPO advantage A over a group):
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
  7. schedule: `alternating` updates one policy per `alternating_interval` steps (explore
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tandemrl.algos import (
    ADVANTAGES,
    adaptive_lr_scale,
    cross_policy_reward,
    ngram_novelty,
    reward_progress,
    share_candidates,
)
from tandemrl.errors import ConfigError
from tandemrl.methods import register_method
from tandemrl.methods.base import (
    GroupObjective,
    Method,
    build_scheduler,
    phase_times,
    score_rewards,
)
from tandemrl.methods.dupo_metrics import step_metrics, write_plot
from tandemrl.methods.dupo_update import DualAdapterUpdates
from tandemrl.models import LoadedModel
from tandemrl.models.adapters import activate_adapter, adapter_parameters, apply_lora_adapters
from tandemrl.rollout import RolloutBatch, generate
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.signals import commit
from tandemrl.tasks import Example

EXPLORE, EXPLOIT = "explore", "exploit"
POLICIES = (EXPLORE, EXPLOIT)


@dataclass
class DuPOConfig(GroupObjective):
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
    success_reward: float = 1.0  # task reward that makes a response "successful"
    response_sharing: bool = True
    share_is_cap: float = 2.0
    gradient_sharing: float = 0.1
    distill_coef: float = 0.1
    cross_reward_weight: float = 0.3
    adaptive_lr: bool = True
    adaptive_window: int = 10
    adaptive_tolerance: float = 0.05
    adaptive_strength: float = 5.0
    adaptive_min_scale: float = 0.25
    frozen_metrics: bool = True  # entropy/KL of the frozen policy too (one no-grad forward)
    plot: bool = True  # <output_dir>/dupo_policies.png after the last step


@register_method("dupo")
class DuPO(DualAdapterUpdates, Method):
    Config = DuPOConfig
    policies = POLICIES
    default_policy = EXPLOIT

    @classmethod
    def check_config(cls, config) -> None:
        cfg = config.method_config
        cfg.check()
        if config.lora.enabled is False:
            raise ConfigError("dupo trains two LoRA adapters on one base: lora.enabled=false")
        g = config.rollout.group_size
        n_e = g // 2 if cfg.explore_samples is None else cfg.explore_samples
        if min(n_e, g - n_e) < 2:
            raise ConfigError(
                f"dupo needs >= 2 samples per prompt for each policy (group-relative "
                f"advantages): rollout.group_size={g}, dupo.explore_samples={n_e}"
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

    def __init__(self, run):
        super().__init__(run)
        rc, cfg = run.config, self.cfg
        g = rc.rollout.group_size
        self.n_explore = g // 2 if cfg.explore_samples is None else cfg.explore_samples
        lrs = {EXPLORE: cfg.lr_explore, EXPLOIT: cfg.lr_exploit}
        self.optimizers, self.schedulers = {}, {}
        for p in POLICIES:
            opt = torch.optim.AdamW(
                list(adapter_parameters(self.policy, p).values()),
                lr=lrs[p],
                betas=(rc.optim.beta1, rc.optim.beta2),
                weight_decay=rc.optim.weight_decay,
            )
            updates = sum(p in self.active_policies(s) for s in range(rc.steps))
            self.optimizers[p], self.schedulers[p] = opt, build_scheduler(opt, rc.optim, updates)
        # The base class built one optimizer over the trainable adapter; point it at ours.
        self.optimizer, self.scheduler = self.optimizers[EXPLOIT], self.schedulers[EXPLOIT]
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

    def build_policy(self, loaded: LoadedModel) -> torch.nn.Module:
        # Always LoRA, also on `tiny` (where lora.enabled=auto would mean full fine-tuning).
        return apply_lora_adapters(loaded.model, self.run.config.lora, [EXPLOIT, EXPLORE])

    def active_policies(self, step: int) -> tuple[str, ...]:
        """Policies updated at `step`: both, or one per block of `alternating_interval`."""
        cfg = self.cfg
        if cfg.schedule == "simultaneous":
            return POLICIES
        other = EXPLOIT if cfg.first_policy == EXPLORE else EXPLORE
        return (cfg.first_policy,) if (step // cfg.alternating_interval) % 2 == 0 else (other,)

    def eval_policy(self) -> torch.nn.Module:
        return activate_adapter(self.policy, EXPLOIT, trainable=False)

    # -- rollout and rewards ------------------------------------------------------------------
    def rollout(self, step: int, examples: list[Example]) -> RolloutBatch:
        """G_X responses per prompt from `exploit` and G_E from `explore`, in one decode.

        Rows are ordered [all exploit rows | all explore rows] so each adapter's rows are one
        contiguous slice in every layer (`models.adapters.rows_per_adapter`); group ids are
        the prompt index, so a prompt's responses from both policies share a group id.
        """
        rc = self.run.config
        n_x = rc.rollout.group_size - self.n_explore
        order = [(i, EXPLOIT) for i in range(len(examples)) for _ in range(n_x)]
        order += [(i, EXPLORE) for i in range(len(examples)) for _ in range(self.n_explore)]
        batch = generate(
            self.policy,
            self.tokenizer,
            [examples[i].messages for i, _ in order],
            1,
            self.sampling,
            seed=self.rollout_seed(step),
            batch_size=rc.rollout.generation_batch_size,
            adapter_names=[name for _, name in order],
        )
        batch.group_ids = torch.tensor([i for i, _ in order])
        batch.example_index = [i for i, _ in order]
        batch.extras["explore"] = torch.tensor([name == EXPLORE for _, name in order])
        return batch

    def interactions(self, full: RolloutBatch) -> dict[str, torch.Tensor]:
        """Training rewards and the sharing sets, from task rewards only (no forward)."""
        cfg, r, g = self.cfg, full.rewards, full.group_ids
        is_e = full.extras["explore"]
        is_x = ~is_e
        est, opts = ADVANTAGES.get(cfg.advantage), cfg.advantage_options
        give_e = share_candidates(r, g, is_e, is_x, cfg.success_reward)
        give_x = share_candidates(r, g, is_x, is_e, cfg.success_reward)
        cross = cross_policy_reward(r, g, give_e, is_x, est, **opts) + cross_policy_reward(
            r, g, give_x, is_e, est, **opts
        )
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
        return {
            "explore": is_e,
            "give_e": give_e,
            "give_x": give_x,
            "cross": cross,
            "novelty": novelty,
            "train_rewards": train_r,
        }

    def policy_batch(self, full: RolloutBatch, policy: str, inter: dict) -> RolloutBatch:
        """The rows `policy` trains on, with advantages, masks and sharing flags set."""
        cfg = self.cfg
        own = inter["explore"] if policy == EXPLORE else ~inter["explore"]
        shared = torch.zeros_like(own)
        extra = torch.zeros_like(own)
        if policy == EXPLOIT:
            extra = inter["give_e"] if cfg.response_sharing or cfg.distill_coef > 0 else extra
            shared = inter["give_e"] if cfg.response_sharing else shared
        rows = (own | extra).nonzero().squeeze(-1)
        batch = full.select(rows)
        own, shared, extra = own[rows], shared[rows], extra[rows]
        pg = own | shared
        # Shared responses are judged on task reward; bonuses are for a policy's own samples.
        rewards = torch.where(own, inter["train_rewards"][rows], full.rewards[rows])
        adv = torch.zeros(len(rows))
        keep = torch.zeros(len(rows), dtype=torch.bool)
        if pg.any():
            res = ADVANTAGES.get(cfg.advantage)(
                rewards[pg], batch.group_ids[pg], **cfg.advantage_options
            )
            adv[pg], keep[pg] = res.advantages.float(), res.keep
        batch.rewards, batch.advantages = rewards, adv
        rmask = batch.response_mask
        batch.loss_mask = rmask * keep.unsqueeze(-1).to(rmask.dtype)
        batch.extras = {
            "own": own,
            "shared": shared,
            "kl_mask": batch.loss_mask * own.unsqueeze(-1).to(rmask.dtype),
            "distill_mask": rmask * (extra & (cfg.distill_coef > 0)).unsqueeze(-1).to(rmask.dtype),
            "behaviour_logp": torch.zeros(rmask.shape),
            "full_rows": rows,
        }
        return batch

    # -- the step -----------------------------------------------------------------------------
    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        cfg = self.cfg
        active = self.active_policies(step)
        t0 = time.perf_counter()
        full = self.rollout(step, examples)
        t1 = time.perf_counter()
        score_rewards(self.run.task, examples, full)
        inter = self.interactions(full)
        t2 = time.perf_counter()
        if cfg.kl_coef:
            full.ref_logp = self.score_frozen(full, None)["logp"]
        # [B, T] log-probs / entropies of each policy on its own rows (NaN = not scored).
        logp = {p: torch.full(full.response_ids.shape, math.nan) for p in POLICIES}
        entropy = {p: torch.full(full.response_ids.shape, math.nan) for p in POLICIES}
        metrics: dict[str, float] = {}
        batches: dict[str, RolloutBatch] = {}
        t3 = time.perf_counter()
        # Explorer first: its log-probs are the behaviour log-probs of the rows it shares.
        for p in POLICIES:
            batch = self.policy_batch(full, p, inter)
            rows, own = batch.extras["full_rows"], batch.extras["own"]
            batch.extras["behaviour_logp"] = logp[EXPLORE][rows]
            if p in active:
                out = self.accumulate(p, batch)
                logp[p][rows[own]], entropy[p][rows[own]] = out["logp"][own], out["entropy"][own]
                batch.extras["is_weights"] = out["is_weights"]
                metrics.update({f"{p}/{k}": v for k, v in out["metrics"].items()})
                batches[p] = batch
                continue
            need = own if cfg.frozen_metrics else torch.zeros_like(own)
            if p == EXPLORE and EXPLOIT in active:
                need = need | inter["give_e"][rows]  # the exploiter's off-policy rows
            if need.any():
                frozen = self.score_frozen(full.select(rows[need]), p)
                logp[p][rows[need]], entropy[p][rows[need]] = frozen["logp"], frozen["entropy"]
        if len(active) == 2 and cfg.gradient_sharing:
            self.share_adapter_gradients(EXPLORE, EXPLOIT, cfg.gradient_sharing)
        with commit():  # both adapters and the reward history change together or not at all
            for p in active:
                self.record_reward(p, full, inter)
            for p in POLICIES:
                scale = self.lr_scale(p)
                metrics.update({f"{p}/lr_scale": scale, f"{p}/updated": float(p in active)})
                if p in active:
                    metrics.update({f"{p}/{k}": v for k, v in self.apply_update(p, scale).items()})
        activate_adapter(self.policy, EXPLOIT, trainable=False)
        t4 = time.perf_counter()
        metrics.update(step_metrics(full, inter, logp, entropy, batches, active, cfg))
        metrics["loss"] = sum(metrics.get(f"{p}/loss", 0.0) for p in POLICIES)
        metrics.update(phase_times(t0, t1, t2, t3, t4))
        self.last_batches, self.last_full = batches, full
        self.history.append({"step": step + 1, **metrics})
        if cfg.plot and step + 1 == self.run.config.steps and dist.is_main():
            path = Path(self.run.config.output_dir) / "dupo_policies.png"
            if err := write_plot(self.history, path, POLICIES):
                print(f"[tandemrl] warning: {err}", file=sys.stderr, flush=True)
        return metrics

    def record_reward(self, policy: str, full: RolloutBatch, inter: dict) -> None:
        """Task reward of an updated policy's samples: the progress adaptive weighting reads."""
        own = inter["explore"] if policy == EXPLORE else ~inter["explore"]
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
