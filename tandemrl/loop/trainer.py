"""The training loop: set up the run, step the method, log, checkpoint, evaluate; resume,
stop cleanly on signals, stop on runs of non-finite updates, and run data-parallel under
`torchrun` (docs/resume_and_faults.md, docs/distributed.md)."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from tandemrl.errors import ConfigError
from tandemrl.loop.checkpoint import rng_state, save_checkpoint
from tandemrl.loop.evaluate import evaluate, summary_line
from tandemrl.loop.logging import MetricsLogger, peak_rss_mb
from tandemrl.loop.resume import (
    gathered_rng_states,
    resolve_resume,
    restore,
    set_aside_old_checkpoints,
    trainer_state,
)
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.rollout import HFEngine, PolicySampler
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.config import TrainConfig
from tandemrl.runtime.signals import StopSignals, step_scope
from tandemrl.tasks import Example, get_task
from tandemrl.tasks.reward_sources import (
    bind_policy_rewards,
    pop_reward_metrics,
    reward_specs,
)
from tandemrl.tasks.rewards import reward_limits

EXIT_SIGTERM = 128 + 15


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite updates in a row); one line, says what to do."""


class PromptSampler:
    """Walks the training examples in a seeded shuffled order, reshuffling each epoch.

    `position` (prompts handed out so far) is the whole state: a checkpoint stores it."""

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("the task's training split is empty")
        self.examples = examples
        self.seed = seed
        self.position = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            epoch, idx = divmod(self.position, len(self.examples))
            out.append(self.examples[self._order(epoch)[idx]])
            self.position += 1
        return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log(message: str) -> None:
    if dist.is_main():
        print(f"[tandemrl] {message}", file=sys.stderr, flush=True)


def check_data(cfg: TrainConfig, train_examples: list, eval_examples: list) -> None:
    """Data problems found before the model loads: each a one-line ConfigError."""
    if not train_examples:
        raise ConfigError(
            f"task {cfg.task!r} has an empty training split; check task_options "
            "(e.g. train_size, path) so that it yields prompts"
        )
    w = dist.world_size()
    if cfg.rollout.prompts_per_step % w:
        raise ConfigError(
            f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} does not split over {w} "
            f"processes; use a multiple of {w} (each rank samples whole groups)"
        )
    if not eval_examples and (cfg.eval.before or cfg.eval.after or cfg.eval.every):
        log(f"warning: task {cfg.task!r} has an empty eval split: no held-out evaluation")


