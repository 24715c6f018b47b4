"""What every method shares: the run context, the policy/optimizer set-up, reward scoring and
the microbatched gradient update with an explicit global loss normaliser."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from tandemrl.algos import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES, LossNormalizer
from tandemrl.models import LoadedModel, apply_lora
from tandemrl.models.memory import release_freed_memory
from tandemrl.rollout import RolloutBatch, SamplingConfig, generate
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.signals import commit
from tandemrl.tasks import Example, Task
from tandemrl.tasks.rewards import run_reward


@dataclass
class RunContext:
    """Everything a method needs from the run, built once by the trainer."""

    config: Any  # TrainConfig (typed loosely to avoid an import cycle)
    loaded: LoadedModel
    task: Task
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """One training method. Subclasses implement `step` and declare `Config`."""

    name: ClassVar[str] = "method"

    @dataclass
    class Config:
        pass

    def __init__(self, run: RunContext):
        self.run = run
        self.cfg = run.config.method_config
        self.tokenizer = run.loaded.tokenizer
        self.policy = self.build_policy(run.loaded)
        self.optimizer = build_optimizer(self.policy, run.config.optim)
        self.scheduler = build_scheduler(self.optimizer, run.config.optim, run.config.steps)
        r = run.config.rollout
        self.sampling = SamplingConfig(r.max_new_tokens, r.temperature, r.top_p)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Validate the method's section up front (resolve registry names, check ranges)."""

    # -- set-up ---------------------------------------------------------------------------
    def build_policy(self, loaded: LoadedModel) -> nn.Module:
        """LoRA on pretrained models (`lora.enabled=auto`), full fine-tune on `tiny`."""
        lora = self.run.config.lora
        use_lora = loaded.pretrained if lora.enabled == "auto" else bool(lora.enabled)
        if use_lora:
            return apply_lora(loaded.model, lora)
        loaded.model.requires_grad_(True)
        return loaded.model

    def uses_lora(self) -> bool:
        return hasattr(self.policy, "peft_config")

    # -- the step -------------------------------------------------------------------------
    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    def eval_policy(self) -> nn.Module:
        """The model that `tandem eval` and before/after evaluation should sample from."""
        return self.policy

    def rollout_seed(self, step: int) -> int:
        """Seed of step `step`'s sampling: fixed by (seed, step) so a resumed run draws what
        the uninterrupted run drew; offset per rank so ranks draw independent streams."""
        return self.run.config.seed * 1_000_003 + step + dist.rank() * 7_919_000_003

    def rollout(self, step: int, examples: list[Example]) -> RolloutBatch:
        """`rollout.group_size` samples per prompt from the policy, seeded by `rollout_seed`."""
        rc = self.run.config
        return generate(
            self.policy,
            self.tokenizer,
            [ex.messages for ex in examples],
            rc.rollout.group_size,
            self.sampling,
            seed=self.rollout_seed(step),
            batch_size=rc.rollout.generation_batch_size,
        )

    # -- checkpointing --------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the policy weights that a resumed run needs to continue exactly.

        The hook every method extends: override, call `super().state_dict()` and add your own
        keys (queues, histories, controllers, extra optimizers; anything `torch.save` takes);
        `load_state_dict` receives the same dict back. The trainer saves it in each checkpoint
        with the weights, the RNG states and the data position.
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (after the policy weights are loaded)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


@dataclass
class ClippedObjective:
    """Settings of the clipped surrogate every policy-gradient method optimises (PPO, GRPO and
    the methods built on them); a method's config subclasses it and adds its own fields."""

    loss: str = "clipped"  # a POLICY_LOSSES name
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"  # an AGGREGATIONS name
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"

    def check(self) -> None:
        """Raise the registry's error (listing the valid names) for an unknown loss or
        aggregation."""
        POLICY_LOSSES.get(self.loss)
        AGGREGATIONS.get(self.aggregation)


@dataclass
class GroupObjective(ClippedObjective):
    """`ClippedObjective` plus a group-relative advantage estimator (GRPO and its kin)."""

    advantage: str = "grpo"  # an ADVANTAGES name
    advantage_options: dict[str, Any] = field(default_factory=lambda: {"std_mode": "group"})

    def check(self) -> None:
        super().check()
        ADVANTAGES.get(self.advantage)


