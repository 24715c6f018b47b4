"""The task registry: lookup, one-line errors, option checks, registering a custom task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tandemrl.tasks.registry as registry
from tandemrl.tasks import (
    Example,
    RewardSpec,
    Task,
    TaskOptionError,
    UnknownTaskError,
    get_task,
    list_tasks,
    register_task,
)


def test_unknown_task_is_one_line_with_suggestion_and_how_to_list() -> None:
    with pytest.raises(UnknownTaskError) as info:
        get_task("basic_arithmatic")
    message = str(info.value)
    assert "\n" not in message
    assert "'basic_arithmatic'" in message
    assert "did you mean 'basic_arithmetic'" in message
    assert "tandem tasks" in message
    assert isinstance(info.value, ValueError)


def test_unknown_task_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(UnknownTaskError) as info:
        get_task("qqqqqqqqqq")
    assert "did you mean" not in str(info.value)
    assert "\n" not in str(info.value)


def test_list_tasks_has_presets_and_reasoning_gym_names() -> None:
    names = list_tasks()
    assert {"arith2", "eq2", "basic_arithmetic", "gsm_symbolic"} <= set(names)
    assert "composite" not in names  # needs a config of other datasets: not a task alone
    assert names == sorted(names)
    registered = list_tasks(include_providers=False)
    assert "arith2" in registered and "basic_arithmetic" not in registered


class _Echo(Task):
    """A minimal custom task, as a user would write one."""

    name = "test_echo"

    def __init__(self, size: int) -> None:
        def exact(prompts: list, completions: list[str], word: list[str], **_: object) -> list:
            return [float(c.strip() == w) for c, w in zip(completions, word, strict=True)]

        self.rewards = [RewardSpec("exact", exact)]
        self._train = [self._example("train", i) for i in range(size)]
        self._eval = [self._example("eval", i) for i in range(2)]

    @staticmethod
    def _example(split: str, i: int) -> Example:
        word = f"{split}{i}"
        return Example(f"{split}/{i}", [{"role": "user", "content": f"Say {word}"}], {"word": word})

    def train_examples(self) -> list[Example]:
        return self._train

    def eval_examples(self) -> list[Example]:
        return self._eval

    def score(self, example: Example, completion: str) -> dict[str, float]:
        return {"correct": float(completion.strip() == example.columns["word"])}


@pytest.fixture
def echo_registered() -> Iterator[None]:
    @register_task("test_echo")
    def make_echo(*, size: int = 3) -> Task:
        return _Echo(size)

    yield
    registry._REGISTRY.pop("test_echo")


@pytest.mark.usefixtures("echo_registered")
def test_register_custom_task_with_decorator() -> None:
    assert "test_echo" in list_tasks(include_providers=False)
    task = get_task("test_echo", size=5)
    assert len(task.train_examples()) == 5
    example = task.eval_examples()[0]
    assert task.score(example, "eval0") == {"correct": 1.0}
    words = [ex.columns["word"] for ex in task.train_examples()[:2]]
    assert task.rewards[0].fn([], ["train0", "nope"], word=words) == [1.0, 0.0]
    info = task.describe()
    assert (info.train_size, info.eval_size, info.rewards) == (5, 2, ["exact"])
    assert info.example_text() == "user: Say eval0"


@pytest.mark.usefixtures("echo_registered")
def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(TaskOptionError) as info:
        get_task("test_echo", sise=4, colour="red")
    message = str(info.value)
    assert "\n" not in message
    assert "'sise' (did you mean 'size'?)" in message
    assert "'colour'" in message
    assert message.endswith("allowed: size")


@pytest.mark.usefixtures("echo_registered")
def test_registering_a_taken_name_needs_replace() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_task("test_echo")(lambda: _Echo(1))


def test_registered_name_shadows_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._REGISTRY, "gsm_symbolic", lambda: _Echo(1))
    assert isinstance(get_task("gsm_symbolic"), _Echo)
