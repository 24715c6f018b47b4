"""Scoring the duality reward's reconstructions (the DuPO paper; not the dual-policy method): recovery, the unknown-component filter, rewards, reranking.

DuPO (arXiv 2508.14460) turns the dual task into a reward. With a_i the final answer of
candidate i, q a dual question of the problem (hidden number h_q) and x̂_{i,q,1..K} K
reconstructions of h_q from the question written with a_i:

    backward accuracy   b_{i,q} = (1/K) Σ_k 1[x̂_{i,q,k} = h_q]
    recovered           R_{i,q} = b_{i,q} ≥ τ                      (τ = 0.5)
    leak                b_{i,q} unscored when a_i = h_q (the question states its answer)
    filter (paper)      keep q iff Σ_i R_{i,q} = 1  over the distinct candidate answers
    reward              r_i = mean_{q kept} b_{i,q}    (None when no q is kept)

The filter is the paper's label-free "unknown component selection": a dual question that
every answer, or no answer, lets the model solve says nothing about which answer is right
(removing it cost the paper 3.6 to 5.4 points). Text tasks use a distance instead of a match:
``r = exp(−λ·d)`` with ``d = 1 − chrF/100`` (or BLEU) of the back-translation against the
source; ``form="linear"`` gives ``1 − d``.

Inference-time reranking: sample N candidates, score each distinct answer's dual questions
K times, return the candidate with the highest backward accuracy (ties: more votes, then
earlier). Pure Python, no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from tandemrl.tasks.extraction import extract_number
from tandemrl.tasks.verify import numbers_equal

__all__ = [
    "accuracy_matrix",
    "backward_accuracy",
    "distance_reward",
    "dual_rerank",
    "duality_rewards",
    "keep_questions",
    "majority_vote",
    "recovered",
    "text_distance",
    "unique_recovery",
]


def recovered(completion: str, hidden: str) -> bool:
    """Whether the number extracted from ``completion`` equals ``hidden`` (as numbers)."""
    said = extract_number(completion)
    return said is not None and numbers_equal(said, hidden)


def backward_accuracy(completions: Sequence[str], hidden: str) -> float:
    """Share of ``completions`` that recover ``hidden``: b = (1/K) Σ_k 1[x̂_k = h]."""
    if not completions:
        raise ValueError("backward_accuracy needs at least one reconstruction")
    return sum(recovered(c, hidden) for c in completions) / len(completions)


def unique_recovery(accuracies: Sequence[float | None], threshold: float = 0.5) -> bool:
    """The paper's filter for one dual question: exactly one candidate answer recovers the
    hidden number (backward accuracy ≥ ``threshold``; None = not scored, never recovers)."""
    return sum(a is not None and a >= threshold for a in accuracies) == 1


def accuracy_matrix(
    answers: Sequence[str], hidden: Sequence[str], reconstructions: Sequence[str], k: int
) -> list[list[float | None]]:
    """b[i][q]: backward accuracy of answer i on question q (hidden number ``hidden[q]``) from
    ``reconstructions`` laid out answer-major, ``k`` per (answer, question).

    None where the answer equals the hidden number: its dual question then states the number
    it asks for (``x - 54 = 26`` for hidden 26), so a model that copies it "recovers" it.
    Measured on SmolLM2-135M: without this, answers that repeat a number of the problem
    earned the reward and training drifted to them (docs/duality.md)."""
    out: list[list[float | None]] = []
    for i, answer in enumerate(answers):
        row: list[float | None] = []
        for q, h in enumerate(hidden):
            j = i * len(hidden) + q
            leaks = numbers_equal(answer, h)
            row.append(
                None if leaks else backward_accuracy(reconstructions[j * k : (j + 1) * k], h)
            )
        out.append(row)
    return out


def keep_questions(
    accuracy: Sequence[Sequence[float | None]], threshold: float = 0.5
) -> list[bool]:
    """``unique_recovery`` per question; ``accuracy[i][q]`` = candidate i on question q."""
    if not accuracy:
        return []
    return [
        unique_recovery([row[q] for row in accuracy], threshold) for q in range(len(accuracy[0]))
    ]


def duality_rewards(
    accuracy: Sequence[Sequence[float | None]], keep: Sequence[bool] | None = None
) -> list[float | None]:
    """r_i = mean over kept questions of ``accuracy[i][q]`` (None entries left out); None
    when none is left. ``keep`` None keeps every question (no filter)."""
    out: list[float | None] = []
    for row in accuracy:
        kept = [a for q, a in enumerate(row) if (keep is None or keep[q]) and a is not None]
        out.append(sum(kept) / len(kept) if kept else None)
    return out


def distance_reward(distance: float, lam: float = 1.0, form: str = "exp") -> float:
    """``exp(−λ·d)`` (``form="exp"``, the paper's) or ``1 − d`` (``"linear"``), d in [0, 1]."""
    if form == "exp":
        return math.exp(-lam * distance)
    if form == "linear":
        return 1.0 - distance
    raise ValueError(f"form must be 'exp' or 'linear', got {form!r}")


def text_distance(hypothesis: str, source: str, metric: str = "chrf") -> float:
    """``1 − score/100`` of sentence chrF or BLEU (sacrebleu, case-insensitive) of a
    back-translation against the source."""
    from sacrebleu.metrics import BLEU, CHRF

    if metric == "chrf":
        scorer = CHRF(lowercase=True)
    elif metric == "bleu":
        scorer = BLEU(lowercase=True, effective_order=True)
    else:
        raise ValueError(f"metric must be 'chrf' or 'bleu', got {metric!r}")
    return 1.0 - scorer.sentence_score(hypothesis, [source]).score / 100.0


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the first candidate whose answer is the most frequent one (None = no answer);
    ties go to the answer seen first. None when no candidate has an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == best)


def dual_rerank(answers: Sequence[str | None], scores: Sequence[float | None]) -> int | None:
    """Index of the candidate with the highest dual score; ties: more votes, then earlier.

    Candidates without an answer or a score are never picked; when none has a score this
    falls back to ``majority_vote``."""
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
    counts = Counter(a for a in answers if a is not None)
    ranked = [
        (s, counts[a], -i)
        for i, (a, s) in enumerate(zip(answers, scores, strict=True))
        if a is not None and s is not None
    ]
    if not ranked:
        return majority_vote(answers)
    return -max(ranked)[2]