def build_optimizer(model: nn.Module, optim: Any) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters (check lora settings)")
    return torch.optim.AdamW(
        params, lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int):
    warmup = max(0, optim.warmup_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if optim.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def score_rewards(task: Task, examples: list[Example], batch: RolloutBatch) -> None:
    """Run the task's named reward functions; fill `reward_matrix` [B, K] and `rewards` [B].

    Each function runs through `run_reward`: a row on which it raises abstains and is counted
    in `batch.extras["reward_errors"][name]` (logged as `reward/<name>/errors`), so a buggy
    reward costs rows, not the run; a wrong-length or non-numeric result raises
    `RewardFunctionError`. None (abstain) becomes NaN. The combined reward is the weighted sum
    over the rewards that did not abstain; a response on which every reward abstained gets NaN.
    """
    rows = [examples[i] for i in batch.example_index]
    prompts = [ex.messages for ex in rows]
    row_ids = [ex.id for ex in rows]
    column_names = sorted({k for ex in rows for k in ex.columns})
    columns = {k: [ex.columns.get(k) for ex in rows] for k in column_names}
    values = []
    errors: dict[str, int] = {}
    for spec in task.rewards:
        outcome = run_reward(spec, prompts, batch.completions, columns, row_ids)
        values.append([math.nan if v is None else v for v in outcome.values])
        errors[spec.name] = outcome.errors
    matrix = torch.tensor(values, dtype=torch.float32).T.reshape(len(batch), len(task.rewards))
    weights = torch.tensor([spec.weight for spec in task.rewards], dtype=torch.float32)
    present = ~torch.isnan(matrix)
    combined = (torch.nan_to_num(matrix) * weights).sum(-1)
    combined[~present.any(-1)] = math.nan
    batch.reward_matrix = matrix
    batch.rewards = combined
    batch.reward_names = [spec.name for spec in task.rewards]
    batch.extras["reward_errors"] = errors


def reward_metrics(batch: RolloutBatch, prefix: str = "") -> dict[str, float]:
    """`reward/mean`, `reward/std`, per named reward `reward/<name>/mean` and `.../errors`."""
    out: dict[str, float] = {}
    r = batch.rewards[~torch.isnan(batch.rewards)]
    out[f"{prefix}reward/mean"] = r.mean().item() if r.numel() else math.nan
    out[f"{prefix}reward/std"] = r.std(unbiased=False).item() if r.numel() else math.nan
    errors = batch.extras.get("reward_errors", {})
    for k, name in enumerate(batch.reward_names):
        col = batch.reward_matrix[:, k]
        col = col[~torch.isnan(col)]
        out[f"{prefix}reward/{name}/mean"] = col.mean().item() if col.numel() else math.nan
        out[f"{prefix}reward/{name}/errors"] = float(errors.get(name, 0))
    out[f"{prefix}response/length_mean"] = batch.response_lengths.float().mean().item()
    out[f"{prefix}response/truncated_frac"] = batch.truncated.float().mean().item()
    return out


def phase_times(t0: float, t1: float, t2: float, t3: float, t4: float) -> dict[str, float]:
    """A step's `time/<phase>_s` metrics from the perf_counter readings at its phase boundaries:
    generate [t0, t1), reward [t1, t2), log-probs [t2, t3), update [t3, t4)."""
    return {
        "time/generate_s": t1 - t0,
        "time/reward_s": t2 - t1,
        "time/logprob_s": t3 - t2,
        "time/update_s": t4 - t3,
    }


LossFn = Callable[[RolloutBatch, LossNormalizer], tuple[torch.Tensor, dict[str, float]]]


def accumulate_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: RolloutBatch,
    loss_fn: LossFn,
    micro_batch_size: int,
    max_grad_norm: float,
) -> dict[str, float]:
    """One optimizer update over `batch`, `micro_batch_size` sequences per backward.

    The normaliser is computed once over the whole batch and handed to every microbatch, so
    the summed microbatch losses equal the full-batch loss exactly (`token-mean` divides by
    the batch's total token count, not each microbatch's). Under torch.distributed the counts
    are summed over ranks and the gradients all-reduced with SUM before clipping (see
    `tandemrl.runtime.distributed`): the update equals one process's on the global batch, and
    `loss` is this rank's share of it. A non-finite loss or gradient on any rank skips the
    update on every rank (`update_skipped` = 1; the schedule still advances).
    """
    normalizer = dist.global_normalizer(batch.train_mask)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    weights: float = 0.0
    loss_sum = 0.0
    for micro in batch.microbatches(micro_batch_size):
        loss, metrics = loss_fn(micro, normalizer)
        loss.backward()
        release_freed_memory()
        loss_sum += loss.item()
        share = float(micro.train_mask.sum())
        weights += share
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value * share
    params = [p for p in model.parameters() if p.requires_grad]
    dist.all_reduce_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    out = {k: v / max(weights, 1.0) for k, v in totals.items()}
    out["loss"] = loss_sum
    out["grad_norm"] = grad_norm.item()
    skip = not torch.isfinite(grad_norm) or dist.any_rank(not math.isfinite(loss_sum))
    with commit():  # a Ctrl-C here waits: optimizer and schedule move together or not at all
        if not skip:
            optimizer.step()
        scheduler.step()
    out["update_skipped"] = float(skip)
    optimizer.zero_grad(set_to_none=True)
    out["lr"] = scheduler.get_last_lr()[0]
    return out
