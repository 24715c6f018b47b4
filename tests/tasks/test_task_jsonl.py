"""Users' own data: JSONL/parquet prompts, reward functions by import path, weights, the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandemrl.tasks import TaskOptionError, get_task
from tandemrl.tasks.rewards import exact_match, numeric_match

REWARDS_PY = """
def contains_answer(prompts, completions, answer, **columns):
    return [float(str(a) in c) for c, a in zip(completions, answer)]

def seen_columns(prompts, completions, **columns):
    seen_columns.calls.append((prompts, completions, columns))
    return [0.5] * len(completions)

seen_columns.calls = []
"""


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture
def data(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "my_rewards.py").write_text(REWARDS_PY)
    rows = [{"question": f"What is {i} + {i}?", "answer": 2 * i, "level": i % 3} for i in range(20)]
    return {
        "path": _write_jsonl(tmp_path / "data.jsonl", rows),
        "rewards_file": str(tmp_path / "my_rewards.py"),
    }


def test_prompts_columns_and_weighted_rewards(data: dict[str, str]) -> None:
    task = get_task(
        "jsonl",
        path=data["path"],
        prompt_column="question",
        system_prompt="Be brief.",
        eval_size=5,
        rewards=[
            f"{data['rewards_file']}:contains_answer",
            {"function": f"{data['rewards_file']}:seen_columns", "weight": 0.25, "name": "half"},
        ],
    )
    assert (len(task.train_examples()), len(task.eval_examples())) == (15, 5)
    assert [(r.name, r.weight) for r in task.rewards] == [("contains_answer", 1.0), ("half", 0.25)]
    example = task.train_examples()[0]
    half = example.columns["answer"] // 2
    assert example.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"What is {half} + {half}?"},
    ]
    assert example.columns.keys() == {"answer", "level"}
    right = str(example.columns["answer"])
    assert task.score(example, f"It is {right}.") == {
        "correct": 1.0,
        "contains_answer": 1.0,
        "half": 0.5,
        "reward_errors": 0.0,
    }
    assert task.score(example, "no idea")["correct"] == 0.0
    # the extra columns reach the function, one value per completion (TRL's convention)
    seen = task.rewards[1].fn
    seen.calls.clear()
    task.rewards[1].fn([example.messages], ["x"], answer=[4], level=[1])
    assert seen.calls[0][2] == {"answer": [4], "level": [1]}


def test_split_by_id_is_deterministic_and_eval_file_is_used(
    data: dict[str, str], tmp_path: Path
) -> None:
    options = {
        "path": data["path"],
        "prompt_column": "question",
        "rewards": "tandemrl.tasks.rewards:numeric_match",
        "eval_size": 4,
    }
    first, again = get_task("jsonl", **options), get_task("jsonl", **options)
    assert [e.id for e in first.eval_examples()] == [e.id for e in again.eval_examples()]
    assert not {e.id for e in first.eval_examples()} & {e.id for e in first.train_examples()}
    other_seed = get_task("jsonl", **options, seed=3)
    assert [e.id for e in other_seed.eval_examples()] != [e.id for e in first.eval_examples()]
    eval_path = _write_jsonl(tmp_path / "test.jsonl", [{"question": "1 + 1?", "answer": 2}])
    split = get_task("jsonl", **{**options, "eval_path": eval_path})
    assert len(split.train_examples()) == 20 and split.eval_examples()[0].id == "eval-0"


def test_parquet_and_chat_message_prompts(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [[{"role": "user", "content": f"Say {w}"}] for w in ("yes", "no", "maybe")]
    table = pa.table({"prompt": messages, "answer": ["yes", "no", "maybe"], "uid": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "d.parquet")
    task = get_task(
        "jsonl",
        path=str(tmp_path / "d.parquet"),
        id_column="uid",
        eval_size=1,
        rewards=["tandemrl.tasks.rewards:exact_match"],
    )
    assert sorted(e.id for e in [*task.train_examples(), *task.eval_examples()]) == ["a", "b", "c"]
    example = task.eval_examples()[0]
    assert example.messages == [{"role": "user", "content": f"Say {example.columns['answer']}"}]
    assert task.score(example, f"Answer: **{example.columns['answer'].upper()}**")["correct"] == 1.0


def test_ready_made_rewards() -> None:
    completions = ["Answer: 1,234", "It is 12. Answer: 13", "none", "x"]
    assert numeric_match([], completions, answer=["1234", 12, "5", None]) == [1.0, 0.0, 0.0, None]
    texts = ["Answer: Paris.", "paris", "Lyon", "Answer: Paris"]
    assert exact_match([], texts, answer=["Paris", "Paris", "Paris", None]) == [1.0, 1.0, 0.0, None]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "set task_options.path"),
        ({"path": "missing.jsonl", "rewards": "m:f"}, "no such file 'missing.jsonl'"),
        (
            {"rewards": "no_such_module_xyz:f"},
            "importing no_such_module_xyz failed: ModuleNotFoundError",
        ),
        ({"rewards": "tandemrl.tasks.rewards:nope"}, "has no function 'nope'"),
        ({"rewards": "justaname"}, "expected 'package.module:function'"),
        (
            {"rewards": [{"function": "tandemrl.tasks.rewards:exact_match", "wieght": 2}]},
            "did you mean 'weight'",
        ),
        ({"rewards": ["tandemrl.tasks.rewards:exact_match"] * 2}, "reward names must be unique"),
        (
            {"rewards": "tandemrl.tasks.rewards:exact_match", "prompt_column": "text"},
            "has no column 'text' (columns: answer, level, question)",
        ),
        (
            {"rewards": "tandemrl.tasks.rewards:exact_match", "correct_reward": "acc"},
            "correct_reward 'acc' is not one of",
        ),
        (
            {"rewards": "tandemrl.tasks.rewards:exact_match", "eval_size": 20},
            "eval_size must be from 0 to 19",
        ),
        (
            {"rewards": "tandemrl.tasks.rewards:exact_match", "id_column": "level"},
            "id '0' appears twice",
        ),
    ],
)
def test_option_errors_are_one_line(data: dict[str, str], options: dict, message: str) -> None:
    options = {"path": data["path"], "prompt_column": "question", **options} if options else {}
    with pytest.raises(TaskOptionError) as info:
        get_task("jsonl", **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_json_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b",}\n')
    with pytest.raises(TaskOptionError, match=r"bad.jsonl:2 is not valid JSON"):
        get_task("jsonl", path=str(path), rewards="tandemrl.tasks.rewards:exact_match")
