"""Diversity of sampled responses: distinct-n, distinct answers per group, n-gram novelty.

Pure functions over token-id sequences (lists of ints, already stripped of padding) or any
hashable answers; no tokenizer, no model. Groups are given by ``group_ids`` as everywhere in
``tandemrl.algos`` (responses to the same prompt share an id).

  distinct_n(seqs, n)          = |unique n-grams| / |n-grams|  over the sequences together
                                 (Li et al., "A Diversity-Promoting Objective", arXiv 1510.03055)
  distinct_answers(a, groups)  = mean over groups of |{a_i : i in group}|   (a count >= 1)
  ngram_novelty(c, r)          = 1 - max_k J(ngrams(c_j), ngrams(r_k)) per candidate j, the
                                 nearest-neighbour Jaccard distance to the reference responses
                                 of the same group (the dual-policy explorer's bonus, docs/dupo.md)
  pass_at_k(n, c, k)           = 1 - C(n - c, k) / C(n, k), unbiased pass@k from n samples
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

Tokens = Sequence[int]


def ngrams(tokens: Tokens, n: int) -> list[tuple[int, ...]]:
    """The n-grams of ``tokens`` in order; a sequence shorter than n is one (short) gram.

    Keeping short sequences as one gram means two different 1-token answers still differ,
    instead of both being "empty" and counting as identical.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = tuple(tokens)
    if len(tokens) < n:
        return [tokens] if tokens else []
    return [tokens[i : i + n] for i in range(len(tokens) - n + 1)]


def distinct_n(seqs: Sequence[Tokens], n: int = 2) -> float:
    """Unique n-grams over all n-grams in ``seqs`` (0.0 when there are none).

    1.0 means no n-gram repeats anywhere in the set; identical sequences push it towards
    1 / len(seqs).
    """
    grams = [g for s in seqs for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _groups(group_ids: Tensor | Sequence[int]) -> dict[int, list[int]]:
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    out: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        out.setdefault(int(g), []).append(i)
    return out


def group_distinct_n(
    seqs: Sequence[Tokens], group_ids: Tensor | Sequence[int], n: int = 2
) -> float:
    """Mean over groups of ``distinct_n`` of that group's responses.

    Per group, because over a whole batch distinct-n mostly measures how different the prompts
    are, not how varied the policy's answers to one prompt are.
    """
    groups = _groups(group_ids)
    if not groups:
        return 0.0
    return sum(distinct_n([seqs[i] for i in rows], n) for rows in groups.values()) / len(groups)


def distinct_answers(answers: Sequence[Hashable], group_ids: Tensor | Sequence[int]) -> float:
    """Mean number of distinct answers per group (None, "no answer", counts as one answer).

    G samples per group give a value in [1, G]: 1 = every sample gave the same answer.
    """
    groups = _groups(group_ids)
    if not groups:
        return 0.0
    return sum(len({answers[i] for i in rows}) for rows in groups.values()) / len(groups)


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def ngram_novelty(
    candidates: Sequence[Tokens],
    candidate_groups: Tensor | Sequence[int],
    references: Sequence[Tokens],
    reference_groups: Tensor | Sequence[int],
    n: int = 2,
) -> Tensor:
    """Novelty of each candidate against the references of its group, float [len(candidates)].

    novelty_j = 1 - max_{k in refs(g_j)} |N_j ∩ N_k| / |N_j ∪ N_k|,  N = set of n-grams.
    0 = a verbatim copy of some reference, 1 = shares no n-gram with any. A group without
    references gives novelty 1 (nothing is known there yet).
    """
    ref_sets: dict[int, list[set]] = {}
    for seq, g in zip(references, _flat(reference_groups), strict=True):
        ref_sets.setdefault(g, []).append(set(ngrams(seq, n)))
    out = []
    for seq, g in zip(candidates, _flat(candidate_groups), strict=True):
        mine = set(ngrams(seq, n))
        refs = ref_sets.get(g, [])
        out.append(1.0 - max((jaccard(mine, r) for r in refs), default=0.0))
    return torch.tensor(out, dtype=torch.float32)


def _flat(ids: Tensor | Sequence[int]) -> list[int]:
    return [int(g) for g in (ids.tolist() if isinstance(ids, Tensor) else ids)]


__all__ = [
    "distinct_answers",
    "distinct_n",
    "group_distinct_n",
    "jaccard",
    "ngram_novelty",
    "ngrams",
]


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` are right (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code"):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the chance that k samples drawn without replacement from the n include a correct one."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= correct <= n and 1 <= k <= n, got {n=}, "
                         f"{correct=}, {k=}")  # fmt: skip
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)
