import pytest
import torch

from tandemrl.algos import distinct_answers, distinct_n, group_distinct_n, ngram_novelty
from tandemrl.algos.diversity import jaccard, ngrams


def test_ngrams_keep_short_sequences_as_one_gram():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert ngrams([7], 2) == [(7,)]
    assert ngrams([], 2) == []
    with pytest.raises(ValueError):
        ngrams([1], 0)


def test_distinct_n_hand_computed():
    # bigrams: (1,2),(2,3) | (1,2),(2,4) -> 3 unique of 4
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(0.75)
    # unigrams: 1,2,3,1,2,4 -> 4 unique of 6
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 1) == pytest.approx(4 / 6)
    # two identical sequences: half the n-grams are repeats
    assert distinct_n([[5, 6, 7], [5, 6, 7]], 2) == pytest.approx(0.5)
    assert distinct_n([], 2) == 0.0


def test_group_distinct_n_averages_per_group_not_over_the_batch():
    seqs = [[1, 2], [1, 2], [3, 4], [5, 6]]
    # group 0: identical -> 1/2; group 1: different -> 1; mean 0.75
    assert group_distinct_n(seqs, torch.tensor([0, 0, 1, 1]), 2) == pytest.approx(0.75)
    # over the whole batch it would be 3/4 unique too, but grouping differently changes it:
    assert group_distinct_n(seqs, [0, 1, 0, 1], 2) == pytest.approx(1.0)


def test_distinct_answers_counts_per_group():
    answers = ["12", "12", None, "7", "7", "7"]
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: {"12", None} -> 2; group 1: {"7"} -> 1; mean 1.5
    assert distinct_answers(answers, groups) == pytest.approx(1.5)


def test_jaccard():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0


def test_ngram_novelty_nearest_reference_of_the_same_group():
    refs = [[1, 2, 3], [9, 9, 9], [4, 5, 6]]
    ref_groups = [0, 0, 1]
    cands = [[1, 2, 3], [1, 2, 4], [7, 8], [4, 5, 6]]
    cand_groups = [0, 0, 0, 2]
    out = ngram_novelty(cands, cand_groups, refs, ref_groups, n=2)
    # cand 0 copies ref 0 -> 0. cand 1 bigrams {(1,2),(2,4)} vs ref0 {(1,2),(2,3)}: J = 1/3,
    # vs ref1 {(9,9)}: 0 -> novelty 1 - 1/3. cand 2 shares nothing -> 1. cand 3 has the same
    # tokens as a group-1 reference but its group (2) has no references -> 1.
    torch.testing.assert_close(out, torch.tensor([0.0, 2 / 3, 1.0, 1.0]))
