"""The Python API: `tandemrl.train(...)`, in the shape TRL users know. `tandem train` is a thin
layer over it.

    from datasets import Dataset
    import tandemrl

    def short(prompts, completions, **columns):          # TRL's reward signature
        return [1.0 if len(c) < 40 else 0.0 for c in completions]

    result = tandemrl.train(
        model="smollm2-135m",                              # a name, a path, or a PreTrainedModel
        dataset=Dataset.from_dict({"prompt": ["Say hi.", "Say bye."]}),
        reward_funcs=[short],                              # callables, "module:function", "rm:<model>"
        method="grpo", steps=10, rollout={"group_size": 4}, output_dir="runs/api",
    )
    result.model, result.summary["eval/after"]

Everything the config holds can be given as keywords (`steps=10`, `grpo={"kl_coef": 0.05}`),
as a `TrainConfig`, a YAML path or a mapping (`config=`), or as CLI-style `overrides=`. Objects
that a config file cannot hold (a model, a dataset, Python callables, callbacks) go beside it;
`config.yaml` in the run directory records their names, so resuming such a run means passing
them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tandemrl.errors import ConfigError
from tandemrl.loop.config import config_from_dict, read_config_file
from tandemrl.loop.trainer import train as run_training
from tandemrl.models import LoadedModel
from tandemrl.runtime.config import TrainConfig
from tandemrl.runtime.config_parse import deep_merge, parse_overrides
from tandemrl.runtime.records import read_metrics
from tandemrl.tasks import Task, get_task
from tandemrl.tasks.base import RewardSpec
from tandemrl.tasks.dataset import DatasetTask, reward_specs_from


@dataclass
class TrainResult:
    """What a finished run gives back."""

    model: nn.Module  # the trained policy (a peft model with its adapter, or the full model)
    tokenizer: Any
    summary: dict[str, Any]  # as summary.json: step time, memory, eval before/after, ...
    metrics: list[dict[str, Any]]  # metrics.jsonl, one record a step
    run_dir: Path
    config: TrainConfig


def train(
    config: TrainConfig | str | Path | dict[str, Any] | None = None,
    *,
    model: str | nn.Module | None = None,
    tokenizer: Any = None,
    peft_config: Any = None,
    dataset: Any = None,
    eval_dataset: Any = None,
    reward_funcs: Any = None,
    reward_weights: Sequence[float] | None = None,
    callbacks: Sequence[Any] = (),
    overrides: Sequence[str] = (),
    **options: Any,
) -> TrainResult:
    """Train and return the model and the run's numbers (see the module docstring).

    config       a TrainConfig, a YAML path or a mapping; `options` (`steps=10`,
                 `rollout={"group_size": 8}`) and `overrides` (`["grpo.kl_coef=0.05"]`)
                 apply on top, in that order.
    model        a builtin name, a local folder, a hub id, or a loaded `PreTrainedModel`
                 (then `tokenizer` too, or one is loaded from its `name_or_path`).
    peft_config  a `peft.LoraConfig`: its r, alpha, dropout and target modules become `lora.*`.
    dataset      a `datasets.Dataset`, a list of dicts, a data file, a dataset folder or a
                 hub id, with a `prompt` column (`task_options.prompt_column`); every other
                 column reaches the rewards. `eval_dataset` likewise (else rows are held out).
    reward_funcs callables `f(prompts, completions, **columns) -> list[float | None]`,
                 `"module:function"` paths or `"rm:<model>"` reward models; they replace the
                 task's own rewards. `reward_weights` weighs them (default 1 each).
    callbacks    objects with `on_step(step, metrics)` / `on_evaluate(tag, result)` /
                 `on_train_end(summary)`, or functions called as `on_step`.
    """
    data = _config_data(config)
    data = deep_merge(data, dict(options))
    data = deep_merge(data, parse_overrides(list(overrides)))
    loaded = None
    if model is not None and not isinstance(model, str):
        loaded = _loaded(model, tokenizer)
        data["model"] = loaded.name
    elif model is not None:
        data["model"] = model
    if peft_config is not None:
        data["lora"] = {**data.get("lora", {}), **_lora_from_peft(peft_config)}
    specs = _rewards(reward_funcs, reward_weights)
    if dataset is not None:
        data["task"] = "dataset"
        data["task_options"] = {
            **data.get("task_options", {}),
            "path": dataset if isinstance(dataset, str) else "<in-memory dataset>",
            "rewards": [s.name for s in specs]
            if specs
            else data.get("task_options", {}).get("rewards"),
        }
    cfg = config_from_dict(data, check_model=loaded is None)
    task = _task(cfg, dataset, eval_dataset, specs)
    trainer = run_training(cfg, loaded=loaded, task=task, callbacks=callbacks)
    run_dir = Path(cfg.output_dir)
    metrics_file = run_dir / "metrics.jsonl"
    return TrainResult(
        model=trainer.method.eval_policy(),
        tokenizer=trainer.loaded.tokenizer,
        summary=trainer.summary,
        metrics=read_metrics(metrics_file) if metrics_file.is_file() else [],
        run_dir=run_dir,
        config=cfg,
    )


def _config_data(config: TrainConfig | str | Path | dict[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, TrainConfig):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, str | Path):
        return read_config_file(config)
    raise ConfigError(f"config: expected a TrainConfig, a YAML path or a mapping, got {config!r}")


def _loaded(model: nn.Module, tokenizer: Any) -> LoadedModel:
    if hasattr(model, "peft_config"):
        raise ConfigError(
            "model: pass the base model and a peft_config; tandemrl adds (and, for the "
            "dual-policy method, duplicates) the adapters itself"
        )
    name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model.eval(), tokenizer, name, pretrained=True)


def _lora_from_peft(peft_config: Any) -> dict[str, Any]:
    targets = peft_config.target_modules
    return {
        "enabled": True,
        "r": int(peft_config.r),
        "alpha": peft_config.lora_alpha,
        "dropout": float(peft_config.lora_dropout),
        "target_modules": sorted(targets)
        if isinstance(targets, set | list)
        else (targets or "all-linear"),
    }


def _rewards(funcs: Any, weights: Sequence[float] | None) -> list[RewardSpec]:
    if funcs is None:
        return []
    funcs = list(funcs) if isinstance(funcs, list | tuple) else [funcs]
    if weights is not None and len(weights) != len(funcs):
        raise ConfigError(f"reward_weights has {len(weights)} entries for {len(funcs)} rewards")
    specs = reward_specs_from(funcs)
    if weights is not None:
        specs = [
            dataclasses.replace(s, weight=float(w)) for s, w in zip(specs, weights, strict=True)
        ]
    return specs


def _task(
    cfg: TrainConfig, dataset: Any, eval_dataset: Any, specs: list[RewardSpec]
) -> Task | None:
    """The task object when the API was given one's pieces; None: the config's own task."""
    if dataset is not None:
        options = {k: v for k, v in cfg.task_options.items() if k not in ("path", "rewards")}
        if eval_dataset is not None:
            options["eval_path"] = eval_dataset
        return DatasetTask(dataset, specs or cfg.task_options.get("rewards"), **options)
    if specs:
        task = get_task(cfg.task, **cfg.task_options)
        task.rewards = specs
        return task
    return None


__all__ = ["TrainResult", "train"]
