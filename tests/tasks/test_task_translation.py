"""Translation: library references, answer extraction, chrF/BLEU scoring, the split, options."""

from __future__ import annotations

import random

import pytest

from tandemrl.tasks import TaskOptionError, get_task
from tandemrl.tasks.translation import chrf_reward, exact_reward, extract_translation, make_pair


class _FixedRandom(random.Random):
    """Draws the given integers in order, so a pair's value is known in advance."""

    def __init__(self, *values: int) -> None:
        super().__init__(0)
        self._values = list(values)

    def randint(self, a: int, b: int) -> int:
        return self._values.pop(0)


def test_references_come_from_the_libraries() -> None:
    assert make_pair("number", "fr", _FixedRandom(3, 312)) == (
        "three hundred and twelve",
        "trois cent douze",
    )
    assert make_pair("number", "de", _FixedRandom(2, 47)) == ("forty-seven", "siebenundvierzig")
    assert make_pair("ordinal", "es", _FixedRandom(21)) == ("twenty-first", "vigésimo primero")
    source, reference = make_pair("date", "fr", random.Random(3))
    month = source.split()[0]
    assert source.count(",") == 1 and month[0].isupper()  # "March 12, 2024"
    assert reference.split()[1].islower() and reference.split()[2] == source.split()[-1]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("trois cent douze", "trois cent douze"),
        ("Trois cent douze.\n\nThis is French for 312.", "Trois cent douze"),
        ("**trois cent douze**", "trois cent douze"),
        ("Translation: trois cent douze", "trois cent douze"),
        ("In French: « trois cent douze »", "trois cent douze"),
        ("Here is the translation:\n\ntrois cent douze", "trois cent douze"),
        ('The French for "three hundred and twelve" is "trois cent douze".', "trois cent douze"),
        ("12. März 2024", "12. März 2024"),
        ("", ""),
    ],
)
def test_extract_translation(completion: str, expected: str) -> None:
    assert extract_translation(completion) == expected


def test_score_right_partial_and_wrong() -> None:
    task = get_task("translation", train_size=10, eval_size=4)
    example = task.eval_examples()[0]
    reference = example.columns["reference"]
    right = task.score(example, f"**{reference.upper()}.**")
    assert right == pytest.approx({"correct": 1.0, "chrf": 100.0, "bleu": 100.0})
    partial = task.score(example, reference[: len(reference) // 2])
    assert partial["correct"] == 0.0 and 0.0 < partial["chrf"] < 100.0
    wrong = task.score(example, "")
    assert wrong == {"correct": 0.0, "chrf": 0.0, "bleu": 0.0}
    assert set(right) == set(task.metric_names())


def test_rewards_match_the_eval_metrics() -> None:
    completions = ["quarante-sept", "quarante sept", "Quarante-sept !", "cuarenta y siete"]
    references = ["quarante-sept"] * 4
    assert exact_reward([], completions, reference=references) == [1.0, 0.0, 1.0, 0.0]
    chrf = chrf_reward([], completions, reference=references)
    assert chrf[0] == 1.0 and 0.5 < chrf[1] < 1.0 and chrf[3] < 0.3


def test_split_never_trains_on_a_held_out_source() -> None:
    task = get_task("translation", train_size=1500)
    held_out = {ex.columns["source"].casefold() for ex in task.eval_examples()}
    assert len(held_out) == 64
    assert not held_out & {ex.columns["source"].casefold() for ex in task.train_examples()}
    assert all(ex.columns["source"] != ex.columns["reference"] for ex in task.train_examples())
    again = get_task("translation", train_size=5, seed=1)
    assert [e.messages for e in again.eval_examples()] == [e.messages for e in task.eval_examples()]
    assert {ex.columns["kind"] for ex in task.train_examples()} == {
        "number",
        "ordinal",
        "year",
        "date",
        "country",
        "language",
    }


def test_options_pick_targets_kinds_and_rewards() -> None:
    task = get_task(
        "translation",
        targets=["it"],
        kinds=["country"],
        train_size=20,
        eval_size=8,
        weights={"exact": 0.5},
    )
    example = task.eval_examples()[0]
    assert {ex.columns["target"] for ex in task.train_examples()} == {"it"}
    assert example.messages[0]["content"].startswith("Translate into Italian.")
    assert [(r.name, r.weight) for r in task.rewards] == [("chrf", 1.0), ("exact", 0.5)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": ["fr", "jp"]}, "unknown target language for task 'translation': 'jp'"),
        ({"kinds": ["numbers"]}, "did you mean 'number'"),
        ({"weights": {"bleu": 1.0}}, "unknown reward weight"),
        (
            {"comet_model": "/nonexistent/comet.ckpt"},
            "comet_model '/nonexistent/comet.ckpt' does not exist",
        ),
        ({"kinds": ["ordinal"], "eval_size": 200}, "only 100 eval pairs found"),
    ],
)
def test_option_errors_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(TaskOptionError) as info:
        get_task("translation", **options).eval_examples()
    assert message in str(info.value) and "\n" not in str(info.value)
