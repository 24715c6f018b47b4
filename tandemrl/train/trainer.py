"""The training loop: set up the run, step the method, log, checkpoint, evaluate."""

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

from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.tasks import Example, get_task
from tandemrl.train.checkpoint import save_checkpoint
from tandemrl.train.config import TrainConfig
from tandemrl.train.evaluate import evaluate, summary_line
from tandemrl.train.logging import MetricsLogger, peak_rss_mb


class PromptSampler:
    """Walks the training examples in a seeded shuffled order, reshuffling each epoch."""

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
    print(f"[tandemrl] {message}", file=sys.stderr, flush=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run `cfg` to completion; returns the summary also written to `<output_dir>/summary.json`."""
    started = time.perf_counter()
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    seed_everything(cfg.seed)

    task = get_task(cfg.task, **cfg.task_options)
    log(f"loading model {cfg.model}")
    loaded = load_model(cfg.model, cfg.dtype)
    method = get_method_class(cfg.method)(RunContext(cfg, loaded, task))
    eval_examples = list(task.eval_examples())[: cfg.eval.size]
    sampler = PromptSampler(list(task.train_examples()), cfg.seed)
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

    evals: dict[str, Any] = {}
    if cfg.eval.before and eval_examples:
        evals["before"] = run_eval("before")

    logger = MetricsLogger(run_dir, tensorboard=cfg.log.tensorboard)
    step_times = []
    done = 0
    bar = tqdm(range(cfg.steps), desc=f"{cfg.method} train", disable=not cfg.log.progress)
    try:
        for step in bar:
            t = time.perf_counter()
            metrics = method.step(step, sampler.next(cfg.rollout.prompts_per_step))
            metrics["time/step_s"] = time.perf_counter() - t
            metrics["memory/peak_rss_mb"] = peak_rss_mb()
            step_times.append(metrics["time/step_s"])
            logger.log(step + 1, metrics)
            done = step + 1
            bar.set_postfix(
                reward=f"{metrics.get('reward/mean', math.nan):.3f}",
                loss=f"{metrics.get('loss', math.nan):.4f}",
            )
            every = cfg.checkpoint.every
            if every and (step + 1) % every == 0 and step + 1 < cfg.steps:
                save_checkpoint(
                    run_dir,
                    step + 1,
                    method.eval_policy(),
                    _trainer_state(method, sampler),
                    cfg.checkpoint.keep,
                )
            if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.steps:
                evals[f"step_{step + 1}"] = run_eval(f"step {step + 1}")
    except KeyboardInterrupt:
        # Keep what the finished steps learned: the step in flight is abandoned, not half-applied.
        if done:
            ckpt = save_checkpoint(
                run_dir,
                done,
                method.eval_policy(),
                _trainer_state(method, sampler),
                cfg.checkpoint.keep,
            )
            log(f"interrupted after step {done}; checkpoint saved to {ckpt}")
            log(f"evaluate it with: tandem eval checkpoint={ckpt}")
        raise
    finally:
        logger.close()
    ckpt = save_checkpoint(
        run_dir,
        cfg.steps,
        method.eval_policy(),
        _trainer_state(method, sampler),
        cfg.checkpoint.keep,
    )
    log(f"checkpoint saved to {ckpt}")
    if cfg.eval.after and eval_examples:
        evals["after"] = run_eval("after")

    summary.update(
        {
            "median_step_s": float(np.median(step_times)) if step_times else None,
            "peak_rss_mb": peak_rss_mb(),
            "wall_time_s": time.perf_counter() - started,
            "checkpoint": str(ckpt),
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


def _trainer_state(method, sampler: PromptSampler) -> dict[str, Any]:
    return {"method": method.state_dict(), "sampler_position": sampler.position}


def _print_examples(result: dict[str, Any] | None, n: int) -> None:
    if not result or n <= 0:
        return
    for rec in result["examples"][:n]:
        mark = "correct" if rec.get("correct") else "wrong"
        log(f"[{mark}] {rec['prompt'][:80]!r} -> {rec['completion'][:120]!r}")
