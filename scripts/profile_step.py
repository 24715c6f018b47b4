"""Where a GRPO step's time goes: `torch.profiler` over one rollout and one update of the
`tandem bench speed` LoRA configuration (SmolLM2-135M, LoRA r16 all-linear, 8 prompts x 4
samples, 32 new tokens, T = 1, microbatches of 8), after one warm-up of each.

    python scripts/profile_step.py [--rows 25]

Prints each phase's wall time and its top operators by self CPU time (the profiler adds
overhead: compare shares, not absolute times, with `tandem bench speed`).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tandemrl.models import LoraConfig, apply_lora, load_model
from tandemrl.rollout import SamplingConfig, generate, score_tokens
from tandemrl.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25, help="operators shown per phase")
    args = parser.parse_args()
    loaded = load_model("smollm2-135m")
    model = apply_lora(loaded.model, LoraConfig(r=16, alpha=32, target_modules="all-linear"))
    examples = list(get_task("arith2").train_examples())[:8]
    prompts = [e.messages for e in examples]
    sampling = SamplingConfig(32, temperature=1.0)

    def rollout(seed: int):
        return generate(model, loaded.tokenizer, prompts, 4, sampling, seed=seed)

    def update(batch) -> None:
        model.train()
        for micro in batch.microbatches(8):
            scores = score_tokens(model, micro, 1.0, with_entropy=True)
            (scores.logp * micro.response_mask).sum().backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    batch = rollout(0)
    update(batch)
    for name, run in (("rollout", lambda: rollout(1)), ("update", lambda: update(batch))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
        tokens = int(batch.response_mask.sum())
        print(f"\n== {name}: {wall:.2f} s under the profiler ({tokens} completion tokens)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
