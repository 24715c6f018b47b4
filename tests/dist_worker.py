"""Helpers for tests/test_distributed.py: one method update on a fixed global batch, in one
process or as one rank of a gloo group (a module, so torch.multiprocessing can spawn it)."""

from __future__ import annotations

import os

import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.loop import load_config
from tandemrl.loop.trainer import seed_everything
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
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
STEPS = 2


def build(name: str):
    cfg = load_config(None, [*COMMON, *CONFIGS[name]])
    seed_everything(0)
    task = get_task(cfg.task, **cfg.task_options)
    method = get_method_class(cfg.method)(RunContext(cfg, load_model("tiny"), task))
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


def run_steps(name: str, batch: RolloutBatch) -> dict:
    """STEPS updates of `name` on `batch` (this rank's share of it when distributed)."""
    method, examples = build(name)
    dist.broadcast_parameters(method.policy)
    n, w, r = len(examples), dist.world_size(), dist.rank()
    lo, hi = r * n // w, (r + 1) * n // w
    mine = shard_rows(batch, lo, hi)
    method.rollout = lambda step, ex: shard_rows(mine, 0, len(ex))  # a fresh copy each step
    history = []
    for step in range(STEPS):
        metrics = dist.gather_metrics(method.step(step, dist.shard(examples)))
        history.append({k: v for k, v in metrics.items() if not k.startswith(("time/", "memory/"))})
    params = {n: p.detach().clone() for n, p in method.policy.named_parameters() if "lora_" in n}
    return {"metrics": history, "params": params}


def rank_main(rank: int, world: int, port: int, batches: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_from_env(timeout_s=120)
    try:
        results = {name: run_steps(name, batch) for name, batch in batches.items()}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.shutdown()
