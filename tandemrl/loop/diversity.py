"""Diversity of held-out samples, from their text: what `evaluate` reports next to pass@k.

For k samples per prompt (completions ordered prompt by prompt):
  diversity/distinct_answers  mean number of distinct extracted answers per prompt, in [1, k]
  diversity/distinct_1, _2    mean per prompt of distinct-n over the samples' token ids
                              (tandemrl.algos.diversity; Li et al., arXiv 1510.03055)
  diversity/self_bleu         mean per prompt of (1/k) sum_i BLEU(sample_i, other samples) / 100
                              (Zhu et al., Texygen, arXiv 1802.01886; sacrebleu sentence BLEU
                              with its default exponential smoothing): 1 = all samples
                              identical, lower = more diverse. Needs k >= 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from tandemrl.algos import distinct_answers, group_distinct_n
from tandemrl.tasks.extraction import answer_key


def self_bleu(texts: Sequence[str], group_ids: Sequence[int]) -> float:
    """Mean over groups (of >= 2 texts) of the mean BLEU of each text against the others of
    its group, in [0, 1]; NaN when no group has two texts."""
    import sacrebleu

    groups: dict[int, list[str]] = {}
    for text, g in zip(texts, group_ids, strict=True):
        groups.setdefault(int(g), []).append(text)
    scores = []
    for members in groups.values():
        if len(members) < 2:
            continue
        per = [
            sacrebleu.sentence_bleu(hyp, members[:i] + members[i + 1 :]).score / 100.0
            for i, hyp in enumerate(members)
        ]
        scores.append(sum(per) / len(per))
    return sum(scores) / len(scores) if scores else float("nan")


def sample_diversity(completions: Sequence[str], k: int, tokenizer) -> dict[str, float]:
    """The `diversity/*` metrics of `completions`, k consecutive samples per prompt."""
    groups = [i // k for i in range(len(completions))]
    seqs = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    return {
        "diversity/distinct_answers": distinct_answers(
            [answer_key(c) for c in completions], groups
        ),
        "diversity/distinct_1": group_distinct_n(seqs, groups, 1),
        "diversity/distinct_2": group_distinct_n(seqs, groups, 2),
        "diversity/self_bleu": self_bleu(completions, groups),
    }
