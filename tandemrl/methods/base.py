"""The step skeleton every method fills, and what it builds for them.

One training step, for every method:

    rollout   -> sample responses to the step's prompts            time/generate_s
    score     -> reward functions, reward metrics                  time/reward_s
    prepare   -> old and reference log-probs, values               time/logprob_s
    advantages-> the training signal (advantages, pairs)           time/advantage_s
    update    -> optimizer updates through the update engine       time/update_s
    finish    -> metrics that need the whole step (per policy...)

`Method.step` runs them in that order and times each; a method overrides hooks, never `step`
(`__init_subclass__` refuses a class that does). The hooks hand one typed object along: a
`StepState` (or the method's subclass of it, named in `State`) holding the `RolloutBatch`
and whatever else the method computes. Each hook returns the metrics it adds.

Every method gets: `self.policy` (`build_policy`), `self.rollout_engine` (the one way to
sample: `sample`), `self.update_engine` (its `param_groups`, one optimizer and schedule each)
and the `state_dict` hooks a checkpoint stores.

Where it computes (`self.compute`: device, precision, gradient checkpointing) is settled
before the policy is built: the model moves to `self.device`, modules a method builds in
`setup` must be put there too, and the step's forwards run under the run's autocast. With
`distributed.strategy=fsdp2` the `sharded_modules` are sharded after `setup`, before the
optimizers are built on their (sharded) parameters.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from tandemrl.errors import ConfigError
from tandemrl.methods.rewards import reward_metrics, score_rewards
from tandemrl.models import LoadedModel, apply_lora
from tandemrl.models.memory import enable_checkpointing, map_large_blocks
from tandemrl.models.sharding import shard_model
from tandemrl.rollout import (
    RolloutBatch,
    SampleRequest,
    SamplingConfig,
    TokenScores,
    score_batch,
)
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.config import TrainConfig
from tandemrl.runtime.engines import build_rollout_engine
from tandemrl.runtime.update import ParamGroup, UpdateEngine
from tandemrl.tasks import Example, Task

Messages = list[dict[str, str]]
HOOKS = ("rollout", "score", "prepare", "advantages", "update", "finish")


@dataclass
class RunContext:
    """Everything a method needs from the run, built once by the trainer."""

    config: TrainConfig
    loaded: LoadedModel
    task: Task
    # More training prompts for this rank (a step's worth, advancing the run's data position),
    # for methods that sample beyond the step's prompts (DAPO dynamic sampling); None: the
    # method reuses the step's own prompts.
    draw_prompts: Callable[[], list[Example]] | None = None


@dataclass
class StepState:
    """One step's data as it passes from hook to hook. A method that carries more declares a
    subclass with its own typed fields (defaults for what later hooks fill) as `State`."""

    step: int
    examples: list[Example]
    batch: RolloutBatch


class PhaseTimer:
    """`with timer("update"): ...` adds the block's wall time to `time/update_s`."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{phase}_s"
            self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - start


