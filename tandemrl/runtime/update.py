"""The update engine: every method's optimizer updates go through it.

It owns named parameter groups (a policy, a second adapter, a critic, full weights), each
with its own AdamW optimizer and lr schedule, and does the three things that must be done the
same way everywhere:

- accumulation: `accumulate(group, batch, loss_fn)` runs forward and backward over
  microbatches with one normaliser taken over the whole batch and every rank, so the summed
  microbatch losses are exactly the full-batch loss (token-mean divides by the global token
  count, not each microbatch's; `algos.aggregation.LossNormalizer`);
- reduction and clipping: `step(groups)` sums each group's gradients over ranks (each rank's
  loss already carries the global denominator, so SUM, not mean; `runtime.distributed`), lets
  the method edit them (`before_clip`, e.g. the dual-policy method's gradient sharing), then clips each group's
  norm to `optim.max_grad_norm` (None: not clipped, norm still reported);
- one skip rule: when any accumulated loss or any gradient norm of the groups stepped
  together is non-finite on any rank, no optimizer steps (`update_skipped` = 1) and every
  schedule still advances, on every rank alike.

Optimizer and schedule move together inside `signals.commit()`, so a Ctrl-C cannot leave one
group stepped and another not.

Devices and precision (`runtime.device.Compute`): each microbatch moves to the parameters'
device for its forward, which runs under the run's autocast (bf16-mixed); the backward runs
outside it, and returned scores come back to the CPU. On FSDP2-sharded parameters the
gradients arrive reduced but averaged over ranks, so each rank's loss is scaled by the world
size before its backward (our losses are already each rank's share of the global mean), and
no all-reduce is added.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tandemrl.algos import LossNormalizer
from tandemrl.models.memory import release_freed_memory
from tandemrl.models.sharding import full_value, local
from tandemrl.rollout import RolloutBatch, TokenScores
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.config import OptimConfig
from tandemrl.runtime.device import Compute
from tandemrl.runtime.signals import commit


class NonFiniteWeights(RuntimeError):
    """An optimizer step left non-finite weights; the trainer stops the run on it."""


@dataclass
class ParamGroup:
    """Parameters updated together by one optimizer on one schedule."""

    name: str
    params: list[nn.Parameter]
    lr: float
    total_updates: int  # length of the lr schedule, in optimizer updates


@dataclass
class LossOutput:
    """A microbatch's loss, its metrics (weighted by its loss tokens when combined) and,
    optionally, its detached scores, which `accumulate` hands back concatenated."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    scores: TokenScores | None = None


LossFn = Callable[[RolloutBatch, LossNormalizer], LossOutput]


