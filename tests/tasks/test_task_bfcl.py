"""BFCL function calling: parsing, the possible-answer rules, rewards, the split, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandemrl.tasks import TaskOptionError, get_task
from tandemrl.tasks.bfcl import (
    args_reward,
    format_reward,
    length_reward,
    load_category,
    name_reward,
)
from tandemrl.tasks.function_calls import Call, check_call, match_calls, parse_calls

AREA_DOC = {
    "name": "calculate_triangle_area",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer"},
            "height": {"type": "integer"},
            "unit": {"type": "string"},
        },
        "required": ["base", "height"],
    },
}
AREA_TRUTH = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
FUNCS = [
    AREA_DOC,
    {
        "name": "book",
        "parameters": {
            "type": "dict",
            "properties": {
                "city": {"type": "string"},
                "price": {"type": "float"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "options": {"type": "dict"},
            },
            "required": ["city"],
        },
    },
]


def _book(**args: object) -> dict[str, float]:
    truth = [
        {
            "book": {
                "city": ["New York, NY", "NYC"],
                "price": [20.0, ""],
                "tags": [["cheap", "central"], ""],
                "options": [{"wifi": [True], "floor": [3, ""]}, ""],
            }
        }
    ]
    return match_calls([Call("book", args)], FUNCS, truth)


@pytest.mark.parametrize(
    "text",
    [
        "calculate_triangle_area(base=10, height=5)",
        "```python\ncalculate_triangle_area(base=10, height=5)\n```",
        "Sure! Here is the call: calculate_triangle_area(height=5, base=10).",
        '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}',
        '<tool_call>[{"name": "calculate_triangle_area", "arguments": "{\\"base\\": 10, \\"height\\": 5}"}]</tool_call>',
        '{"name": "calculate_triangle_area", "parameters": {"base": 10, "height": 5, "unit": "units"}}',
    ],
)
def test_right_calls_in_either_syntax_are_exact(text: str) -> None:
    parsed = parse_calls(text)
    assert parsed.error is None and len(parsed.calls) == 1
    assert match_calls(parsed.calls, [AREA_DOC], AREA_TRUTH) == {
        "exact_call": 1.0,
        "name": 1.0,
        "args": 1.0,
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5,}}',
            "invalid JSON",
        ),
        ("calculate_triangle_area(10, 5)", "positional"),
        ("calculate_triangle_area(base=b, height=5)", "not a literal"),
        ("calculate_triangle_area(base=10, height=5", "no function call"),
        ("The area is half of base times height.", "no function call"),
        ("", "no function call"),
    ],
)
def test_malformed_calls_are_not_calls(text: str, reason: str) -> None:
    parsed = parse_calls(text)
    assert parsed.calls == ()
    assert reason in parsed.error
    assert match_calls(parsed.calls, [AREA_DOC], AREA_TRUTH)["exact_call"] == 0.0
    assert format_reward([], [text]) == [0.0]


def test_python_literals_json_words_and_negative_numbers() -> None:
    (call,) = parse_calls("f(a=true, b=null, c=-2.5, d=(1, 2), e={'k': [1]})").calls
    assert call == Call("f", {"a": True, "b": None, "c": -2.5, "d": [1, 2], "e": {"k": [1]}})


def test_several_calls_are_collected_in_order() -> None:
    text = 'First: a.b(x=1)\nthen {"name": "c", "arguments": {}} and d(y="))")'
    parsed = parse_calls(text)
    assert [c.name for c in parsed.calls] == ["a.b", "c", "d"]
    assert parsed.calls[2].args == {"y": "))"}


@pytest.mark.parametrize(
    ("args", "exact"),
    [
        ({"base": 10, "height": 5}, 1.0),
        ({"base": 10, "height": 5, "unit": "Units"}, 1.0),  # strings ignore case
        ({"base": 10.0, "height": 5}, 0.0),  # wrong type: float for an integer
        ({"base": "10", "height": 5}, 0.0),  # wrong type: string for an integer
        ({"base": True, "height": 5}, 0.0),  # a bool is not an integer
        ({"base": 10}, 0.0),  # missing required
        ({"base": 10, "height": 5, "colour": "red"}, 0.0),  # unexpected
        ({"base": 10, "height": 6}, 0.0),  # wrong value
        ({"base": 10, "height": 5, "unit": "cm"}, 0.0),  # optional, but given wrong
    ],
)
def test_argument_rules(args: dict, exact: float) -> None:
    result = match_calls([Call("calculate_triangle_area", args)], [AREA_DOC], AREA_TRUTH)
    assert result["exact_call"] == exact
    assert result["name"] == 1.0


def test_args_reward_is_the_share_of_right_parameters() -> None:
    check = check_call(
        Call("calculate_triangle_area", {"base": 10, "height": 6}), [AREA_DOC], AREA_TRUTH[0]
    )
    assert (check.passed, check.total, check.ok) == (
        2,
        3,
        False,
    )  # base right, unit rightly omitted
    assert "height=6" in check.reason
    wrong = check_call(Call("triangle_area", {"base": 10, "height": 5}), [AREA_DOC], AREA_TRUTH[0])
    assert wrong.fraction == 0.0 and not wrong.name_ok


@pytest.mark.parametrize(
    ("args", "exact"),
    [
        ({"city": "new york ny"}, 1.0),  # spaces and punctuation ignored
        ({"city": "NYC", "price": 20}, 1.0),  # an int where a float is documented
        ({"city": "NYC", "tags": ["Cheap", "central"]}, 1.0),
        ({"city": "NYC", "tags": ["central", "cheap"]}, 0.0),  # list order matters
        ({"city": "NYC", "tags": "cheap"}, 0.0),  # a string where a list is documented
        ({"city": "NYC", "options": {"wifi": True}}, 1.0),  # floor may be left out
        ({"city": "NYC", "options": {"wifi": False}}, 0.0),
        ({"city": "NYC", "options": {"wifi": True, "pool": 1}}, 0.0),  # unknown key
        ({"city": "Boston"}, 0.0),
    ],
)
def test_strings_lists_dicts(args: dict, exact: float) -> None:
    assert _book(**args)["exact_call"] == exact


def test_parallel_calls_match_in_any_order_and_count_must_agree() -> None:
    doc = {
        "name": "play",
        "parameters": {"properties": {"artist": {"type": "string"}}, "required": ["artist"]},
    }
    truth = [{"play": {"artist": ["Taylor Swift"]}}, {"play": {"artist": ["Maroon 5"]}}]
    both = parse_calls('play(artist="Maroon 5")\nplay(artist="Taylor Swift")').calls
    assert match_calls(both, [doc], truth)["exact_call"] == 1.0
    one = parse_calls('play(artist="Maroon 5")').calls
    assert match_calls(one, [doc], truth) == {"exact_call": 0.0, "name": 0.5, "args": 0.5}
    same_twice = parse_calls('play(artist="Maroon 5") play(artist="Maroon 5")').calls
    assert match_calls(same_twice, [doc], truth)["exact_call"] == 0.0


def test_rewards_on_right_wrong_and_malformed_outputs() -> None:
    completions = [
        "calculate_triangle_area(base=10, height=5)",
        "calculate_triangle_area(base=10, height=4)",
        "area(base=10, height=5)",
        '{"name": "calculate_triangle_area", "arguments": {"base": 10,',
        "I will call calculate_triangle_area(base=10, height=5) to get the area of the triangle.",
    ]
    columns = {"functions": [[AREA_DOC]] * 5, "ground_truth": [AREA_TRUTH] * 5}
    assert format_reward([], completions) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert name_reward([], completions, **columns) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert args_reward([], completions, **columns) == pytest.approx([1.0, 2 / 3, 0.0, 0.0, 1.0])
    lengths = length_reward([], completions, length_budget=[100] * 5)
    assert lengths[:4] == [1.0, 1.0, 1.0, 0.0]
    assert 0.0 < lengths[4] < 1.0


def _resolve(value: object) -> object:
    if isinstance(value, dict):  # a dict parameter: each key lists its own options
        return {k: v[0] for k, v in value.items() if v[0] != ""}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_resolve(v) for v in value]
    return value


def _first_answer(options: list) -> object:
    return _resolve(next(v for v in options if v != ""))


def test_every_gold_answer_of_simple_python_passes() -> None:
    """The checker agrees with the packaged answers: a call built from them is exact."""
    task = get_task("bfcl", eval_size=10)
    for example in [*task.train_examples(), *task.eval_examples()]:
        ((name, answer),) = example.columns["ground_truth"][0].items()
        required = example.columns["functions"][0]["parameters"].get("required", [])
        args = {
            k: _first_answer(options)
            for k, options in answer.items()
            if "" not in options or k in required
        }
        for text in (
            f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})",
            json.dumps({"name": name, "arguments": args}),
        ):
            assert task.score(example, text)["correct"] == 1.0, (example.id, text)


def test_split_is_by_question_id_deterministic_and_disjoint() -> None:
    task = get_task("bfcl")
    train, held_out = task.train_examples(), task.eval_examples()
    assert (len(train), len(held_out)) == (336, 64)
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert [e.id for e in get_task("bfcl").eval_examples()] == [e.id for e in held_out]
    assert [e.id for e in get_task("bfcl", seed=1).eval_examples()] != [e.id for e in held_out]


def test_prompt_has_the_rule_a_demonstration_and_the_functions() -> None:
    example = get_task("bfcl").eval_examples()[0]
    roles = [m["role"] for m in example.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert "Python syntax with keyword arguments" in example.messages[0]["content"]
    assert example.messages[2]["content"] == 'get_weather(city="Paris", days=3)'
    last = example.messages[-1]["content"]
    assert last.startswith("Functions:\n{") and example.columns["functions"][0]["name"] in last
    plain = get_task("bfcl", few_shot=False).eval_examples()[0]
    assert [m["role"] for m in plain.messages] == ["system", "user"]
    assert plain.messages[-1] == example.messages[-1]


def test_categories_json_style_and_weights() -> None:
    task = get_task(
        "bfcl",
        category=["parallel", "multiple"],
        style="json",
        weights={"length": 0.5},
        eval_size=8,
    )
    assert len(task.train_examples()) + len(task.eval_examples()) == 400
    demo = task.eval_examples()[0].messages[2]["content"]
    assert demo == '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}'
    assert [(r.name, r.weight) for r in task.rewards] == [
        ("format", 0.1),
        ("name", 0.2),
        ("args", 1.0),
        ("length", 0.5),
    ]


def test_user_data_dir_in_bfcl_layout(tmp_path: Path) -> None:
    (tmp_path / "possible_answer").mkdir()
    rows = [
        {
            "id": f"simple_python_{i}",
            "question": [[{"role": "user", "content": f"Area {i}?"}]],
            "function": [AREA_DOC],
        }
        for i in range(3)
    ]
    (tmp_path / "BFCL_v4_simple_python.json").write_text("\n".join(json.dumps(r) for r in rows))
    answers = [{"id": r["id"], "ground_truth": AREA_TRUTH} for r in rows]
    (tmp_path / "possible_answer" / "BFCL_v4_simple_python.json").write_text(
        "\n".join(json.dumps(a) for a in answers)
    )
    load_category.cache_clear()
    task = get_task("bfcl", data_dir=str(tmp_path), eval_size=1)
    assert len(task.train_examples()) == 2
    example = task.eval_examples()[0]
    assert task.score(example, "calculate_triangle_area(base=10, height=5)")["correct"] == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"category": "simpel"}, "'simpel' (did you mean 'simple'?)"),
        ({"category": "simple_java"}, "unknown category"),
        ({"style": "xml"}, "style must be one of python, json"),
        ({"few_shot": "yes"}, "few_shot must be true or false"),
        ({"weights": {"arg": 1.0}}, "did you mean 'args'"),
        ({"eval_size": 400}, "leaves no training questions"),
        ({"data_dir": "/nonexistent"}, "missing data file"),
    ],
)
def test_option_errors_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(TaskOptionError) as info:
        get_task("bfcl", **options)
    assert message in str(info.value) and "\n" not in str(info.value)
