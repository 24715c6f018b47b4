"""Passage reranking: ranking parser, NDCG@10 and MRR by hand, the generator, the split."""

from __future__ import annotations

import math
import random

import pytest

from tandemrl.tasks import TaskOptionError, get_task
from tandemrl.tasks.rerank import (
    build_query,
    format_reward,
    mrr,
    ndcg_at,
    ndcg_reward,
    parse_ranking,
)


@pytest.mark.parametrize(
    ("text", "ranking", "well_formed"),
    [
        ("[3] > [1] > [2]", [3, 1, 2], True),
        ("[ 3 ]>[1]>[2]\nThat is my ranking.", [3, 1, 2], True),
        ("3, 1, 2", [3, 1, 2], True),  # bare numbers when no [n] is written
        ("[3] > [1]", [3, 1], False),  # partial: the rest are not retrieved
        ("[3] > [3] > [1] > [2]", [3, 1, 2], False),  # duplicate dropped after first mention
        ("[3] > [7] > [1] > [2]", [3, 1, 2], False),  # unknown id dropped
        ("[0] > [3] > [1] > [2]", [3, 1, 2], False),
        ("", [], False),
        ("I cannot rank these passages.", [], False),
        ("Passage [2] answers it, so [2] > [3] > [1]", [2, 3, 1], False),
    ],
)
def test_parse_ranking(text: str, ranking: list[int], well_formed: bool) -> None:
    assert parse_ranking(text, 3) == (ranking, well_formed)


def test_ndcg_and_mrr_by_hand() -> None:
    grades = [0, 2, 1]  # passage [2] answers, [3] is about the same town
    assert ndcg_at([2, 3, 1], grades) == 1.0
    ideal = 3 + 1 / math.log2(3)
    assert ndcg_at([3, 2, 1], grades) == pytest.approx((1 + 3 / math.log2(3)) / ideal)
    assert ndcg_at([1], grades) == 0.0
    assert ndcg_at([], grades) == 0.0
    assert ndcg_at([2], grades) == pytest.approx(3 / ideal)  # unranked passages earn nothing
    assert ndcg_at([1, 3, 2], grades, k=2) == pytest.approx(1 / math.log2(3) / ideal)
    assert ndcg_at([1, 2, 3], [0, 0, 0]) == 0.0
    assert (mrr([2, 1], grades), mrr([3, 2], grades), mrr([3, 1], grades), mrr([], grades)) == (
        1.0,
        0.5,
        0.0,
        0.0,
    )


def test_rewards_on_right_wrong_and_malformed_rankings() -> None:
    grades = [0, 2, 1]
    completions = ["[2] > [3] > [1]", "[1] > [3] > [2]", "", "[2] > [2] > [9]"]
    rewards = ndcg_reward([], completions, grades=[grades] * 4)
    assert rewards[0] == 1.0 and 0.0 < rewards[1] < 0.6 and rewards[2] == 0.0
    assert rewards[3] == pytest.approx(3 / (3 + 1 / math.log2(3)))
    assert format_reward([], completions, grades=[grades] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_generated_query_has_the_documented_grades() -> None:
    for seed in range(20):
        query = build_query(random.Random(seed), 10)
        assert len(query.passages) == len(query.grades) == 10
        assert query.grades.count(1) == 3 and query.grades.count(2) in (1, 2)
        town = query.towns[0]
        for passage, grade in zip(query.passages, query.grades, strict=True):
            assert (town in passage) == (grade > 0), (passage, grade)
        assert town in query.question
    assert build_query(random.Random(5)) == build_query(random.Random(5))


def test_score_and_prompt() -> None:
    task = get_task("rerank", train_size=20, eval_size=8)
    example = task.eval_examples()[0]
    grades = example.columns["grades"]
    best = sorted(range(1, 11), key=lambda i: -grades[i - 1])
    perfect = task.score(example, " > ".join(f"[{i}]" for i in best))
    assert perfect == {"correct": 1.0, "ndcg@10": 1.0, "mrr": 1.0, "format": 1.0}
    worst = task.score(example, " > ".join(f"[{i}]" for i in reversed(best)))
    assert worst["correct"] == 0.0 and worst["ndcg@10"] < 0.5 and worst["mrr"] < 0.2
    assert task.score(example, "") == {"correct": 0.0, "ndcg@10": 0.0, "mrr": 0.0, "format": 0.0}
    content = example.messages[0]["content"]
    assert content.startswith("Question: ") and "[10] " in content and "[2] > [1] > [3]" in content


def test_held_out_towns_never_appear_in_training() -> None:
    task = get_task("rerank", train_size=500)
    held_out = {t for ex in task.eval_examples() for t in ex.columns["towns"]}
    trained = {t for ex in task.train_examples() for t in ex.columns["towns"]}
    assert len(task.train_examples()) == 500 and not held_out & trained
    again = get_task("rerank", train_size=3, seed=4)
    assert [e.messages for e in again.eval_examples()] == [e.messages for e in task.eval_examples()]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"candidates": 5}, "candidates must be 8 to 20"),
        ({"weights": {"ndgc": 1}}, "did you mean 'ndcg'"),
        ({"eval_size": -1}, "eval_size must be"),
    ],
)
def test_option_errors_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(TaskOptionError) as info:
        get_task("rerank", **options)
    assert message in str(info.value) and "\n" not in str(info.value)
