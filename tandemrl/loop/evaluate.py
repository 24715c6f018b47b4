"""Held-out evaluation: greedy accuracy and pass@k, with a few example completions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from tandemrl.algos import pass_at_k
from tandemrl.loop.diversity import sample_diversity
from tandemrl.rollout import SamplingConfig, generate
from tandemrl.runtime.config import TrainConfig
from tandemrl.tasks import Example, Task


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    pass_k: int = 4,
    pass_temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Score `model` on `examples`.

    accuracy: mean `correct` of one greedy completion per example.
    pass@k: share of examples with at least one correct completion among k samples at
    `pass_temperature`; from the same k samples, pass@j for j = 2, 4, 8, ... < k with the
    unbiased estimator 1 - C(k - c, j) / C(k, j) (`algos.diversity.pass_at_k`; c correct of k).
    Each example's record keeps its greedy scores and `sampled_correct` (c).
    sampled_accuracy: mean `correct` over those k samples (an estimate of pass@1 when sampling).
    diversity/*: distinct answers, distinct-1/2 and self-BLEU of those k samples per example
    (tandemrl.loop.diversity).
    """
    examples = list(examples)
    greedy = _complete(
        model,
        tokenizer,
        examples,
        1,
        SamplingConfig(max_new_tokens, 0.0),
        batch_size,
        seed,
        progress,
        f"{desc} greedy",
    )
    records = []
    metric_sums: dict[str, float] = {}
    for ex, completion in zip(examples, greedy, strict=True):
        scores = task.score(ex, completion)
        for key, value in scores.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + value
        records.append(
            {"id": ex.id, "prompt": ex.messages[-1]["content"], "completion": completion, **scores}
        )
    n = max(1, len(examples))
    result: dict[str, Any] = {"n": len(examples), "accuracy": metric_sums.get("correct", 0.0) / n}
    result.update({f"greedy/{k}": v / n for k, v in metric_sums.items()})
    if pass_k > 0:
        sampled = _complete(
            model,
            tokenizer,
            examples,
            pass_k,
            SamplingConfig(max_new_tokens, pass_temperature),
            batch_size,
            seed,
            progress,
            f"{desc} pass@{pass_k}",
        )
        pass_sums = dict.fromkeys(pass_curve_ks(pass_k), 0.0)
        correct_total = 0.0
        for i, (ex, record) in enumerate(zip(examples, records, strict=True)):
            correct = [task.score(ex, c)["correct"] for c in sampled[i * pass_k : (i + 1) * pass_k]]
            right = sum(c >= 1.0 for c in correct)
            record["sampled_correct"] = right
            for k in pass_sums:
                pass_sums[k] += pass_at_k(pass_k, right, k)
            correct_total += sum(correct)
        result.update({f"pass@{k}": v / n for k, v in pass_sums.items()})
        result["sampled_accuracy"] = correct_total / (n * pass_k)
        result.update(sample_diversity(sampled, pass_k, tokenizer))
    result["examples"] = records
    return result


def pass_curve_ks(k: int) -> list[int]:
    """The j of the pass@j curve reported from k samples: 2, 4, 8, ... below k, and k."""
    ks, j = [], 2
    while j < k:
        ks.append(j)
        j *= 2
    return [*ks, k]


def evaluate_with_config(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    config: TrainConfig,
    desc: str = "eval",
) -> dict[str, Any]:
    """`evaluate` with a run config's settings (`eval.*`, the rollout's token budget, seed)."""
    return evaluate(
        model,
        tokenizer,
        task,
        examples,
        max_new_tokens=config.rollout.max_new_tokens,
        pass_k=config.eval.pass_k,
        pass_temperature=config.eval.pass_temperature,
        batch_size=config.eval.batch_size,
        seed=config.seed,
        progress=config.log.progress,
        desc=desc,
    )


def _complete(
    model, tokenizer, examples, k, sampling, batch_size, seed, progress, desc
) -> list[str]:
    per_chunk = max(1, batch_size // k)
    out: list[str] = []
    chunks = range(0, len(examples), per_chunk)
    for n, start in enumerate(tqdm(chunks, desc=desc, disable=not progress, leave=False)):
        part = examples[start : start + per_chunk]
        batch = generate(model, tokenizer, [ex.messages for ex in part], k, sampling, seed=seed + n)
        out.extend(batch.completions)
    return out


def summary_line(result: dict[str, Any]) -> str:
    parts = [f"accuracy {result['accuracy']:.3f}"]
    parts += [
        f"{k} {v:.3f}"
        for k, v in result.items()
        if k.startswith("pass@") or k == "sampled_accuracy"
    ]
    return ", ".join(parts) + f" (n={result['n']})"
