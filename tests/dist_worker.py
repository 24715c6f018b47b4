"""Helpers for tests/test_distributed.py and tests/test_fsdp2.py: method updates on a fixed
global batch, in one process or as one rank of a gloo group (a module, so
torch.multiprocessing can spawn it)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.loop import load_config
from tandemrl.loop.resume import gathered_rng_states, restore, trainer_state
from tandemrl.loop.sharded_checkpoint import save_sharded
from tandemrl.loop.trainer import seed_everything
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.models.sharding import full_value, local
from tandemrl.rollout import RolloutBatch
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.update import build_scheduler
from tandemrl.tasks import get_task

COMMON = ["model=tiny", "task=toy_letters", "rollout.prompts_per_step=4",
          "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.micro_batch_size=3"]  # fmt: skip
CONFIGS = {
    "grpo": ["method=grpo", "optim.lr=1e-2", "grpo.kl_coef=0.05", "lora.enabled=true"],
    # every interaction on: sharing, distillation, gradient sharing, cross reward, adaptive lr
    "dupo": [
        "method=dupo",
        "dupo.schedule=simultaneous",
        "dupo.lr_explore=1e-2",
        "dupo.lr_exploit=1e-2",
        "dupo.success_reward=0.0",
        "dupo.adaptive_window=1",
        "dupo.plot=false",
    ],  # fmt: skip
    # token-mean: each term's normaliser must count the global batch's tokens, not one rank's
    "dipo": [
        "method=dipo",
        "optim.lr=1e-2",
        "dipo.aggregation=token-mean",
        "dipo.alpha=0.5",
        "dipo.success=0.3",
        "lora.enabled=true",
    ],  # fmt: skip
}
FSDP2 = ["method=grpo", "optim.lr=1e-2", "grpo.kl_coef=0.05", "distributed.strategy=fsdp2"]
# FSDP2-sharded GRPO: full fine-tuning (the frozen reference copy sharded too) and LoRA
FSDP2_CONFIGS = {"fsdp2_full": [*FSDP2, "lora.enabled=false"],
                 "fsdp2_lora": [*FSDP2, "lora.enabled=true"]}  # fmt: skip
STEPS = 2


def build(name: str, sgd: bool = True, keys: list[str] | None = None):
    """The method of config `name` (or of `keys` when given) with its step's examples."""
    keys = keys if keys is not None else {**CONFIGS, **FSDP2_CONFIGS}[name]
    cfg = load_config(None, [*COMMON, *keys])
    seed_everything(0)
    task = get_task(cfg.task, **cfg.task_options)
    method = get_method_class(cfg.method)(RunContext(cfg, load_model("tiny"), task))
    if sgd:
        use_sgd(method)
    return method, list(task.train_examples())[: cfg.rollout.prompts_per_step]


def use_sgd(method) -> None:
    """Plain SGD in every parameter group: its update is lr x the reduced (clipped) gradient,
    so parameters compare as tightly as gradients. Adam divides by sqrt(v): where a gradient
    is ~eps, float reassociation (two partial sums instead of one) moves an element by up to
    ~lr, and how far differs between CPUs (AVX2 vs AVX-512), which is not what is tested."""
    engine = method.update_engine
    for name, group in engine.groups.items():
        lr = engine.optimizers[name].param_groups[0]["lr"]
        engine.optimizers[name] = torch.optim.SGD(group.params, lr=lr)
        engine.schedulers[name] = build_scheduler(
            engine.optimizers[name], method.config.optim, group.total_updates
        )


def global_batch(name: str) -> RolloutBatch:
    """The step's rollout for all prompts, sampled once in one process."""
    method, examples = build(name)
    return method.rollout(0, examples)


def shard_rows(batch: RolloutBatch, lo: int, hi: int) -> RolloutBatch:
    """The rows of prompts lo..hi-1, renumbered as that rank's own prompts 0..hi-lo-1."""
    rows = [i for i, e in enumerate(batch.example_index) if lo <= e < hi]
    out = batch.select(rows)
    out.example_index = [e - lo for e in out.example_index]
    out.group_ids = out.group_ids - lo
    return out


def feed(method, examples: list, batch: RolloutBatch) -> None:
    """Make `method` train on this rank's share of the fixed `batch` at every step."""
    n, w, r = len(examples), dist.world_size(), dist.rank()
    mine = shard_rows(batch, r * n // w, (r + 1) * n // w)
    method.rollout = lambda step, ex: shard_rows(mine, 0, len(ex))  # a fresh copy each step


def one_step(method, step: int, examples: list) -> dict:
    metrics = dist.gather_metrics(method.step(step, dist.shard(examples)))
    return {k: v for k, v in metrics.items() if not k.startswith(("time/", "memory/"))}


def trained_params(method) -> dict:
    """Every trainable parameter (every adapter's, active or not), whole (gathered from the
    shards under FSDP2)."""
    return {
        n: full_value(p.detach()).clone()
        for n, p in method.policy.named_parameters()
        if p.requires_grad or "lora_" in n
    }


def run_steps(name: str, batch: RolloutBatch) -> dict:
    """STEPS updates of `name` on `batch` (this rank's share of it when distributed)."""
    method, examples = build(name)
    feed(method, examples, batch)
    history = [one_step(method, step, examples) for step in range(STEPS)]
    params = list(method.policy.parameters())
    held = sum(local(p).numel() for p in params) / sum(p.numel() for p in params)
    return {"metrics": history, "params": trained_params(method), "held": held}


def full_optimizer_state(method) -> dict:
    """The policy optimizer's moments by parameter name, whole (a collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optimizer = method.update_engine.optimizers["policy"]
    # rank 0 gets the whole state, the others an empty dict; unsharded, it holds the live
    # tensors, which the next update would change: a copy
    state = get_optimizer_state_dict(method.policy, optimizer, options=options)
    return copy.deepcopy(state.get("state", {}))


def checkpoint_then_step(name: str, batch: RolloutBatch, run_dir: str) -> dict:
    """Step 1 on `batch`, a (sharded, under FSDP2) checkpoint, then step 2 (AdamW, so the
    optimizer moments are part of what the checkpoint must carry)."""
    method, examples = build(name, sgd=False)
    feed(method, examples, batch)
    one_step(method, 0, examples)
    state = trainer_state(method, 4, gathered_rng_states())
    optimizers = method.update_engine.optimizers
    ckpt = save_sharded(
        Path(run_dir), 1, method.policy, optimizers, state, 2, method.config.to_dict()
    )
    saved = {"params": trained_params(method), "moments": full_optimizer_state(method)}
    return {"checkpoint": ckpt, "saved": saved, "next": one_step(method, 1, examples)}


def resume_then_step(name: str, batch: RolloutBatch, checkpoint: Path) -> dict:
    """The checkpoint of `checkpoint_then_step` restored here (any world size), then step 2."""
    method, examples = build(name, sgd=False)
    feed(method, examples, batch)
    sampler = SimpleNamespace(position=0)
    step = restore(checkpoint, method, sampler)
    loaded = {"params": trained_params(method), "moments": full_optimizer_state(method)}
    return {"step": step, "position": sampler.position, "loaded": loaded,
            "next": one_step(method, step, examples)}  # fmt: skip


def rank_main(
    rank: int, world: int, port: int, batches: dict, out: str, run_dir: str | None = None
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_from_env(timeout_s=120)
    try:
        results = {name: run_steps(name, batch) for name, batch in batches.items()}
        if run_dir is not None:
            for name, batch in batches.items():
                results[f"{name}/checkpoint"] = checkpoint_then_step(
                    name, batch, f"{run_dir}/{name}"
                )
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.shutdown()
