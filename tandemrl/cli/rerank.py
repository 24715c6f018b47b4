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

Problems go ``chunk`` at a time, each finished chunk kept in ``rerank.partial.jsonl``: the same
command started again after an interruption continues from the last finished chunk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tandemrl.bench.power import paired_difference
from tandemrl.errors import ConfigError
from tandemrl.loop.checkpoint import load_policy_weights
from tandemrl.loop.trainer import log
from tandemrl.models import load_model
from tandemrl.rollout import HFEngine, PolicySampler
from tandemrl.runtime.config import TrainConfig
from tandemrl.runtime.records import read_records
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
    n: int | Sequence[int] = 8,
    k: int = 8,
    temperature: float = 0.7,
    chunk: int = 8,
) -> dict[str, Any]:
    """Greedy, majority vote and dual reranking over the same candidates, K dual samples per
    question at ``temperature`` (candidates too); writes ``rerank.json``.

    ``n`` may list several candidate counts (``(8, 16)``): max(n) candidates are drawn once
    and each smaller N scores the first N of them, an i.i.d. draw of N, so every N is judged
    on the same problems and the dual samples of an answer are shared between them.

    Problems are reranked ``chunk`` at a time, each chunk appended to ``rerank.partial.jsonl``
    with its own seeds: an interrupted run started again with the same settings reuses the
    finished chunks and gives the records an uninterrupted run would have."""
    ns = sorted({n} if isinstance(n, int) else set(n))
    if not ns or ns[0] < 1 or k < 1 or temperature <= 0 or chunk < 1:
        raise ConfigError("tandem rerank needs n >= 1, k >= 1, chunk >= 1 and temperature > 0")
    task = get_task(cfg.task, **cfg.task_options)
    examples = list(task.eval_examples())[: cfg.eval.size]
    out_dir = Path(checkpoint) if checkpoint else Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": cfg.model,
        "task": cfg.task,
        "task_options": cfg.task_options,
        "checkpoint": checkpoint,
        "problems": [ex.id for ex in examples],
        "n": ns,
        "k": k,
        "temperature": temperature,
        "seed": cfg.seed,
        "chunk": chunk,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "duality": asdict(cfg.duality),
    }
    partial = out_dir / PARTIAL
    done = _finished_chunks(partial, json.loads(json.dumps(settings)))
    starts = range(0, len(examples), chunk)
    if done:
        log(f"rerank: reusing {len(done)} of {len(starts)} finished chunks from {partial}")
    todo = [c for c in range(len(starts)) if c not in done]
    if todo:
        loaded = load_model(cfg.model, cfg.load_dtype)
        model = loaded.model
        if checkpoint:
            model = load_policy_weights(model, Path(checkpoint), None)
        model = model.to(cfg.compute().device)
        sample = PolicySampler(lambda: model, HFEngine(loaded.tokenizer, cfg.eval.batch_size))
        for c in todo:
            part = examples[starts[c] : starts[c] + chunk]
            log(
                f"rerank: chunk {c + 1} of {len(starts)} (problems {starts[c]}-{starts[c] + len(part) - 1})"
            )
            done[c] = _rerank_chunk(
                cfg, task, part, sample, ns, k, temperature, seed=cfg.seed + 3 * c
            )
            with partial.open("a") as f:
                f.write(json.dumps({"chunk": c, **done[c]}) + "\n")
                f.flush()
                os.fsync(f.fileno())
    chunks = [done[c] for c in range(len(starts))]
    records = [rec for ch in chunks for rec in ch["records"]]
    top = ns[-1]
    result: dict[str, Any] = {"n_problems": len(examples), "N": top, "K": k}
    result["temperature"] = temperature
    by_n = {str(size): _summary(records, str(size)) for size in ns}
    result.update(by_n[str(top)])
    if len(ns) > 1:
        result["by_n"] = by_n
    for key in ("dual/samples", "dual/generate_s", "candidates_generate_s"):
        result[key] = sum(ch[key] for ch in chunks)
    result.update({"model": cfg.model, "task": cfg.task, "checkpoint": checkpoint})
    result.update(chunk=chunk, chunks_reused=len(starts) - len(todo))
    (out_dir / "rerank.json").write_text(json.dumps({**result, "examples": records}, indent=2))
    partial.unlink(missing_ok=True)  # rerank.json now holds every chunk
    for size in ns:
        s = by_n[str(size)]
        diff = s["dual_minus_majority"]
        log(
            f"rerank (N={size}, K={k}, {len(examples)} problems): greedy {s['greedy_accuracy']:.3f}, "
            f"majority {s['majority_accuracy']:.3f}, dual {s['dual_accuracy']:.3f}, "
            f"dual+filter {s['dual_filtered_accuracy']:.3f}, oracle {s['oracle_accuracy']:.3f}; "
            f"dual - majority {diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
        )
    return result


PARTIAL = "rerank.partial.jsonl"


