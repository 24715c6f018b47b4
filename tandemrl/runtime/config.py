"""The run configuration: one dataclass tree, the same keys in YAML and on the command line.

`tandem train rollout.group_size=8 grpo.kl_coef=0.05` sets the same fields as

    rollout: {group_size: 8}
    grpo: {kl_coef: 0.05}

The method's own section is named after the method and typed by the method's `Config` class,
so adding a method adds its section without touching this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from tandemrl.errors import ConfigError
from tandemrl.models.adapters import LoraConfig
from tandemrl.runtime.config_parse import to_dict
from tandemrl.runtime.device import Compute, resolve_compute
from tandemrl.tasks.duality_reward import DualityConfig


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8  # prompts a step trains on (over all processes)
    group_size: int = 4  # responses sampled per prompt (GRPO's G)
    max_new_tokens: int = 32  # the generation budget (also Dr.GRPO's constant)
    temperature: float = 1.0  # sampling temperature (> 0); log-probs are scored at it too
    top_p: float = 1.0  # nucleus sampling (1 = off)
    # Sequences decoded at once (None = the whole step's batch).
    generation_batch_size: int | None = None
    # hf: Hugging Face generate on the training module; vllm: a vLLM engine in the training
    # process, served the policy's weights after each update (the vllm.* section, docs/vllm.md)
    engine: Literal["hf", "vllm"] = "hf"
    # Truncated importance sampling of the engine-vs-trainer gap: each token's policy loss is
    # weighted by min(pi_trainer / pi_engine, tis_cap) (verl, TRL); null = off. vLLM only.
    tis_cap: float | None = None


@dataclass
class VllmConfig:
    """The vLLM rollout engine's settings (`rollout.engine=vllm`, docs/vllm.md)."""

    # merge: load W + s*B@A into the engine (the CPU default, fast there); adapter: serve
    # LoRA adapters by LoRARequest, several in one call (the GPU default); auto: by device
    lora: Literal["auto", "merge", "adapter"] = "auto"
    gpu_memory_share: float = 0.3  # GPU: the share of device memory the engine may take
    cpu_kv_cache_gb: float = 2.0  # CPU: the engine's KV cache
    max_model_len: int | None = None  # null: the model's own context length
    # no torch.compile / CUDA graphs; null = on for CPUs, off for GPUs. Here compiling started
    # the engine in 81 s against 12 s and decoded 8x4x32 in 2.6 s against 3.2 s: it pays off
    # after about 100 steps (docs/vllm.md)
    enforce_eager: bool | None = None


@dataclass
class OverlongConfig:
    """DAPO's soft overlong punishment (arXiv 2503.14476) as the extra named reward
    `overlong`: 0 up to max_new_tokens - buffer tokens, then linearly down to -1 at
    max_new_tokens (tasks.rewards.overlong_reward)."""

    buffer: int = 0  # tokens before the budget where the penalty ramps in; 0 = off
    penalty_factor: float = 1.0  # the reward's weight


@dataclass
class OptimConfig:
    lr: float = 1e-4  # AdamW's learning rate (a method may have its own, e.g. dupo.lr_*)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.99  # AdamW's second-moment decay
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still logged)
    # Sequences per forward/backward; gradients accumulate to one update per step.
    micro_batch_size: int = 8
    warmup_steps: int = 0  # optimizer updates of linear warmup
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # lr after warmup


@dataclass
class EvalConfig:
    size: int = 64  # held-out examples (capped by the task's eval split)
    pass_k: int = 4  # samples per example for pass@k (0 = greedy accuracy only)
    pass_temperature: float = 1.0  # temperature of the pass@k samples
    batch_size: int = 32  # sequences decoded at once in evaluation
    before: bool = True  # evaluate the starting policy before training
    after: bool = True  # evaluate the trained policy after training
    every: int = 0  # also every N steps (0 = never)
    show_examples: int = 3  # completions printed after the run


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints (0 = only at the end)
    keep: int = 2  # newest complete checkpoints kept


@dataclass
class FaultConfig:
    """What a run does about bad numbers and bad reward functions (docs/resume_and_faults.md)."""

    # Consecutive steps whose update was skipped (non-finite loss or gradient) before the run
    # stops with an error; 0 = never stop.
    max_nonfinite_steps: int = 3
    # Time limit of one reward-function call in seconds (0 = none); a call that runs over
    # raises inside the function, and its rows abstain like rows that raise.
    reward_timeout_s: float = 60.0
    # `abstain`: a row on which a reward raises or times out abstains and is counted;
    # `raise`: the first such row stops the run, naming the function and the row.
    reward_errors: Literal["abstain", "raise"] = "abstain"
    # A step in which every reward abstained has no learning signal; a run with more than
    # this share of such steps ends with an error (exit 2) instead of 0.
    max_silent_frac: float = 0.5


