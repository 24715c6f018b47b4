"""`tandem eval`: evaluate a base model or a checkpoint on a task's held-out split;
`tandem export`: write a checkpoint's policy as a Hugging Face adapter or merged model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tandemrl.errors import ConfigError
from tandemrl.loop.checkpoint import load_policy_weights, policy_adapters, verify_checkpoint
from tandemrl.loop.evaluate import evaluate_with_config, summary_line
from tandemrl.loop.trainer import log
from tandemrl.models import load_model
from tandemrl.runtime.config import TrainConfig
from tandemrl.tasks import get_task


def resolve_policy(cfg: TrainConfig, checkpoint: str | None, policy: str | None) -> str | None:
    """Which adapter of `checkpoint` to use: `policy`, else the method's served one (DuPO:
    exploit). None for single-policy checkpoints; a ConfigError when the choice is invalid."""
    if not checkpoint:
        if policy:
            raise ConfigError("policy= selects an adapter of a checkpoint: add checkpoint=DIR")
        return None
    path = Path(checkpoint)
    if not (path / "policy").is_dir():
        raise ConfigError(
            f"checkpoint {checkpoint!r} has no policy/ folder (expected <run>/checkpoints/step-N)"
        )
    verify_checkpoint(path)  # a truncated or corrupt file: one line, as resume says it
    names = policy_adapters(path)
    if not names:
        if policy:
            raise ConfigError(f"checkpoint {checkpoint!r} holds one policy; drop policy={policy}")
        return None
    if policy is None:
        from tandemrl.methods import get_method_class

        policy = getattr(get_method_class(cfg.method), "default_policy", None)
    if policy not in names:
        raise ConfigError(f"checkpoint {checkpoint!r} has policies {names}; got policy={policy}")
    return policy


def check_mode(cfg: TrainConfig, mode: str | None) -> None:
    """`mode=` names a prompt mode of the method (Policy Split: normal, high_entropy); methods
    with modes declare `eval_modes` and `eval_prompt_transform(config, tokenizer, mode)`."""
    if mode is None:
        return
    from tandemrl.methods import get_method_class

    modes = getattr(get_method_class(cfg.method), "eval_modes", ())
    if not modes:
        raise ConfigError(
            f"mode= selects a prompt mode; method {cfg.method} has none (policy_split has "
            "normal and high_entropy: add method=policy_split or a policy_split checkpoint)"
        )
    if mode not in modes:
        raise ConfigError(f"method {cfg.method} has modes {', '.join(modes)}; got mode={mode}")


def run_eval(
    cfg: TrainConfig,
    checkpoint: str | None = None,
    policy: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    task = get_task(cfg.task, **cfg.task_options)
    policy = resolve_policy(cfg, checkpoint, policy)
    check_mode(cfg, mode)
    compute = cfg.compute()
    loaded = load_model(cfg.model, cfg.load_dtype)
    model = loaded.model
    if checkpoint:
        model = load_policy_weights(model, Path(checkpoint), policy)
    model = model.to(compute.device)
    examples = list(task.eval_examples())[: cfg.eval.size]
    if mode is not None:
        from tandemrl.methods import get_method_class

        method_cls = get_method_class(cfg.method)
        transform = method_cls.eval_prompt_transform(cfg, loaded.tokenizer, mode)
        examples = [dataclasses.replace(ex, messages=transform(ex.messages)) for ex in examples]
    with compute.autocast():
        result = evaluate_with_config(model, loaded.tokenizer, task, examples, cfg)
    result["checkpoint"] = checkpoint
    result["policy"] = policy
    result["mode"] = mode
    result["model"] = cfg.model
    log(f"held-out: {summary_line(result)}")
    for rec in result["examples"][: cfg.eval.show_examples]:
        log(
            f"[{'correct' if rec.get('correct') else 'wrong'}] {rec['prompt'][:80]!r} -> {rec['completion'][:120]!r}"
        )
    out_dir = Path(checkpoint) if checkpoint else Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "-".join(["eval", *(x for x in (policy, mode) if x)]) + ".json"
    (out_dir / name).write_text(json.dumps(result, indent=2))
    return result


def run_export(
    cfg: TrainConfig, checkpoint: str, out: str, policy: str | None = None, merged: bool = False
) -> Path:
    """Write `checkpoint`'s policy (one adapter of a multi-adapter one) to `out` in Hugging
    Face format with the tokenizer: the peft adapter (load with PeftModel.from_pretrained on
    the base), or with `merged` the base with the adapter folded in (AutoModelForCausalLM)."""
    policy = resolve_policy(cfg, checkpoint, policy)
    loaded = load_model(cfg.model, cfg.load_dtype)
    model = load_policy_weights(loaded.model, Path(checkpoint), policy)
    if merged and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    loaded.tokenizer.save_pretrained(target)
    kind = "merged model" if merged else "adapter" if hasattr(model, "peft_config") else "model"
    log(f"exported {kind} of {checkpoint} (policy {policy or 'the only one'}) to {target}")
    return target
