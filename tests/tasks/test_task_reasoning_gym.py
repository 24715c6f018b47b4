"""reasoning-gym tasks: held-out split, determinism, prompts, reward values, option errors."""

from __future__ import annotations

import pytest

from tandemrl.tasks import Example, TaskOptionError, get_task
from tandemrl.tasks.reasoning_gym import NUMBER_INSTRUCTION, PRESETS, ReasoningGymTask


@pytest.fixture(scope="module")
def arith2() -> ReasoningGymTask:
    task = get_task("arith2")  # the default sizes: 2000 train, 64 eval
    assert isinstance(task, ReasoningGymTask)
    return task


def _prompts(examples: list[Example]) -> set[str]:
    return {ex.messages[-1]["content"] for ex in examples}


def test_default_sizes(arith2: ReasoningGymTask) -> None:
    assert len(arith2.train_examples()) == 2000
    assert len(arith2.eval_examples()) == 64


@pytest.mark.parametrize("name", ["arith2", "eq2", "gsm_symbolic"])
def test_train_and_eval_are_disjoint_by_id_and_prompt(name: str) -> None:
    # arith2 matters most: about a third of its questions come from a space of a few hundred,
    # so without filtering most of those eval questions would also be training questions.
    task = get_task(name, train_size=300 if name == "gsm_symbolic" else 2000, eval_size=64)
    train, held_out = task.train_examples(), task.eval_examples()
    assert not {ex.id for ex in train} & {ex.id for ex in held_out}
    assert not _prompts(train) & _prompts(held_out)
    assert len({ex.id for ex in train}) == len(train)
    assert len(_prompts(held_out)) == len(held_out)  # eval questions are distinct


def test_same_seed_same_examples(arith2: ReasoningGymTask) -> None:
    again = get_task("arith2")
    assert again.train_examples() == arith2.train_examples()
    assert again.eval_examples() == arith2.eval_examples()


def test_other_seed_other_examples() -> None:
    # reasoning-gym draws item i of seed s from Random(s + i), so plain seeds 0 and 1 would
    # share all but one item; tandemrl derives far-apart seeds. basic_arithmetic's default
    # config has a huge question space, so chance overlaps are negligible.
    zero = get_task("basic_arithmetic", train_size=200, eval_size=8)
    one = get_task("basic_arithmetic", train_size=200, eval_size=8, seed=1)
    assert len(_prompts(zero.train_examples()) & _prompts(one.train_examples())) < 5


def test_eval_split_does_not_depend_on_train_options(arith2: ReasoningGymTask) -> None:
    other = get_task("arith2", seed=7, train_size=50)
    assert other.eval_examples() == arith2.eval_examples()
    assert get_task("arith2", eval_seed=1).eval_examples() != arith2.eval_examples()


def test_prompt_is_question_plus_instruction_without_system(arith2: ReasoningGymTask) -> None:
    example = arith2.eval_examples()[0]
    assert len(example.messages) == 1
    assert example.messages[0]["role"] == "user"
    question = example.columns["entry"]["question"]
    assert example.messages[0]["content"] == f"{question}\n{NUMBER_INSTRUCTION}"
    assert NUMBER_INSTRUCTION == "End your reply with: Answer: <number>"


def test_instruction_and_system_prompt_options() -> None:
    task = get_task("arith2", train_size=4, eval_size=2, instruction="", system_prompt="Be brief.")
    messages = task.eval_examples()[0].messages
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"] == task.eval_examples()[0].columns["entry"]["question"]


def test_text_answer_task_uses_answer_placeholder_and_text_extraction() -> None:
    task = get_task("spell_backward", train_size=4, eval_size=4)
    assert isinstance(task, ReasoningGymTask) and task.answer_type == "text"
    example = task.eval_examples()[0]
    assert example.messages[-1]["content"].endswith("End your reply with: Answer: <answer>")
    gold = example.columns["answer"]
    assert task.score(example, f"Reversed:\nAnswer: {gold}")["correct"] == 1.0
    assert task.score(example, f"Answer: {gold}x")["correct"] == 0.0


def test_preset_config_is_merged_with_user_config() -> None:
    task = get_task("arith2", train_size=50, eval_size=4, config={"max_digits": 3})
    difficulty = task.train_examples()[0].columns["entry"]["metadata"]["difficulty"]
    assert difficulty == {"num_terms": (2, 2), "num_digits": (1, 3)}
    assert PRESETS["arith2"].config["max_digits"] == 2  # the preset itself is untouched


def _first(task: ReasoningGymTask) -> tuple[Example, str]:
    example = task.eval_examples()[0]
    return example, example.columns["answer"]


