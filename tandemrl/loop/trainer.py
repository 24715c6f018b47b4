"""The training loop: set up the run, step the method, log, checkpoint, evaluate; resume,
stop cleanly on signals, stop on runs of non-finite updates, and run data-parallel under
`torchrun` (docs/resume_and_faults.md, docs/distributed.md)."""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from tandemrl.loop.callbacks import Callbacks
from tandemrl.loop.checkpoint import rng_state, save_checkpoint
from tandemrl.loop.completions import completion_rows
from tandemrl.loop.evaluate import evaluate_with_config, summary_line
from tandemrl.loop.logging import MetricsLogger, accelerator_memory, peak_rss_mb
from tandemrl.loop.prompts import PromptSampler, check_data
from tandemrl.loop.resume import (
    changes_on_resume,
    gathered_rng_states,
    resolve_resume,
    restore,
    trainer_state,
)
from tandemrl.loop.run_dir import RunDirLock, check_output_dir, prepare_fresh_run
from tandemrl.loop.sharded_checkpoint import save_sharded
from tandemrl.loop.trackers import open_trackers
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import LoadedModel, load_model
from tandemrl.rollout import HFEngine, PolicySampler
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.config import TrainConfig
from tandemrl.runtime.signals import StopSignals, step_scope
from tandemrl.runtime.update import NonFiniteWeights
from tandemrl.tasks import Task, get_task
from tandemrl.tasks.reward_sources import (
    bind_policy_rewards,
    bind_reward_device,
    pop_reward_metrics,
    reward_specs,
)
from tandemrl.tasks.rewards import reward_limits

EXIT_SIGTERM = 128 + 15


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite updates in a row); one line, says what to do."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log(message: str) -> None:
    if dist.is_main():
        print(f"[tandemrl] {message}", file=sys.stderr, flush=True)


def resume_command(run_dir: Path) -> str:
    return f"tandem train {run_dir / 'config.yaml'} resume=auto"


def train(
    cfg: TrainConfig,
    *,
    loaded: LoadedModel | None = None,
    task: Task | None = None,
    callbacks: Sequence[Any] = (),
) -> Trainer:
    """Run `cfg` to completion and return the finished `Trainer` (its `summary` is also in
    `<output_dir>/summary.json`, its `method.eval_policy()` the trained model). `loaded` and
    `task` replace the model and task the config names (Python API); `callbacks` see every
    step's metrics, each evaluation and the end (`loop.callbacks`)."""
    owns_group = not dist.is_distributed() and dist.init_from_env()
    try:
        check_output_dir(Path(cfg.output_dir))
        # One writer per run directory: rank 0 writes, so rank 0 holds the lock.
        lock = RunDirLock(Path(cfg.output_dir)) if dist.is_main() else contextlib.nullcontext()
        with lock, reward_limits(cfg.faults.reward_timeout_s, cfg.faults.reward_errors):
            trainer = Trainer(cfg, loaded=loaded, task=task, callbacks=callbacks)
            trainer.run()
            return trainer
    finally:
        if owns_group:
            dist.shutdown()


