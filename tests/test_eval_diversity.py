"""Held-out diversity metrics (tandemrl.loop.diversity): self-BLEU and per-prompt counts."""

from __future__ import annotations

import math

import pytest

from tandemrl.loop.diversity import sample_diversity, self_bleu
from tandemrl.models import load_model


def test_self_bleu_is_one_for_copies_and_zero_for_disjoint_texts():
    same = "the answer is 12 because 3 times 4"
    assert self_bleu([same, same, same], [0, 0, 0]) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma", "one two three"], [0, 0]) == 0.0
    # groups are averaged; a group of one text has no "others" and is skipped
    mixed = self_bleu([same, same, "alpha beta", "one two", "lonely"], [0, 0, 1, 1, 2])
    assert mixed == pytest.approx(0.5)
    assert math.isnan(self_bleu(["a", "b"], [0, 1]))
    # partly shared text lies strictly between
    partial = self_bleu(["a b c d e f", "a b c d x y"], [0, 0])
    assert 0.0 < partial < 1.0


def test_sample_diversity_counts_answers_per_prompt():
    tok = load_model("tiny").tokenizer
    completions = ["Answer: 3", "so Answer: 3", "Answer: 4", "it is 5", "abc", "abc"]
    out = sample_diversity(completions, 2, tok)
    # prompt 0: {3}; prompt 1: {4, 5}; prompt 2: two identical texts without a number
    assert out["diversity/distinct_answers"] == pytest.approx((1 + 2 + 1) / 3)
    assert out["diversity/distinct_1"] < 1.0  # prompt 2 repeats every token
    assert 0.0 < out["diversity/self_bleu"] < 1.0