class Method:
    """One training method: a `Config` dataclass (its config section), a `State` dataclass,
    and the hooks of the step skeleton (module docstring)."""

    name: ClassVar[str] = "method"
    State: ClassVar[type[StepState]] = StepState
    # The adapter `tandem eval` / `tandem export` serve from a multi-adapter checkpoint.
    default_policy: ClassVar[str | None] = None
    # Prompt modes `tandem eval mode=...` offers (with `eval_prompt_transform`).
    eval_modes: ClassVar[tuple[str, ...]] = ()
    # Whether `distributed.strategy=fsdp2` is supported (tested) for this method.
    supports_fsdp2: ClassVar[bool] = True
    # Whether the loss corrects for a separate rollout engine (`rollout.tis_cap`): the
    # policy-gradient family does (objective.EngineLogp); methods that train on rows under
    # another prompt or policy than the one that sampled them do not yet.
    supports_tis: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides Method.step; fill its hooks instead "
                f"({', '.join(HOOKS)}), so every method shares one timed skeleton"
            )

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.config = run.config
        self.cfg = run.config.method_config
        self.tokenizer = run.loaded.tokenizer
        r = run.config.rollout
        self.sampling = SamplingConfig(r.max_new_tokens, r.temperature, r.top_p)
        if r.tis_cap is not None and not self.supports_tis:
            raise ConfigError(
                f"rollout.tis_cap: {self.name} does not correct for the rollout engine yet "
                "(GRPO, GDPO, GD2PO, DiPO and PPO do); leave rollout.tis_cap null"
            )
        self.rollout_engine = build_rollout_engine(run.config, self.tokenizer)
        self.compute = run.config.compute()
        self.device = self.compute.device
        shard = run.config.distributed.strategy == "fsdp2" and dist.is_distributed()
        if not shard:  # sharding moves each layer's shards there itself, never a whole model
            run.loaded.model.to(self.device)
        if self.compute.precision == "bf16":  # a model handed in (Python API) as loaded
            run.loaded.model.to(self.compute.weight_dtype)
        if self.compute.gradient_checkpointing:
            enable_checkpointing(run.loaded.model)
        self.policy = self.build_policy(run.loaded)
        self.setup()
        dist.broadcast_parameters(self.policy)  # ranks start from rank 0's weights
        if shard:
            if self.device.type == "cpu":
                map_large_blocks()  # gathered layers go back to the OS when freed
            for module in self.sharded_modules():
                shard_model(module, self.device)
        self.update_engine = UpdateEngine(
            self.param_groups(), run.config.optim, horizon=r.max_new_tokens, compute=self.compute
        )
        # The last step's state, kept for inspection (tests, notebooks); not checkpointed.
        self.last_state: StepState | None = None

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Validate the method's section up front (resolve registry names, check ranges)."""

    def sharded_modules(self) -> list[nn.Module]:
        """What `distributed.strategy=fsdp2` shards: the policy, and whatever else holds a
        copy of the model's weights (a frozen reference)."""
        return [self.policy]

    # -- set-up hooks -----------------------------------------------------------------------
    def build_policy(self, loaded: LoadedModel) -> nn.Module:
        """LoRA on pretrained models (`lora.enabled=auto`), full fine-tune on `tiny`."""
        if self.uses_lora_config():
            return apply_lora(loaded.model, self.config.lora)
        loaded.model.requires_grad_(True)
        return loaded.model

    def uses_lora_config(self) -> bool:
        lora = self.config.lora
        return self.run.loaded.pretrained if lora.enabled == "auto" else bool(lora.enabled)

    def uses_lora(self) -> bool:
        return hasattr(self.policy, "peft_config")

    def setup(self) -> None:
        """Build what the method needs besides the policy (a reference, a critic, queues);
        runs before `param_groups`."""

    def updates_per_step(self) -> int:
        """Optimizer updates a step makes (the schedule counts updates, not steps)."""
        return 1

    def param_groups(self) -> list[ParamGroup]:
        """What the update engine optimises: by default one group, "policy", of every
        trainable parameter of the policy at `optim.lr`."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        total = self.config.steps * self.updates_per_step()
        return [ParamGroup("policy", params, self.config.optim.lr, total)]

    # -- the step ---------------------------------------------------------------------------
    def step(self, step: int, examples: list[Example]) -> dict[str, float]:
        """One training step on `examples` (the skeleton in the module docstring)."""
        timer = PhaseTimer()
        with self.compute.autocast():
            state, metrics = self.collect(step, examples, timer)
        with timer("update"):  # the update engine autocasts each forward, not the backward
            self.policy.train()
            try:
                metrics.update(self.update(state))
            finally:
                self.policy.eval()
        with self.compute.autocast():
            metrics.update(self.finish(state))
        metrics.update(timer.metrics)
        self.last_state = state
        return metrics

    def collect(
        self, step: int, examples: list[Example], timer: PhaseTimer | None = None
    ) -> tuple[StepState, dict[str, float]]:
        """The step up to its update (rollout, score, prepare, advantages): the state the
        update would train on, and the metrics so far. `step` runs this, then `update` and
        `finish`; alone, it shows what a step would do without changing any weight."""
        timer = timer or PhaseTimer()
        metrics: dict[str, float] = {}
        self.policy.eval()
        with timer("generate"):
            batch = self.rollout(step, examples)
        state = self.State(step=step, examples=examples, batch=batch)
        with timer("reward"):
            metrics.update(self.score(state))
        with timer("logprob"):
            metrics.update(self.prepare(state))
        with timer("advantage"):
            metrics.update(self.advantages(state))
        return state, metrics

    def rollout(self, step: int, examples: list[Example]) -> RolloutBatch:
        """`rollout.group_size` samples per prompt from the policy."""
        group = self.config.rollout.group_size
        return self.sample(step, [ex.messages for ex in examples], group)

    def score(self, state: StepState) -> dict[str, float]:
        """The task's reward functions on the batch (`methods.rewards.score_rewards`)."""
        score_rewards(self.run.task, state.examples, state.batch)
        return reward_metrics(state.batch)

    def prepare(self, state: StepState) -> dict[str, float]:
        """Old and reference log-probs, values: what the update needs from before it."""
        return {}

    def advantages(self, state: StepState) -> dict[str, float]:
        """Turn rewards into the training signal (advantages and the loss mask)."""
        return {}

    def update(self, state: StepState) -> dict[str, float]:
        """The optimizer update(s), through `self.update_engine`."""
        raise NotImplementedError(f"{type(self).__name__} must define update()")

    def finish(self, state: StepState) -> dict[str, float]:
        """Metrics of the finished step (after the update)."""
        return {}

    # -- pieces the hooks use ---------------------------------------------------------------
    def rollout_seed(self, step: int) -> int:
        """Seed of step `step`'s sampling: fixed by (seed, step) so a resumed run draws what
        the uninterrupted run drew; offset per rank so ranks draw independent streams."""
        return self.config.seed * 1_000_003 + step + dist.rank() * 7_919_000_003

    def sample(
        self,
        step: int,
        prompts: list[Messages],
        num_samples: int,
        adapter_names: list[str] | None = None,
        round: int = 0,
    ) -> RolloutBatch:
        """The one way a method generates: `num_samples` responses per prompt from the policy
        through the rollout engine, seeded by `rollout_seed(step)` (and the `round` of a step
        that samples more than once)."""
        seed = self.rollout_seed(step) + round * 104_729_000_000
        request = SampleRequest(prompts, num_samples, self.sampling, seed, adapter_names)
        return self.rollout_engine.generate(self.policy, request)

    def score_no_grad(self, batch: RolloutBatch, with_entropy: bool = False) -> TokenScores:
        """The policy's log-probs (and entropies) of `batch` without gradient, at the
        sampling temperature, in microbatches of `optim.micro_batch_size`."""
        mb = self.config.optim.micro_batch_size
        return score_batch(self.policy, batch, self.sampling.temperature, mb, with_entropy)

    def eval_policy(self) -> nn.Module:
        """The model that `tandem eval` and before/after evaluation should sample from."""
        return self.policy

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the policy weights that a resumed run needs to continue exactly.

        The hook every method extends: override, call `super().state_dict()` and add your own
        keys (queues, histories, controllers; anything `torch.save` takes); `load_state_dict`
        receives the same dict back. The trainer saves it in each checkpoint with the weights,
        the RNG states and the data position.
        """
        return {"update_engine": self.update_engine.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (after the policy weights are loaded)."""
        self.update_engine.load_state_dict(state["update_engine"])