@dataclass
class LogConfig:
    # Where metrics go besides metrics.jsonl: tensorboard, wandb (offline unless
    # WANDB_API_KEY or WANDB_MODE says otherwise), trackio; the same metric names in each.
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    tensorboard: bool = True  # false drops tensorboard from trackers (the older switch)
    progress: bool = True  # progress bars
    project: str = "tandemrl"  # the W&B / trackio project
    run_name: str | None = None  # the W&B / trackio run name (None: output_dir's name)
    # Every N steps (0 = never): a table of sampled completions (prompt, completion, each
    # reward, advantage) to completions.jsonl and the trackers; `completions_rows` rows of it.
    completions_every: int = 0
    completions_rows: int = 8


@dataclass
class DistributedConfig:
    """How several processes (`torchrun`) share the work (docs/distributed.md)."""

    # replicate: every rank holds the whole model, gradients are summed (data parallel);
    # fsdp2: parameters, gradients and optimizer state are sharded over the ranks
    # (torch.distributed.fsdp.fully_shard), for models that do not fit one device
    strategy: Literal["replicate", "fsdp2"] = "replicate"


@dataclass
class TrainConfig:
    method: str = (
        "grpo"  # grpo, dipo, gdpo, gd2po, ppo, policy_split, dupo, dpo, ipo, or module:Class
    )
    model: str = "smollm2-135m"  # a builtin (smollm2-135m, tiny), a local HF folder, or a hub id
    # The embedded default: `arith2` is reasoning-gym's basic_arithmetic with 2 terms of 1-2
    # digits, which SmolLM2-135M solves sometimes but not reliably (held-out: 0.297 greedy,
    # 0.086 sampled at T=1; `tandem eval task=arith2`), so RL has signal to work with.
    task: str = "arith2"
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's own options
    steps: int = 20  # training steps
    seed: int = 0  # seeds sampling, data order and initialisation
    output_dir: str = "runs/default"  # the run directory
    # auto (the accelerator when there is one), cpu, cuda, cuda:N, mps (runtime/device.py)
    device: str = "auto"
    # auto (bf16-mixed on CUDA, fp32 elsewhere), fp32, bf16-mixed (fp32 weights and optimizer
    # state, bf16 autocast), bf16 (bf16 weights)
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = "auto"
    # recompute activations in the backward (less memory); None = on for accelerators
    gradient_checkpointing: bool | None = None
    # the weights' dtype as loaded (older key; bfloat16 means precision=bf16)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # "" = start fresh; "auto" = continue the newest valid checkpoint in output_dir (fresh if
    # none); a path = continue that checkpoint.
    resume: str = ""
    # A fresh run refuses an output_dir that holds an earlier run; true replaces it.
    overwrite: bool = False
    # Where the rewards come from: "task" (its own) or "duality" (the DuPO paper's duality reward,
    # tandemrl.tasks.duality_reward).
    reward: str = "task"
    lora: LoraConfig = field(default_factory=LoraConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    log: LogConfig = field(default_factory=LogConfig)
    duality: DualityConfig = field(default_factory=DualityConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    # The selected method's section (e.g. the `grpo:` mapping), typed by the method.
    method_config: Any = None

    def compute(self) -> Compute:
        """The resolved device, precision and checkpointing (runtime/device.py)."""
        precision = self.precision
        if precision == "auto" and self.dtype == "bfloat16":
            precision = "bf16"  # the older key
        return resolve_compute(self.device, precision, self.gradient_checkpointing)

    @property
    def load_dtype(self) -> str:
        """The dtype the model's weights load in: bfloat16 for `precision=bf16`."""
        return "bfloat16" if self.precision == "bf16" else self.dtype

    @property
    def method_section(self) -> str:
        """The key of the method's own section: the method's registered name (a method given
        as `module:Class` names its section with the class's `name`)."""
        return getattr(self, "_method_section", None) or self.method

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        out.pop("method_config")
        out[self.method_section] = to_dict(self.method_config)
        return out


def validate(cfg: TrainConfig, check_model: bool = True) -> None:
    """Fail before any slow work: names that do not resolve and values out of range, each
    with one line naming the key (numbers that pass here must not wreck training)."""
    from tandemrl.models.loading import resolve_model_kind

    if check_model:
        resolve_model_kind(cfg.model)
    for ok, message in [*_value_checks(cfg), *_engine_checks(cfg)]:
        if not ok:
            raise ConfigError(message)
    cfg.compute()  # a device that is not there fails here, before anything loads
    if cfg.rollout.engine == "vllm":
        from tandemrl.rollout.vllm_engine import INSTALL_HINT, vllm_available

        if not vllm_available():
            raise ConfigError(INSTALL_HINT)
    from tandemrl.tasks.reward_sources import check_reward_config

    check_reward_config(cfg)
    cfg.duality.check()


def _value_checks(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """(holds, message) for every range a value must be in."""
    r, o, lora = cfg.rollout, cfg.optim, cfg.lora
    grad_norm = o.max_grad_norm
    return [
        (cfg.steps >= 0, "steps must be >= 0"),
        (0 <= cfg.seed < 2**32, f"seed must be an integer in [0, 2**32), got {cfg.seed}"),
        (r.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (r.group_size >= 1, "rollout.group_size must be >= 1"),
        (r.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (
            math.isfinite(r.temperature) and r.temperature > 0,
            f"rollout.temperature must be > 0, got {r.temperature}: training samples several "
            "responses per prompt, and at 0 they are all the same (no learning signal); "
            "greedy decoding is for evaluation (eval.pass_k=0 evaluates greedily only)",
        ),
        (0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}"),
        (
            r.generation_batch_size is None or r.generation_batch_size >= 1,
            "rollout.generation_batch_size must be >= 1 or null (the whole step)",
        ),
        (o.micro_batch_size >= 1, "optim.micro_batch_size must be >= 1"),
        (
            0 < o.lr <= 1,
            f"optim.lr must be in (0, 1], got {o.lr}: AdamW moves every weight by about lr a "
            "step, so a larger lr wrecks the model on the first update",
        ),
        (
            grad_norm is None or (math.isfinite(grad_norm) and grad_norm > 0),
            f"optim.max_grad_norm must be > 0 (or null: no clipping), got {grad_norm}; 0 "
            "would stop every update and a negative norm reverses it",
        ),
        (math.isfinite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)"),
        (o.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (lora.r >= 1, f"lora.r (the LoRA rank) must be >= 1, got {lora.r}"),
        (math.isfinite(lora.alpha) and lora.alpha > 0, f"lora.alpha must be > 0, got {lora.alpha}"),
        (0 <= lora.dropout < 1, f"lora.dropout must be in [0, 1), got {lora.dropout}"),
        (
            lora.top_layers is None or lora.top_layers >= 1,
            "lora.top_layers must be >= 1 or null (all layers)",
        ),
        (cfg.eval.size >= 0, "eval.size must be >= 0"),
        (cfg.eval.pass_k >= 0, "eval.pass_k must be >= 0"),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
        (
            set(cfg.log.trackers) <= {"tensorboard", "wandb", "trackio"},
            f"log.trackers: {cfg.log.trackers} has an unknown tracker; use tensorboard, "
            "wandb and trackio",
        ),
        (cfg.log.completions_every >= 0, "log.completions_every must be >= 0 (0 = never)"),
        (cfg.log.completions_rows >= 1, "log.completions_rows must be >= 1"),
        (cfg.eval.every >= 0, "eval.every must be >= 0 (0 = never)"),
        (
            math.isfinite(cfg.eval.pass_temperature) and cfg.eval.pass_temperature > 0,
            "eval.pass_temperature must be > 0 (pass@k samples)",
        ),
        (cfg.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
        (cfg.checkpoint.every >= 0, "checkpoint.every must be >= 0 (0 = only at the end)"),
        (cfg.faults.max_nonfinite_steps >= 0, "faults.max_nonfinite_steps must be >= 0"),
        (cfg.faults.reward_timeout_s >= 0, "faults.reward_timeout_s must be >= 0 (0 = none)"),
        (
            0 <= cfg.faults.max_silent_frac <= 1,
            "faults.max_silent_frac must be in [0, 1] (share of steps without any reward)",
        ),
        (
            0 <= cfg.overlong.buffer <= r.max_new_tokens,
            f"overlong.buffer must be in [0, rollout.max_new_tokens={r.max_new_tokens}]"
            f" (0 = off), got {cfg.overlong.buffer}",
        ),
    ]


def _engine_checks(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """(holds, message) for the rollout engine's settings."""
    r = cfg.rollout
    return [
        (
            r.tis_cap is None or (math.isfinite(r.tis_cap) and r.tis_cap >= 1),
            f"rollout.tis_cap must be >= 1 or null (off), got {r.tis_cap}",
        ),
        (
            r.tis_cap is None or r.engine == "vllm",
            "rollout.tis_cap corrects the gap between a separate rollout engine and the "
            "trainer; with rollout.engine=hf they are the same module: set rollout.engine=vllm "
            "or leave tis_cap null",
        ),
        (
            0 < cfg.vllm.gpu_memory_share <= 1 and cfg.vllm.cpu_kv_cache_gb > 0,
            "vllm.gpu_memory_share must be in (0, 1] and vllm.cpu_kv_cache_gb > 0",
        ),
        (
            r.engine == "hf" or cfg.distributed.strategy == "replicate",
            "rollout.engine=vllm with distributed.strategy=fsdp2 is not supported yet: the "
            "engine needs the whole weights on each rank; use rollout.engine=hf",
        ),
    ]
