"""Held-out accuracy and diversity of several policies, measured the same way for each.

    flock /tmp/tandem-heavy.lock .venv/bin/python scripts/eval_diversity.py \\
        base=runs/cmp/grpo/checkpoints/step-000020:base \\
        grpo=runs/cmp/grpo/checkpoints/step-000020 \\
        explore=runs/cmp/dupo/checkpoints/step-000020:explore \\
        exploit=runs/cmp/dupo/checkpoints/step-000020:exploit [--k 8]

Each argument is NAME=CHECKPOINT[:POLICY] (POLICY "base" = the checkpoint's base model with no
adapter). The run's config (model, task, eval size, max tokens) comes from the checkpoint's
run directory. For every policy: greedy accuracy, and over k samples at temperature 1 per
held-out prompt: sampled accuracy, pass@k, distinct answers per prompt, distinct-1/2 within a
prompt (tandemrl.algos.diversity). Prints a table and writes JSON next to the first run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tandemrl.algos import distinct_answers, group_distinct_n
from tandemrl.loop import load_config
from tandemrl.loop.checkpoint import load_policy_weights
from tandemrl.models import load_model
from tandemrl.rollout import SamplingConfig, generate
from tandemrl.tasks import get_task
from tandemrl.tasks.extraction import answer_key


def measure(spec: str, k: int, seed: int) -> dict:
    ckpt_str, _, policy = spec.partition(":")
    ckpt = Path(ckpt_str)
    cfg = load_config(ckpt.parent.parent / "config.yaml", [])
    task = get_task(cfg.task, **cfg.task_options)
    loaded = load_model(cfg.model, cfg.dtype)
    model = loaded.model
    if policy != "base":
        model = load_policy_weights(model, ckpt, policy or None)
    model.eval()
    examples = list(task.eval_examples())[: cfg.eval.size]
    prompts = [ex.messages for ex in examples]
    tokens = cfg.rollout.max_new_tokens
    with torch.no_grad():
        greedy = generate(model, loaded.tokenizer, prompts, 1, SamplingConfig(tokens, 0.0))
        sampled = generate(model, loaded.tokenizer, prompts, k, SamplingConfig(tokens, 1.0), seed)
    pairs_g = zip(examples, greedy.completions, strict=True)
    correct_g = [task.score(ex, c)["correct"] for ex, c in pairs_g]
    pairs_s = zip(sampled.example_index, sampled.completions, strict=True)
    correct_s = [task.score(examples[i], c)["correct"] for i, c in pairs_s]
    hits = [any(correct_s[i * k : (i + 1) * k]) for i in range(len(examples))]
    seqs = sampled.response_token_lists()
    return {
        "n": len(examples),
        "k": k,
        "accuracy": sum(correct_g) / len(examples),
        "sampled_accuracy": sum(correct_s) / len(correct_s),
        f"pass@{k}": sum(hits) / len(examples),
        "distinct_answers": distinct_answers(
            [answer_key(c) for c in sampled.completions], sampled.group_ids
        ),
        "distinct_1": group_distinct_n(seqs, sampled.group_ids, 1),
        "distinct_2": group_distinct_n(seqs, sampled.group_ids, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policies", nargs="+", help="NAME=CHECKPOINT[:POLICY]")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    ns = parser.parse_args()
    results = {}
    for arg in ns.policies:
        name, _, spec = arg.partition("=")
        results[name] = measure(spec, ns.k, ns.seed)
        print(f"[diversity] {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    k = ns.k
    print(f"{'policy':10} {'greedy':>7} {'sampled':>8} {f'pass@{k}':>7} {'answers':>8} "
          f"{'dist-1':>7} {'dist-2':>7}")  # fmt: skip
    for name, r in results.items():
        print(f"{name:10} {r['accuracy']:7.3f} {r['sampled_accuracy']:8.3f} {r[f'pass@{k}']:7.3f} "
              f"{r['distinct_answers']:8.2f} {r['distinct_1']:7.3f} {r['distinct_2']:7.3f}")  # fmt: skip
    first = Path(ns.policies[0].partition("=")[2].partition(":")[0])
    out = Path(ns.json) if ns.json else first.parent.parent / "diversity.json"
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