def test_scores_on_hand_made_completions(arith2: ReasoningGymTask) -> None:
    example, gold = _first(arith2)
    assert arith2.score(example, f"Let me compute.\nAnswer: {gold}") == {
        "correct": 1.0,
        "score": 1.0,
        "format": 1.0,
    }
    # the model rarely writes the marker: the last number still counts
    assert arith2.score(example, f"The result is {gold}")["correct"] == 1.0
    wrong = arith2.score(example, f"Answer: {int(gold) + 1}")
    assert wrong["correct"] == 0.0
    assert arith2.score(example, "I do not know")["correct"] == 0.0
    assert arith2.score(example, "I do not know")["format"] == 0.0


def test_partial_credit_is_not_correct(arith2: ReasoningGymTask) -> None:
    example, gold = _first(arith2)
    # reasoning-gym's default scorer pays len(gold)/len(answer) when gold is a substring
    result = arith2.score(example, f"Answer: {gold}0")
    assert 0.0 < result["score"] < 0.999
    assert result["correct"] == 0.0


def test_numeric_equality_backs_up_the_scorer() -> None:
    # gsm_symbolic's scorer reads "-5" as 5 and string-compares nothing else
    task = get_task("gsm_symbolic", train_size=1, eval_size=1)
    example = Example("x", [], {"answer": "-5", "entry": {"question": "q", "answer": "-5"}})
    assert task.score(example, "Answer: -5")["correct"] == 1.0
    assert task.score(example, "Answer: 5")["correct"] == 0.0


def test_reward_functions_trl_style(arith2: ReasoningGymTask) -> None:
    (correct,) = arith2.rewards
    assert correct.name == "correct" and correct.weight == 1.0
    examples = arith2.eval_examples()[:3]
    completions = [
        f"Answer: {examples[0].columns['answer']}",
        "Answer: 100000",
        [{"role": "assistant", "content": f"{examples[2].columns['answer']}"}],  # conversational
    ]
    columns = {key: [ex.columns[key] for ex in examples] for key in ("answer", "entry")}
    prompts = [ex.messages for ex in examples]
    assert correct.fn(prompts, completions, **columns) == [1.0, 0.0, 1.0]


def test_reward_abstains_only_when_the_scorer_raises(
    arith2: ReasoningGymTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    example, gold = _first(arith2)

    def broken(answer: str, entry: dict) -> float:
        raise RuntimeError("scorer bug")

    monkeypatch.setattr(arith2._scorer, "score_answer", broken)
    fn = arith2.rewards[0].fn
    entry = example.columns["entry"]
    # no answer extracted: a plain 0, the scorer is not consulted
    assert fn([[]] * 2, [f"Answer: {gold}", "nothing"], entry=[entry] * 2) == [None, 0.0]


def test_format_reward_is_opt_in() -> None:
    assert [r.name for r in get_task("arith2", train_size=4, eval_size=2).rewards] == ["correct"]
    task = get_task("arith2", train_size=4, eval_size=2, format_reward=True, format_weight=0.5)
    fmt = task.rewards[1]
    assert (fmt.name, fmt.weight) == ("format", 0.5)
    assert fmt.fn([[]] * 3, ["Answer: 3", "3", "Answer: <number>"]) == [1.0, 0.0, 0.0]


def test_describe(arith2: ReasoningGymTask) -> None:
    info = arith2.describe()
    assert (info.name, info.train_size, info.eval_size) == ("arith2", 2000, 64)
    assert info.metrics == ["correct", "score", "format"]
    assert info.rewards == ["correct"]
    assert info.example_prompt == arith2.eval_examples()[0].messages
    assert "basic_arithmetic" in info.source


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"trian_size": 5}, "'trian_size' (did you mean 'train_size'?)"),
        ({"config": {"max_digit": 2}}, "'max_digit' (did you mean 'max_digits'?)"),
        ({"config": {"min_digits": 3, "max_digits": 2}}, "max_digits must be >= min_digits"),
        ({"config": {"seed": 3}}, "set task_options.seed instead of config.seed"),
        ({"train_size": 0}, "train_size must be an integer >= 1"),
        ({"seed": "x"}, "seed must be an integer >= 0"),
        ({"answer_type": "numeric"}, "answer_type must be one of auto, number, text"),
        ({"format_reward": "yes"}, "format_reward must be true or false"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, expected: str) -> None:
    with pytest.raises(TaskOptionError) as info:
        get_task("arith2", **options)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_too_small_question_space_is_a_clear_error() -> None:
    # one-digit sums only: 11 * 11 = 121 distinct questions cannot fill 200 eval slots
    config = {"max_digits": 1, "operators": ["+"]}
    task = get_task("arith2", train_size=10, eval_size=200, config=config)
    with pytest.raises(TaskOptionError, match="lower eval_size"):
        task.eval_examples()