@dataclass
class Accumulated:
    """One `accumulate` pass: the summed loss, token-weighted metric means, and the detached
    scores of every row in batch order (when the loss returned them)."""

    loss: float
    metrics: dict[str, float]
    weight: float  # loss tokens of the pass: what its metric means are weighted by
    scores: TokenScores | None = None

    def merge(self, other: Accumulated) -> Accumulated:
        """Two passes into one update: losses add, each metric is the token-weighted mean
        over the passes that reported it; scores are not merged (rows differ)."""
        metrics = {}
        for key in dict.fromkeys([*self.metrics, *other.metrics]):
            parts = [(a.metrics[key], a.weight) for a in (self, other) if key in a.metrics]
            metrics[key] = sum(v * w for v, w in parts) / max(sum(w for _, w in parts), 1.0)
        return Accumulated(self.loss + other.loss, metrics, self.weight + other.weight)


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_updates: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `optim.warmup_steps` updates, then constant, linear or cosine decay
    to 0 at `total_updates`."""
    warmup = max(0, optim.warmup_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_updates - warmup))
        if optim.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class UpdateEngine:
    """Optimizers, schedules, accumulation, reduction, clipping and the skip rule for a
    method's named parameter groups (see the module docstring)."""

    def __init__(
        self,
        groups: Iterable[ParamGroup],
        optim: OptimConfig,
        horizon: int | None = None,
        compute: Compute | None = None,
    ) -> None:
        self.groups = {g.name: g for g in groups}
        self.compute = compute
        self.optim = optim
        self.max_grad_norm = optim.max_grad_norm
        # Dr.GRPO's constant (`seq-mean-token-sum-norm`): the generation budget, the same
        # every step, not the width of this step's longest response.
        self.horizon = horizon
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        for group in self.groups.values():
            if not group.params:
                raise ValueError(
                    f"parameter group {group.name!r} has no trainable parameters (check the "
                    "lora settings)"
                )
            opt = torch.optim.AdamW(
                group.params,
                lr=group.lr,
                betas=(optim.beta1, optim.beta2),
                weight_decay=optim.weight_decay,
            )
            self.optimizers[group.name] = opt
            self.schedulers[group.name] = build_scheduler(opt, optim, group.total_updates)
        self._pending_loss: dict[str, float] = {}
        first = next(iter(self.groups.values())).params[0]
        self.device = local(first).device
        self.sharded = local(first) is not first
        # FSDP2 averages gradients over ranks; our losses must be summed (module docstring).
        self.backward_scale = float(dist.world_size()) if self.sharded else 1.0

    def normalizer(self, *masks: torch.Tensor) -> LossNormalizer:
        """The global normaliser of `masks` (counts summed over ranks, the run's horizon):
        what every loss term of an update divides by."""
        return dist.global_normalizer(*masks, horizon=self.horizon)

    def lr(self, group: str) -> float:
        """The lr the next update of `group` uses (before any per-step scale)."""
        return self.schedulers[group].get_last_lr()[0]

    def accumulate(
        self,
        group: str,
        batch: RolloutBatch,
        loss_fn: LossFn,
        micro_batch_size: int,
        normalizer: LossNormalizer | None = None,
    ) -> Accumulated:
        """Forward and backward of `loss_fn` over `batch` in microbatches, gradients added to
        `group`'s; no optimizer step. `normalizer` defaults to the global count of
        `batch.train_mask` (`normalizer`); pass one to share it between passes of one update."""
        if group not in self._pending_loss:
            self.optimizers[group].zero_grad(set_to_none=True)
        if normalizer is None:
            normalizer = self.normalizer(batch.train_mask)
        loss_sum, weight = 0.0, 0.0
        sums: dict[str, float] = {}
        scores: list[TokenScores] = []
        autocast = self.compute.autocast if self.compute else contextlib.nullcontext
        for micro in batch.microbatches(micro_batch_size):
            with autocast():
                out = loss_fn(micro.to(self.device), normalizer)
            (out.loss * self.backward_scale if self.sharded else out.loss).backward()
            release_freed_memory()
            loss_sum += out.loss.item()
            share = float(micro.train_mask.sum())
            weight += share
            for key, value in out.metrics.items():
                sums[key] = sums.get(key, 0.0) + value * share
            if out.scores is not None:
                scores.append(out.scores)
        self._pending_loss[group] = self._pending_loss.get(group, 0.0) + loss_sum
        metrics = {k: v / max(weight, 1.0) for k, v in sums.items()}
        return Accumulated(loss_sum, metrics, weight, _concat_scores(scores))

    def step(
        self,
        groups: Sequence[str],
        *,
        lr_scale: dict[str, float] | None = None,
        before_clip: Callable[[], None] | None = None,
    ) -> dict[str, dict[str, float]]:
        """One optimizer update of `groups` from their accumulated gradients (module
        docstring); returns per group `grad_norm` (before clipping), the `lr` used
        (schedule x `lr_scale`) and `update_skipped`."""
        lr_scale = lr_scale or {}
        for name in groups:
            dist.all_reduce_gradients(self.groups[name].params)
        if before_clip is not None:
            before_clip()
        max_norm = math.inf if self.max_grad_norm is None else self.max_grad_norm
        norms = {
            name: float(
                full_value(torch.nn.utils.clip_grad_norm_(self.groups[name].params, max_norm))
            )
            for name in groups
        }
        losses = [self._pending_loss.pop(name, 0.0) for name in groups]
        bad = not all(math.isfinite(v) for v in [*norms.values(), *losses])
        skip = dist.any_rank(bad)
        out: dict[str, dict[str, float]] = {}
        with commit():  # optimizers and schedules move together or not at all
            for name in groups:
                lr = self.lr(name) * lr_scale.get(name, 1.0)
                for param_group in self.optimizers[name].param_groups:
                    param_group["lr"] = lr
                if not skip:
                    self.optimizers[name].step()
                self.schedulers[name].step()  # rewrites the lr: a scale never compounds
                out[name] = {"grad_norm": norms[name], "lr": lr, "update_skipped": float(skip)}
        for name in groups:
            self.optimizers[name].zero_grad(set_to_none=True)
        if not skip:
            self.check_finite(groups)
        return out

    def check_finite(self, groups: Sequence[str]) -> None:
        """Raise `NonFiniteWeights` when an update left a weight NaN or inf (an lr of 1e30,
        say): every later step would be skipped, and a checkpoint would keep the damage."""
        for name in groups:
            finite = all(bool(torch.isfinite(local(p)).all()) for p in self.groups[name].params)
            if dist.any_rank(not finite):  # a shard's damage stops every rank
                raise NonFiniteWeights(
                    f"the update made {name!r} weights non-finite (lr {self.lr(name):.3g})"
                )

    def advance_schedule(self, groups: Sequence[str]) -> None:
        """A step with nothing to learn from (no preference pair, say): the schedules move
        on, no optimizer steps, and nothing counts as skipped."""
        with commit():
            for name in groups:
                self._pending_loss.pop(name, None)
                self.optimizers[name].zero_grad(set_to_none=True)
                self.schedulers[name].step()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer moments and schedule positions. Sharded optimizer state (FSDP2) is not
        in it (`optimizers` is None): sharded checkpoints save it themselves, per rank."""
        optimizers = None
        if not self.sharded:
            optimizers = {n: o.state_dict() for n, o in self.optimizers.items()}
        return {
            "optimizers": optimizers,
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore optimizer moments and schedule positions. The hyperparameters are the
        config's, not the saved ones: a run resumed with another `optim.lr` (the usual
        recovery after a blow-up), weight decay or betas trains with them, and a new `steps`
        stretches the schedule (its length comes from the config). Optimizer moments absent
        from `state` (a sharded checkpoint's) were loaded before, with the weights."""
        for name, group in self.groups.items():
            opt, sched = self.optimizers[name], self.schedulers[name]
            if state["optimizers"] is not None:
                opt.load_state_dict(state["optimizers"][name])
            sched.load_state_dict(state["schedulers"][name])
            sched.base_lrs = [group.lr] * len(opt.param_groups)
            lr = group.lr * sched.lr_lambdas[0](sched.last_epoch)
            for param_group in opt.param_groups:
                param_group.update(
                    initial_lr=group.lr,
                    lr=lr,
                    betas=(self.optim.beta1, self.optim.beta2),
                    weight_decay=self.optim.weight_decay,
                )
            sched._last_lr = [lr] * len(opt.param_groups)


def _concat_scores(parts: list[TokenScores]) -> TokenScores | None:
    if not parts:
        return None
    entropy = None
    if all(p.entropy is not None for p in parts):
        entropy = torch.cat([p.entropy.detach() for p in parts]).cpu()
    return TokenScores(logp=torch.cat([p.logp.detach() for p in parts]).cpu(), entropy=entropy)
