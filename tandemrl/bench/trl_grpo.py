"""The TRL side of `tandem bench speed`: TRL's `GRPOTrainer` on tandemrl's GRPO settings.

    python -m tandemrl.bench.trl_grpo --json OUT.json [--model smollm2-135m] [--task arith2]
        [--config lora|full] [--steps 4] [--prompts 8] [--group 4] [--tokens 32] ...

Runs in its own process (`tandem bench speed` starts it), so its peak RSS is its own. It uses
the same model object (tandemrl's loader), the same prompts (the task's training split as chat
messages: TRL applies the same chat template), the same reward functions (the task's, with the
task's weights) and the same peft LoRA config as tandemrl (`lora_peft_config`), and sets TRL
to tandemrl's defaults: fp32 (TRL defaults to bf16), no gradient checkpointing (TRL defaults
to on), beta=0 (no reference model), loss `dapo` (token mean over the batch = tandemrl's
`token-mean`), group std scaling, clip 0.2, AdamW betas (0.9, 0.99), no weight decay, grad
norm 1.0, constant lr, microbatches of 8 sequences with gradients accumulated to one optimizer
step per generation batch of prompts x group sequences.

Timing: each step is timed from TRL's `on_step_begin` to `on_step_end` callbacks (TRL's own
logging after the step is outside). The breakdown comes from TRL's own profiling contexts
(`trl.extras.profiling`), which time `transformers.generate`, `_calculate_rewards` and
`_prepare_inputs` (generation, rewards, decoding, advantages, any old/reference log-probs)
but report only to W&B/MLflow/Trackio: their `_log_metrics` is redirected into this process.
generate = generate; reward = rewards; logprob/prep = _prepare_inputs - generate - rewards;
update = step - _prepare_inputs (forward, backward, clipping, optimizer step).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

INSTALL_HINT = 'TRL is not installed: pip install "tandemrl[bench]" (or "trl==1.16.*")'


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def _task_reward(spec: Any, examples: list) -> Any:
    """A TRL reward function for one of the task's rewards: TRL passes the dataset's `row`
    column; the task's reward gets the example's own columns, as tandemrl passes them."""

    def reward(prompts: list, completions: list, row: list[int], **_: Any) -> list:
        rows = [examples[i] for i in row]
        names = sorted({k for ex in rows for k in ex.columns})
        columns = {k: [ex.columns.get(k) for ex in rows] for k in names}
        return spec.fn(prompts, completions, **columns)

    reward.__name__ = spec.name
    return reward


def run(ns: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from tandemrl.loop.logging import peak_rss_mb
    from tandemrl.models import load_model
    from tandemrl.models.adapters import LoraConfig, lora_peft_config
    from tandemrl.tasks import get_task

    started = time.perf_counter()
    torch.manual_seed(ns.seed)
    loaded = load_model(ns.model, "float32")
    task = get_task(ns.task)
    examples = list(task.train_examples())
    dataset = Dataset.from_dict(
        {"prompt": [ex.messages for ex in examples], "row": list(range(len(examples)))}
    )
    peft_config = None
    if ns.config == "lora":
        peft_config = lora_peft_config(loaded.model, LoraConfig(r=ns.lora_r, alpha=2 * ns.lora_r))
    rows = ns.prompts * ns.group
    if rows % ns.micro_batch:
        raise SystemExit(f"prompts x group = {rows} is not a multiple of --micro-batch")
    accumulation = rows // ns.micro_batch

    timings: dict[str, float] = defaultdict(float)

    def sink(self: Any, duration: float) -> None:  # replaces the W&B/MLflow reporting
        timings[self.name.split(".", 1)[-1]] += duration

    profiling.ProfilingContext._log_metrics = sink
    records: list[dict[str, Any]] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timings.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.t0
            # HF generate, or TRL's colocated vLLM (--vllm: use_vllm, vllm_mode=colocate)
            gen = timings.get("transformers.generate", 0.0) + timings.get("vLLM.generate", 0.0)
            rew = timings.get("_calculate_rewards", 0.0)
            prep = timings.get("_prepare_inputs", 0.0)
            records.append(
                {
                    "step": state.global_step,
                    "step_s": step_s,
                    "generate_s": gen,
                    "reward_s": rew,
                    "logprob_s": prep - gen - rew,
                    "update_s": step_s - prep,
                    "peak_rss_mb": peak_rss_mb(),
                    "trl_profiling": dict(timings),
                }
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if records and logs and "completions/mean_length" in logs:
                records[-1]["completion_tokens"] = logs["completions/mean_length"] * rows
                records[-1]["reward_mean"] = logs.get("reward")

    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            max_steps=ns.steps,
            per_device_train_batch_size=ns.micro_batch,
            gradient_accumulation_steps=accumulation,
            steps_per_generation=accumulation,
            num_generations=ns.group,
            max_completion_length=ns.tokens,
            temperature=ns.temperature,
            top_p=1.0,
            top_k=0,
            learning_rate=ns.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.99,
            max_grad_norm=1.0,
            optim="adamw_torch",
            beta=0.0,
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            reward_weights=[spec.weight for spec in task.rewards],
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            log_completions=False,
            dataloader_num_workers=0,
            seed=ns.seed,
            **vllm_settings(ns),
        )
        trainer = GRPOTrainer(
            model=loaded.model,
            reward_funcs=[_task_reward(spec, examples) for spec in task.rewards],
            args=args,
            train_dataset=dataset,
            processing_class=loaded.tokenizer,
            peft_config=peft_config,
            callbacks=[StepClock()],
        )
        model = trainer.model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trainer.train()
    return {
        "framework": "trl",
        "config": ns.config,
        "per_step": records,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": time.perf_counter() - started,
        "trainable_params": trainable,
        "timing_source": "step: TRL on_step_begin..on_step_end callbacks; phases: TRL's "
        "profiling contexts (generate, rewards, _prepare_inputs); update = step - _prepare_inputs",
    }


def vllm_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """TRL's own colocated vLLM engine (`--vllm`), with the memory share tandemrl's engine
    gets on the CPU (vLLM reads the GPU share as a share of RAM there)."""
    if not ns.vllm:
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="where to write the run's result")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arith2")
    p.add_argument("--config", choices=("lora", "full"), default="lora")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm", action="store_true", help="generate with TRL's colocated vLLM")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if not trl_available():
        print(f"tandem bench: {INSTALL_HINT}", file=sys.stderr)
        return 2
    result = run(ns)
    Path(ns.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