def resume_command(run_dir: Path) -> str:
    return f"tandem train {run_dir / 'config.yaml'} resume=auto"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run `cfg` to completion; returns the summary also written to `<output_dir>/summary.json`."""
    owns_group = not dist.is_distributed() and dist.init_from_env()
    try:
        with reward_limits(cfg.faults.reward_timeout_s, cfg.faults.reward_errors):
            return _train(cfg)
    finally:
        if owns_group:
            dist.shutdown()


def _train(cfg: TrainConfig) -> dict[str, Any]:
    started = time.perf_counter()
    main = dist.is_main()
    run_dir = Path(cfg.output_dir)
    seed_everything(cfg.seed)
    # Everything that can be wrong with the input is checked before the run dir is touched.
    task = get_task(cfg.task, **cfg.task_options)
    task.rewards = reward_specs(cfg, task)  # `reward=`: the task's own, or e.g. duality
    train_examples = list(task.train_examples())
    eval_examples = list(task.eval_examples())[: cfg.eval.size]
    check_data(cfg, train_examples, eval_examples)
    resume_from = resolve_resume(cfg.resume, run_dir)
    log(
        f"loading model {cfg.model}"
        + (f" on {dist.world_size()} processes" if dist.is_distributed() else "")
    )
    loaded = load_model(cfg.model, cfg.dtype)
    method = get_method_class(cfg.method)(RunContext(cfg, loaded, task))
    dist.broadcast_parameters(method.policy)
    policy_sampler = PolicySampler(
        method.eval_policy, HFEngine(loaded.tokenizer, cfg.eval.batch_size)
    )
    bind_policy_rewards(task.rewards, policy_sampler)  # rewards that sample from the policy
    sampler = PromptSampler(train_examples, cfg.seed)
    start = 0
    if resume_from is not None:
        start = restore(resume_from, method, sampler)
        log(f"resumed from {resume_from} (step {start} of {cfg.steps})")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            set_aside_old_checkpoints(run_dir)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    summary: dict[str, Any] = {
        "method": cfg.method,
        "model": cfg.model,
        "task": cfg.task,
        "steps": cfg.steps,
    }

    def run_eval(tag: str) -> dict[str, Any]:
        t = time.perf_counter()
        result = evaluate(
            method.eval_policy(),
            loaded.tokenizer,
            task,
            eval_examples,
            max_new_tokens=cfg.rollout.max_new_tokens,
            pass_k=cfg.eval.pass_k,
            pass_temperature=cfg.eval.pass_temperature,
            batch_size=cfg.eval.batch_size,
            seed=cfg.seed,
            progress=cfg.log.progress,
            desc=f"eval {tag}",
        )
        result["time_s"] = time.perf_counter() - t
        log(f"held-out {tag}: {summary_line(result)}")
        return result

    def save(step: int, rngs: list[dict[str, Any]] | None = None, position: int | None = None):
        # Collective parts first (every rank), then rank 0 writes.
        rngs = rngs if rngs is not None else gathered_rng_states()
        state = trainer_state(method, sampler.position if position is None else position, rngs)
        if not main:
            return None
        return save_checkpoint(run_dir, step, method.eval_policy(), state, cfg.checkpoint.keep)

    evals: dict[str, Any] = {}
    if cfg.eval.before and eval_examples and start == 0 and main:
        evals["before"] = run_eval("before")

    logger = (
        MetricsLogger(run_dir, tensorboard=cfg.log.tensorboard, after_step=start) if main else None
    )
    step_times: list[float] = []
    done, streak, last_ckpt = start, 0, resume_from
    bar = tqdm(
        range(start, cfg.steps), desc=f"{cfg.method} train", disable=not (cfg.log.progress and main)
    )
    signals = StopSignals()
    try:
        with signals:
            for step in bar:
                with step_scope():  # Ctrl-C after the update commits waits for the log
                    t = time.perf_counter()
                    # What an abandoned step must not leave behind: data position and RNGs.
                    position, rng_before = sampler.position, rng_state()
                    prompts = dist.shard(sampler.next(cfg.rollout.prompts_per_step))
                    metrics = method.step(step, prompts)
                    metrics.update(pop_reward_metrics(task.rewards))
                    metrics["time/step_s"] = time.perf_counter() - t
                    metrics["memory/peak_rss_mb"] = peak_rss_mb()
                    metrics = dist.gather_metrics(metrics)
                    skipped = any(k.endswith("update_skipped") and v for k, v in metrics.items())
                    streak = streak + 1 if skipped else 0
                    metrics["nonfinite/consecutive"] = float(streak)
                    step_times.append(metrics["time/step_s"])
                    if logger:
                        logger.log(step + 1, metrics)
                    done = step + 1
                bar.set_postfix(
                    reward=f"{metrics.get('reward/mean', math.nan):.3f}",
                    loss=f"{metrics.get('loss', math.nan):.4f}",
                )
                limit = cfg.faults.max_nonfinite_steps
                if skipped:
                    log(
                        f"warning: step {done}: non-finite loss or gradient (loss="
                        f"{metrics.get('loss', math.nan):.4g}, grad_norm="
                        f"{metrics.get('grad_norm', math.nan):.4g}); update skipped "
                        f"({streak} in a row; the run stops at faults.max_nonfinite_steps={limit})"
                    )
                if skipped and limit and streak >= limit:
                    where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else ""
                    raise TrainingError(
                        f"{streak} steps in a row ({done - streak + 1}-{done}) had a non-finite "
                        f"loss or gradient, so no update was applied{where}. Lower optim.lr or "
                        "optim.max_grad_norm, check the rewards and the loss settings, or raise "
                        "faults.max_nonfinite_steps"
                    )
                stop = dist.any_rank(signals.stop_requested)
                # No periodic checkpoint inside a non-finite streak, so keep-K cannot push out
                # the last good one (a stop still saves: skipped updates changed no weights).
                every = cfg.checkpoint.every
                periodic = every and done % every == 0 and not streak
                if done < cfg.steps and (stop or periodic):
                    last_ckpt = save(done) or last_ckpt
                if stop and done < cfg.steps:
                    log(f"stopped by SIGTERM after step {done}; checkpoint saved to {last_ckpt}")
                    log(f"resume with: {resume_command(run_dir)}")
                    raise SystemExit(EXIT_SIGTERM)
                if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.steps and main:
                    evals[f"step_{done}"] = run_eval(f"step {done}")
    except KeyboardInterrupt:
        # The step in flight is abandoned, not half-applied (methods wrap their update in
        # signals.commit): save the state as of the last finished step, on rank 0 only (no
        # collectives here: the other ranks may be anywhere).
        if done > start and main:
            rngs = [rng_before] if done == step else [rng_state()]
            pos = position if done == step else sampler.position
            ckpt = save_checkpoint(
                run_dir,
                done,
                method.eval_policy(),
                trainer_state(method, pos, rngs),
                cfg.checkpoint.keep,
            )
            log(f"interrupted after step {done}; checkpoint saved to {ckpt}")
            log(f"resume with: {resume_command(run_dir)}")
            log(f"evaluate it with: tandem eval checkpoint={ckpt}")
        raise
    finally:
        if logger:
            logger.close()
    if done > start or last_ckpt is None:
        ckpt = save(cfg.steps if done >= cfg.steps else done)
    else:
        ckpt = last_ckpt
    if not main:
        return {**summary, "rank": dist.rank()}
    log(f"checkpoint saved to {ckpt}")
    if cfg.eval.after and eval_examples:
        evals["after"] = run_eval("after")

    summary.update(
        {
            "median_step_s": float(np.median(step_times)) if step_times else None,
            "peak_rss_mb": peak_rss_mb(),
            "wall_time_s": time.perf_counter() - started,
            "checkpoint": str(ckpt),
            "resumed_from": str(resume_from) if resume_from else None,
            "world_size": dist.world_size(),
        }
    )
    for tag, result in evals.items():
        summary[f"eval/{tag}"] = {k: v for k, v in result.items() if k != "examples"}
    (run_dir / "eval.json").write_text(json.dumps(evals, indent=2))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_examples(evals.get("after") or evals.get("before"), cfg.eval.show_examples)
    if "before" in evals and "after" in evals:
        log(
            f"held-out accuracy {evals['before']['accuracy']:.3f} -> {evals['after']['accuracy']:.3f}"
            f" over {cfg.steps} steps (median step {summary['median_step_s'] or 0:.1f} s,"
            f" peak RSS {summary['peak_rss_mb']:.0f} MB, {summary['wall_time_s'] / 60:.1f} min in"
            f" all); run dir {run_dir}"
        )
    return summary


def _print_examples(result: dict[str, Any] | None, n: int) -> None:
    if not result or n <= 0:
        return
    for rec in result["examples"][:n]:
        mark = "correct" if rec.get("correct") else "wrong"
        log(f"[{mark}] {rec['prompt'][:80]!r} -> {rec['completion'][:120]!r}")