def _finished_chunks(partial: Path, settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The chunks an earlier run with the same ``settings`` finished; a file from other
    settings is started over, and the reason logged. The file is rewritten with the header
    and those chunks alone, so a line torn by the interruption cannot run into the next."""
    lines, _torn = read_records(partial) if partial.exists() else ([], 0)
    header = {"settings": settings}
    same = bool(lines) and lines[0] == header
    if lines and not same:
        log(f"rerank: {partial} was written with other settings; starting over")
    chunks = lines[1:] if same else []
    partial.write_text("".join(json.dumps(r) + "\n" for r in [header, *chunks]))
    return {rec.pop("chunk"): rec for rec in chunks}


def _rerank_chunk(cfg, task, examples, sample, ns, k, temperature, seed) -> dict[str, Any]:
    """Greedy, max(ns) candidates and the dual samples for ``examples``; one record each."""
    top, d = ns[-1], cfg.duality
    prompts = [ex.messages for ex in examples]
    tokens = cfg.rollout.max_new_tokens
    t0 = time.perf_counter()
    greedy = sample(prompts, 1, temperature=0.0, max_new_tokens=tokens, seed=seed)
    cands = sample(prompts, top, temperature=temperature, max_new_tokens=tokens, seed=seed + 1)
    t1 = time.perf_counter()
    log(f"rerank: {len(examples)} problems, {top} candidates each in {t1 - t0:.0f} s")
    plans, texts = [], []
    for i, ex in enumerate(examples):
        answers = [extract_number(c) for c in cands[i * top : (i + 1) * top]]
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
        seed=seed + 2,
    )
    t2 = time.perf_counter()
    log(f"rerank: {len(texts)} dual questions x {k} samples in {t2 - t1:.0f} s")
    records, cursor = [], 0
    for i, (ex, (answers, duals, distinct)) in enumerate(zip(examples, plans, strict=True)):
        width = len(distinct) * len(duals.questions)
        acc = accuracy_matrix(
            distinct,
            [q.hidden for q in duals.questions],
            recon[cursor * k : (cursor + width) * k],
            k,
        )
        cursor += width
        correct = [task.score(ex, c)["correct"] for c in cands[i * top : (i + 1) * top]]
        rec: dict[str, Any] = {
            "id": ex.id,
            "answers": answers,
            "correct": correct,
            "skip_reason": duals.reason,
            "greedy": task.score(ex, greedy[i])["correct"],
            "no_dual": float(not duals.usable),
            "by_n": {},
        }
        for size in ns:
            rec["by_n"][str(size)] = _picks(
                answers[:size], correct[:size], distinct, acc, duals, d.threshold
            )
        records.append(rec)
    return {
        "records": records,
        "dual/samples": len(recon),
        "dual/generate_s": t2 - t1,
        "candidates_generate_s": t1 - t0,
    }


PICKS = ("greedy", "majority", "dual", "dual_filtered", "oracle")


def _picks(answers, correct, distinct, acc, duals, threshold) -> dict[str, Any]:
    """The picks among one problem's candidates (a prefix of the drawn ones): the dual
    scores come from the rows of ``acc`` (all drawn distinct answers) of the answers present,
    and the unknown-component filter is judged among those answers only."""
    shown = set(answers)
    present = [j for j, a in enumerate(distinct) if a in shown]
    sub = [acc[j] for j in present] if acc else []
    usable = duals.usable and bool(sub)
    names = [distinct[j] for j in present]
    plain = dict(zip(names, duality_rewards(sub), strict=True)) if usable else {}
    kept = duality_rewards(sub, keep_questions(sub, threshold)) if usable else []
    filtered = dict(zip(names, kept, strict=True)) if usable else {}
    scores = [plain.get(a) if a is not None else None for a in answers]
    picks = {
        "majority": majority_vote(answers),
        "dual": dual_rerank(answers, scores),
        "dual_filtered": dual_rerank(answers, [filtered.get(a) for a in answers]),
    }
    rec: dict[str, Any] = {name: correct[p] if p is not None else 0.0 for name, p in picks.items()}
    rec.update(
        dual_scores=scores,
        oracle=float(any(c >= 1.0 for c in correct)),
        candidate_mean=sum(correct) / len(correct),
        no_answer=float(not names),
        filter_fallback=float(usable and all(v is None for v in filtered.values())),
    )
    return rec


def _summary(records: list[dict[str, Any]], size: str) -> dict[str, Any]:
    """Accuracy of each pick at N = ``size``, and dual reranking's paired difference from
    majority vote over the problems (``bench.power.paired_difference``: the problems play
    the part of seeds; 95 % t interval and the smallest difference detectable at 80 % power)."""
    rows = [{**r["by_n"][size], "greedy": r["greedy"], "no_dual": r["no_dual"]} for r in records]
    m = max(1, len(rows))
    out: dict[str, Any] = {f"{p}_accuracy": sum(r[p] for r in rows) / m for p in PICKS}
    for key in ("candidate_mean", "no_dual", "no_answer", "filter_fallback"):
        out[key] = sum(r[key] for r in rows) / m
    for name, want in (("right", True), ("wrong", False)):
        vals = [
            s
            for r, full in zip(rows, records, strict=True)
            for s, c in zip(r["dual_scores"], full["correct"], strict=False)  # the first N
            if s is not None and (c >= 1.0) == want
        ]
        out[f"backward_acc_{name}"] = sum(vals) / len(vals) if vals else None
    majority = {i: float(r["majority"]) for i, r in enumerate(rows)}
    for pick in ("dual", "dual_filtered"):
        treated = {i: float(r[pick]) for i, r in enumerate(rows)}
        out[f"{pick}_minus_majority"] = paired_difference(treated, majority).to_dict()
    return out
