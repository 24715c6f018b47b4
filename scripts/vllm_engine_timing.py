"""Timings of the vLLM rollout engine's own settings on this machine (docs/vllm.md): engine
start and generation with and without compilation (`vllm.enforce_eager`), and two LoRA
adapters served merged or as vLLM LoRA adapters (`vllm.lora`).

    flock /tmp/tandem-heavy.lock python scripts/vllm_engine_timing.py [--out DIR]

Each setting runs in its own process (a fresh engine start). Generation: 8 arith2 prompts x 4
samples x 32 new tokens at T=1, 5 calls with new prompts each; the first call is warm-up and
the median of the other 4 is reported. Writes vllm-engine-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "eager": {"enforce_eager": True, "adapters": False, "lora": "merge"},
    "compiled": {"enforce_eager": False, "adapters": False, "lora": "merge"},
    "two-adapters-merge": {"enforce_eager": True, "adapters": True, "lora": "merge"},
    "two-adapters-adapter": {"enforce_eager": True, "adapters": True, "lora": "adapter"},
}


def measure(name: str) -> dict:
    import torch

    from tandemrl.models import load_model
    from tandemrl.models.adapters import LoraConfig, adapter_parameters, apply_lora_adapters
    from tandemrl.rollout import SampleRequest, SamplingConfig
    from tandemrl.rollout.vllm_engine import VllmEngine, VllmSettings
    from tandemrl.tasks import get_task

    setting = SETTINGS[name]
    loaded = load_model("smollm2-135m")
    model, names = loaded.model, None
    if setting["adapters"]:
        torch.manual_seed(0)
        model = apply_lora_adapters(model, LoraConfig(), ["explore", "exploit"])
        with torch.no_grad():  # trained-looking adapters: B != 0
            for adapter in ("explore", "exploit"):
                for key, p in adapter_parameters(model, adapter).items():
                    if "lora_B" in key:
                        p.normal_(0, 0.02)
        names = ["explore", "explore", "exploit", "exploit"] * 8
    engine = VllmEngine(
        loaded.tokenizer,
        VllmSettings(enforce_eager=setting["enforce_eager"], lora=setting["lora"]),
    )
    t = time.perf_counter()
    engine.start(model)
    start_s = time.perf_counter() - t
    examples = list(get_task("arith2").train_examples())
    sampling = SamplingConfig(max_new_tokens=32, temperature=1.0)
    times, tokens = [], []
    for i in range(5):
        prompts = [ex.messages for ex in examples[8 * i : 8 * i + 8]]
        t = time.perf_counter()
        batch = engine.generate(model, SampleRequest(prompts, 4, sampling, i, names))
        times.append(time.perf_counter() - t)
        tokens.append(int(batch.response_mask.sum()))
    return {
        "setting": name,
        **setting,
        "start_s": start_s,
        "generate_s": times,
        "generate_median_s": statistics.median(times[1:]),
        "tokens": tokens,
        "pushes": engine.pushes,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--only", help="one setting, in this process (used by the runner itself)")
    ns = p.parse_args()
    if ns.only:
        print(json.dumps(measure(ns.only)))
        return 0
    rows = []
    for name in SETTINGS:
        proc = subprocess.run(
            [sys.executable, __file__, "--only", name], capture_output=True, text=True
        )
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['generate_median_s']:.2f} s", file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    date = dt.datetime.now(dt.UTC)
    result = {"command": "python scripts/vllm_engine_timing.py", "date": date.isoformat(),
              "commit": commit.stdout.strip(), "rows": rows}  # fmt: skip
    out = Path(ns.out) / f"vllm-engine-{date:%Y-%m-%d}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# vLLM engine settings, {date:%Y-%m-%d}", "",
             f"`flock /tmp/tandem-heavy.lock {result['command']}` at {result['commit']}. "
             "8 prompts x 4 samples x 32 tokens, T=1; median of calls 2-5.", "",
             "| setting | engine start s | generate s (median) | tokens per call |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['setting']} | {r['start_s']:.1f} | {r['generate_median_s']:.2f} | "
                     f"{statistics.median(r['tokens']):.0f} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
