"""`tandem eval`: evaluate a base model or a checkpoint on a task's held-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tandemrl.models import load_model
from tandemrl.tasks import get_task
from tandemrl.train.checkpoint import load_policy_weights
from tandemrl.train.config import TrainConfig
from tandemrl.train.config_parse import ConfigError
from tandemrl.train.evaluate import evaluate, summary_line
from tandemrl.train.trainer import log


def run_eval(cfg: TrainConfig, checkpoint: str | None = None) -> dict[str, Any]:
    task = get_task(cfg.task, **cfg.task_options)
    loaded = load_model(cfg.model, cfg.dtype)
    model = loaded.model
    if checkpoint:
        path = Path(checkpoint)
        if not (path / "policy").is_dir():
            raise ConfigError(
                f"checkpoint {checkpoint!r} has no policy/ folder (expected <run>/checkpoints/step-N)"
            )
        model = load_policy_weights(model, path)
    examples = list(task.eval_examples())[: cfg.eval.size]
    result = evaluate(
        model,
        loaded.tokenizer,
        task,
        examples,
        max_new_tokens=cfg.rollout.max_new_tokens,
        pass_k=cfg.eval.pass_k,
        pass_temperature=cfg.eval.pass_temperature,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        progress=cfg.log.progress,
    )
    result["checkpoint"] = checkpoint
    result["model"] = cfg.model
    log(f"held-out: {summary_line(result)}")
    for rec in result["examples"][: cfg.eval.show_examples]:
        log(
            f"[{'correct' if rec.get('correct') else 'wrong'}] {rec['prompt'][:80]!r} -> {rec['completion'][:120]!r}"
        )
    out_dir = Path(checkpoint) if checkpoint else Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result
