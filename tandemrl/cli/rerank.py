"""``tandem rerank``: DuPO inference-time reranking on a maths task's held-out split.

For each problem: one greedy completion; N sampled candidates; for every distinct candidate
answer, each dual question (``tandemrl.tasks.duality``) sampled K times by the same model.
Three picks from the same N candidates are scored with the task's own scorer:

- ``majority``: the most frequent answer (``duality_score.majority_vote``);
- ``dual``: the highest backward accuracy, mean over the problem's dual questions
  (``duality_score.dual_rerank``; ties: more votes, then earlier);
- ``dual_filtered``: the same over the questions the unknown-component filter keeps.

A problem without a usable dual question (or whose questions the filter drops) falls back to
the majority pick; how often is reported. ``oracle`` is pass@N of the candidates. Labels are
read only to score the picks and to report the mean backward accuracy of right and of wrong
candidates (``backward_acc_right`` / ``backward_acc_wrong``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tandemrl.errors import ConfigError
from tandemrl.loop.checkpoint import load_policy_weights
from tandemrl.loop.trainer import log
from tandemrl.models import load_model
from tandemrl.rollout import HFEngine, PolicySampler
from tandemrl.runtime.config import TrainConfig
from tandemrl.tasks import get_task
from tandemrl.tasks.duality import build_dual_questions
from tandemrl.tasks.duality_reward import problem_text
from tandemrl.tasks.duality_score import (
    accuracy_matrix,
    dual_rerank,
    duality_rewards,
    keep_questions,
    majority_vote,
)
from tandemrl.tasks.extraction import extract_number

__all__ = ["run_rerank"]


def run_rerank(
    cfg: TrainConfig,
    checkpoint: str | None = None,
    n: int = 8,
    k: int = 8,
    temperature: float = 0.7,
) -> dict[str, Any]:
    """Greedy, majority vote and dual reranking over the same N candidates, K dual samples
    per question at ``temperature`` (candidates too); writes ``rerank.json``."""
    if n < 1 or k < 1 or temperature <= 0:
        raise ConfigError("tandem rerank needs n >= 1, k >= 1 and temperature > 0")
    d = cfg.duality
    task = get_task(cfg.task, **cfg.task_options)
    examples = list(task.eval_examples())[: cfg.eval.size]
    loaded = load_model(cfg.model, cfg.load_dtype)
    model = loaded.model
    if checkpoint:
        model = load_policy_weights(model, Path(checkpoint), None)
    model = model.to(cfg.compute().device)
    sample = PolicySampler(lambda: model, HFEngine(loaded.tokenizer, cfg.eval.batch_size))
    prompts = [ex.messages for ex in examples]
    tokens = cfg.rollout.max_new_tokens
    t0 = time.perf_counter()
    greedy = sample(prompts, 1, temperature=0.0, max_new_tokens=tokens, seed=cfg.seed)
    cands = sample(prompts, n, temperature=temperature, max_new_tokens=tokens, seed=cfg.seed + 1)
    t1 = time.perf_counter()
    log(f"rerank: {len(examples)} problems, {n} candidates each in {t1 - t0:.0f} s")
    plans, texts = [], []
    for i, ex in enumerate(examples):
        answers = [extract_number(c) for c in cands[i * n : (i + 1) * n]]
        duals = build_dual_questions(
            problem_text(ex.messages, ex.columns.get("entry")),
            variable=d.variable,
            max_questions=d.max_questions,
        )
        distinct = list(dict.fromkeys(a for a in answers if a is not None))
        plans.append((answers, duals, distinct))
        for a in distinct:
            texts.extend(d.prompt(q, a) for q in duals.questions)
    recon = sample(
        [[{"role": "user", "content": t}] for t in texts],
        k,
        temperature=temperature,
        max_new_tokens=d.max_new_tokens,
        seed=cfg.seed + 2,
    )
    t2 = time.perf_counter()
    log(f"rerank: {len(texts)} dual questions x {k} samples in {t2 - t1:.0f} s")
    records, cursor = [], 0
    for i, (ex, (answers, duals, distinct)) in enumerate(zip(examples, plans, strict=True)):
        width = len(distinct) * len(duals.questions)
        rec = _score_problem(
            task,
            ex,
            cands[i * n : (i + 1) * n],
            greedy[i],
            answers,
            duals,
            distinct,
            recon[cursor * k : (cursor + width) * k],
            k,
            d.threshold,
        )
        cursor += width
        records.append(rec)
    result: dict[str, Any] = {
        "n_problems": len(examples),
        "N": n,
        "K": k,
        "temperature": temperature,
    }
    result.update(_summary(records))
    result["dual/samples"] = len(recon)
    result["dual/generate_s"] = t2 - t1
    result["candidates_generate_s"] = t1 - t0
    result.update({"model": cfg.model, "task": cfg.task, "checkpoint": checkpoint})
    out_dir = Path(checkpoint) if checkpoint else Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rerank.json").write_text(json.dumps({**result, "examples": records}, indent=2))
    log(
        f"rerank (N={n}, K={k}, {len(examples)} problems): greedy {result['greedy_accuracy']:.3f}, "
        f"majority {result['majority_accuracy']:.3f}, dual {result['dual_accuracy']:.3f}, "
        f"dual+filter {result['dual_filtered_accuracy']:.3f}, oracle {result['oracle_accuracy']:.3f}"
    )
    return result


PICKS = ("greedy", "majority", "dual", "dual_filtered", "oracle")


def _score_problem(
    task, ex, cands, greedy, answers, duals, distinct, recon, k, threshold
) -> dict[str, Any]:
    """One problem's picks, their correctness and the candidates' dual scores."""
    acc = accuracy_matrix(distinct, [q.hidden for q in duals.questions], recon, k)
    usable = duals.usable and bool(acc)
    plain = dict(zip(distinct, duality_rewards(acc), strict=True)) if usable else {}
    kept = duality_rewards(acc, keep_questions(acc, threshold)) if usable else []
    filtered = dict(zip(distinct, kept, strict=True)) if usable else {}
    correct = [task.score(ex, c)["correct"] for c in cands]
    scores = [plain.get(a) if a is not None else None for a in answers]
    picks = {
        "majority": majority_vote(answers),
        "dual": dual_rerank(answers, scores),
        "dual_filtered": dual_rerank(answers, [filtered.get(a) for a in answers]),
    }
    rec: dict[str, Any] = {
        "id": ex.id,
        "answers": answers,
        "correct": correct,
        "dual_scores": scores,
        "skip_reason": duals.reason,
        "greedy": task.score(ex, greedy)["correct"],
        "oracle": float(any(c >= 1.0 for c in correct)),
        "candidate_mean": sum(correct) / len(correct),
        "no_dual": float(not duals.usable),
        "no_answer": float(not distinct),
        "filter_fallback": float(usable and all(v is None for v in filtered.values())),
    }
    for name, pick in picks.items():
        rec[name] = correct[pick] if pick is not None else 0.0
    return rec


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    m = max(1, len(records))
    out: dict[str, Any] = {f"{p}_accuracy": sum(r[p] for r in records) / m for p in PICKS}
    for key in ("candidate_mean", "no_dual", "no_answer", "filter_fallback"):
        out[key] = sum(r[key] for r in records) / m
    for name, want in (("right", True), ("wrong", False)):
        vals = [
            s
            for r in records
            for s, c in zip(r["dual_scores"], r["correct"], strict=True)
            if s is not None and (c >= 1.0) == want
        ]
        out[f"backward_acc_{name}"] = sum(vals) / len(vals) if vals else None
    return out