class Trainer:
    """One run of a config. Building it checks the data, loads the model, builds the method
    and restores a checkpoint when resuming (nothing slow happens before the input is known
    to be good); `run` trains, evaluates and writes the run directory."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        loaded: LoadedModel | None = None,
        task: Task | None = None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.cfg = cfg
        self.started = time.perf_counter()
        self.main = dist.is_main()
        self.run_dir = Path(cfg.output_dir)
        seed_everything(cfg.seed)
        self.callbacks = Callbacks(callbacks)
        self.task = task if task is not None else get_task(cfg.task, **cfg.task_options)
        self.task.rewards = reward_specs(cfg, self.task)  # `reward=`: the task's, or duality
        train_examples = list(self.task.train_examples())
        self.eval_examples = list(self.task.eval_examples())[: cfg.eval.size]
        for warning in check_data(cfg, train_examples, self.eval_examples):
            log(warning)
        self.resume_from = resolve_resume(cfg.resume, self.run_dir)
        self.changed = []
        if self.resume_from is not None:
            self.changed = changes_on_resume(self.resume_from, cfg.to_dict())
        if self.main and not self.continues_here():
            note = prepare_fresh_run(self.run_dir, cfg.overwrite, cfg.resume == "auto")
            if note:
                log(note)
        where = f" on {dist.world_size()} processes" if dist.is_distributed() else ""
        log(f"loading model {cfg.model}{where}")
        self.loaded = loaded if loaded is not None else load_model(cfg.model, cfg.load_dtype)
        self.sampler = PromptSampler(train_examples, cfg.seed)
        run = RunContext(cfg, self.loaded, self.task, draw_prompts=self.draw_prompts)
        self.method = get_method_class(cfg.method)(run)
        log(f"rollout engine: {self.method.rollout_engine.describe()}")
        # FSDP2: every rank holds a shard, so evaluation and checkpoints involve every rank.
        self.sharded = self.method.update_engine.sharded
        engine = HFEngine(self.loaded.tokenizer, cfg.eval.batch_size)
        bind_policy_rewards(self.task.rewards, PolicySampler(self.method.eval_policy, engine))
        bind_reward_device(self.task.rewards, self.method.device)
        self.start = 0
        if self.resume_from is not None:
            self.start = restore(self.resume_from, self.method, self.sampler)
            log(f"resumed from {self.resume_from} (step {self.start} of {cfg.steps})")
            if self.changed:
                log(f"resume: took from the command line: {'; '.join(self.changed)}")
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            (self.run_dir / "config.yaml").write_text(config_text)
        self.evals: dict[str, Any] = {}
        self.step_times: list[float] = []
        self.done, self.streak, self.last_ckpt = self.start, 0, self.resume_from
        self.silent_steps: list[int] = []  # steps in which every reward abstained

    def continues_here(self) -> bool:
        """Whether this run continues the run already in `output_dir` (resuming one of its
        own checkpoints): anything else must not write over an earlier run's files."""
        ckpt = self.resume_from
        return ckpt is not None and ckpt.resolve().parent.parent == self.run_dir.resolve()

    def draw_prompts(self) -> list:
        """A step's worth of training prompts, this rank's share (every rank draws alike, so
        the data position stays the same on all of them)."""
        return dist.shard(self.sampler.next(self.cfg.rollout.prompts_per_step))

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, save, evaluate and write the run directory; returns (and keeps as
        `self.summary`) what `summary.json` holds."""
        cfg = self.cfg
        self.logger = None
        if self.main:
            trackers = open_trackers(cfg, self.run_dir, self.start)
            self.logger = MetricsLogger(self.run_dir, trackers, after_step=self.start)
            for note in self.logger.notes:
                log(note)
        try:
            if cfg.eval.before and self.eval_examples and self.start == 0 and self.evaluates():
                self.evals["before"] = self.evaluate("before")
            self.train_steps(self.logger)
            if self.done > self.start or self.last_ckpt is None:
                ckpt = self.save(cfg.steps if self.done >= cfg.steps else self.done)
            else:
                ckpt = self.last_ckpt
            log(f"checkpoint saved to {ckpt}")
            if cfg.eval.after and self.eval_examples and self.evaluates():
                self.evals["after"] = self.evaluate("after")
            if not self.main:
                self.summary = {**self.header(), "rank": dist.rank()}
                return self.summary
            self.summary = self.write_summary(ckpt)
        finally:
            if self.logger:
                self.logger.close()
        self.callbacks.on_train_end(self.summary)
        self.check_silent_run()
        return self.summary

    def train_steps(self, logger: MetricsLogger | None) -> None:
        """Steps `start`..`steps`; Ctrl-C saves the last finished step and re-raises."""
        cfg = self.cfg
        bar = tqdm(
            range(self.start, cfg.steps),
            desc=f"{cfg.method} train",
            disable=not (cfg.log.progress and self.main),
        )
        signals = StopSignals()
        # What an abandoned step must not leave behind: its data position and RNGs.
        self.position, self.rng_before, step = self.sampler.position, rng_state(), self.start
        try:
            with signals:
                for step in bar:
                    metrics = self.one_step(step, logger)
                    bar.set_postfix(
                        reward=f"{metrics.get('reward/mean', math.nan):.3f}",
                        loss=f"{metrics.get('loss', math.nan):.4f}",
                    )
                    self.after_step(metrics, dist.any_rank(signals.stop_requested))
        except KeyboardInterrupt:
            self.save_on_interrupt(step)
            raise

    def one_step(self, step: int, logger: MetricsLogger | None) -> dict[str, Any]:
        """One method step, its metrics gathered over ranks and logged."""
        with step_scope():  # Ctrl-C after the update commits waits for the log
            t = time.perf_counter()
            self.position, self.rng_before = self.sampler.position, rng_state()
            try:
                metrics = self.method.step(step, self.draw_prompts())
            except NonFiniteWeights as err:
                where = f"; the last checkpoint, {self.last_ckpt}," if self.last_ckpt else ""
                raise TrainingError(
                    f"step {step + 1}: {err}, so the run stops here and saves nothing after it"
                    f"{where or '; no checkpoint was written yet'} has finite weights. Lower "
                    "optim.lr (or set optim.max_grad_norm), then resume"
                ) from None
            metrics.update(pop_reward_metrics(self.task.rewards))
            metrics["time/step_s"] = time.perf_counter() - t
            metrics["memory/peak_rss_mb"] = peak_rss_mb()
            metrics.update(accelerator_memory(self.method.device))
            metrics = dist.gather_metrics(metrics)
            self.check_reward_signal(step, metrics)
            skipped = any(k.endswith("update_skipped") and v for k, v in metrics.items())
            self.streak = self.streak + 1 if skipped else 0
            metrics["nonfinite/consecutive"] = float(self.streak)
            self.step_times.append(metrics["time/step_s"])
            if logger:
                logger.log(step + 1, metrics)
                every = self.cfg.log.completions_every
                if every and (step + 1) % every == 0 and self.method.last_state is not None:
                    rows = completion_rows(self.method.last_state, self.cfg.log.completions_rows)
                    logger.log_completions(step + 1, rows)
            self.callbacks.on_step(step + 1, metrics)
            self.done = step + 1
        return metrics

    def after_step(self, metrics: dict[str, Any], stop: bool) -> None:
        """The non-finite streak rule, periodic checkpoints, a SIGTERM stop, periodic eval."""
        cfg, done, streak = self.cfg, self.done, self.streak
        limit = cfg.faults.max_nonfinite_steps
        if streak:
            log(
                f"warning: step {done}: non-finite loss or gradient (loss="
                f"{metrics.get('loss', math.nan):.4g}, grad_norm="
                f"{metrics.get('grad_norm', math.nan):.4g}); update skipped "
                f"({streak} in a row; the run stops at faults.max_nonfinite_steps={limit})"
            )
        if streak and limit and streak >= limit:
            where = f"; the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else ""
            raise TrainingError(
                f"{streak} steps in a row ({done - streak + 1}-{done}) had a non-finite "
                f"loss or gradient, so no update was applied{where}. Lower optim.lr or "
                "optim.max_grad_norm, check the rewards and the loss settings, or raise "
                "faults.max_nonfinite_steps"
            )
        # No periodic checkpoint inside a non-finite streak, so keep-K cannot push out the
        # last good one (a stop still saves: skipped updates changed no weights).
        every = cfg.checkpoint.every
        periodic = every and done % every == 0 and not streak
        if done < cfg.steps and (stop or periodic):
            self.last_ckpt = self.save(done) or self.last_ckpt
        if stop and done < cfg.steps:
            log(f"stopped by SIGTERM after step {done}; checkpoint saved to {self.last_ckpt}")
            log(f"resume with: {resume_command(self.run_dir)}")
            raise SystemExit(EXIT_SIGTERM)
        if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.steps and self.evaluates():
            self.evals[f"step_{done}"] = self.evaluate(f"step {done}")

    def check_reward_signal(self, step: int, metrics: dict[str, Any]) -> None:
        """Warn about a step in which every reward abstained (no learning signal)."""
        mean = metrics.get("reward/mean")
        if isinstance(mean, float) and math.isnan(mean):
            self.silent_steps.append(step + 1)
            log(
                f"warning: step {step + 1}: every reward abstained (the reward functions "
                "returned None/NaN or raised on every row): no learning signal"
            )

    def check_silent_run(self) -> None:
        """A run in which most steps had no reward at all did not do what was asked."""
        ran = self.done - self.start
        limit = self.cfg.faults.max_silent_frac
        if ran and len(self.silent_steps) > limit * ran:
            raise TrainingError(
                f"{len(self.silent_steps)} of the {ran} steps run had no reward at all (every "
                f"reward abstained: steps {self.silent_steps[:8]}"
                f"{' ...' if len(self.silent_steps) > 8 else ''}), more than "
                f"faults.max_silent_frac={limit}: check the reward functions (their warnings "
                "above name the failing rows); the run directory is complete"
            )

    # -- checkpoints and evaluation ---------------------------------------------------------
    def evaluates(self) -> bool:
        """Whether this rank takes part in evaluation: rank 0, or every rank of a sharded
        model (each forward needs all the shards; rank 0 reports)."""
        return self.main or self.sharded

    def save(self, step: int) -> Path | None:
        """A checkpoint of the current state (collective parts on every rank; rank 0 writes,
        or every rank its shards under FSDP2). A write that fails (a full disk) stops the run
        with one line; the checkpoints already written stay valid."""
        state = trainer_state(self.method, self.sampler.position, gathered_rng_states())
        if not self.main and not self.sharded:
            return None
        keep, config = self.cfg.checkpoint.keep, self.cfg.to_dict()
        try:
            if self.sharded:
                optimizers = self.method.update_engine.optimizers
                path = save_sharded(
                    self.run_dir, step, self.method.policy, optimizers, state, keep, config
                )
                return path if self.main else None
            policy = self.method.eval_policy()
            return save_checkpoint(self.run_dir, step, policy, state, keep, config)
        except OSError as err:
            last = (
                f"the last complete checkpoint is {self.last_ckpt}"
                if self.last_ckpt
                else "no checkpoint was written"
            )
            raise TrainingError(
                f"could not write the checkpoint of step {step} to {self.run_dir}/checkpoints: "
                f"{err.strerror or err}; {last}. Free space, then resume with: "
                f"{resume_command(self.run_dir)}"
            ) from None

    def save_on_interrupt(self, step: int) -> None:
        """After Ctrl-C: the state as of the last finished step, written by rank 0 alone (no
        collectives: the other ranks may be anywhere). The step in flight is abandoned, not
        half-applied (methods commit their updates in `signals.commit`)."""
        done = self.done
        if done <= self.start or not self.main:
            return
        if self.sharded:  # the shards are on every rank: saving needs them all
            log(
                f"interrupted after step {done}; a sharded run cannot save on Ctrl-C (stop "
                "it with SIGTERM to save); the last checkpoint is "
                f"{self.last_ckpt or 'none'}"
            )
            return
        in_flight = done == step  # interrupted in step `done`, after `done` steps finished
        rngs = [self.rng_before] if in_flight else [rng_state()]
        position = self.position if in_flight else self.sampler.position
        state = trainer_state(self.method, position, rngs)
        policy = self.method.eval_policy()
        keep, config = self.cfg.checkpoint.keep, self.cfg.to_dict()
        ckpt = save_checkpoint(self.run_dir, done, policy, state, keep, config)
        log(f"interrupted after step {done}; checkpoint saved to {ckpt}")
        log(f"resume with: {resume_command(self.run_dir)}")
        log(f"evaluate it with: tandem eval checkpoint={ckpt}")

    def evaluate(self, tag: str) -> dict[str, Any]:
        t = time.perf_counter()
        with self.method.compute.autocast():
            result = evaluate_with_config(
                self.method.eval_policy(),
                self.loaded.tokenizer,
                self.task,
                self.eval_examples,
                self.cfg,
                f"eval {tag}",
            )
        result["time_s"] = time.perf_counter() - t
        log(f"held-out {tag}: {summary_line(result)}")
        if self.logger:
            self.logger.log_eval(self.done, tag, result)
        self.callbacks.on_evaluate(tag, result)
        return result

    # -- the run directory's summary --------------------------------------------------------
    def header(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"method": cfg.method, "model": cfg.model, "task": cfg.task, "steps": cfg.steps}

    def write_summary(self, ckpt: Path | None) -> dict[str, Any]:
        """`summary.json` and `eval.json`, and the before -> after line."""
        cfg, evals = self.cfg, self.evals
        summary = {
            **self.header(),
            "median_step_s": float(np.median(self.step_times)) if self.step_times else None,
            "peak_rss_mb": peak_rss_mb(),
            "wall_time_s": time.perf_counter() - self.started,
            "checkpoint": str(ckpt),
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "world_size": dist.world_size(),
        }
        for tag, result in evals.items():
            summary[f"eval/{tag}"] = {k: v for k, v in result.items() if k != "examples"}
        (self.run_dir / "eval.json").write_text(json.dumps(evals, indent=2))
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_examples(evals.get("after") or evals.get("before"), cfg.eval.show_examples)
        if "before" in evals and "after" in evals:
            before, after = evals["before"], evals["after"]
            sampled = ""
            if "sampled_accuracy" in before and "sampled_accuracy" in after:
                sampled = (
                    f", sampled (T={cfg.eval.pass_temperature:g}) "
                    f"{before['sampled_accuracy']:.3f} -> {after['sampled_accuracy']:.3f}"
                )
            log(
                f"held-out accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
                f"greedy{sampled} over {cfg.steps} steps (median step "
                f"{summary['median_step_s'] or 0:.1f} s, peak RSS {summary['peak_rss_mb']:.0f} "
                f"MB, {summary['wall_time_s'] / 60:.1f} min in all); run dir {self.run_dir}"
            )
        return summary


def _print_examples(result: dict[str, Any] | None, n: int) -> None:
    if not result or n <= 0:
        return
    for rec in result["examples"][:n]:
        mark = "correct" if rec.get("correct") else "wrong"
        log(f"[{mark}] {rec['prompt'][:80]!r} -> {rec['completion'][:120]!r}")
