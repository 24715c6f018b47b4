"""Reward isolation: a raising reward costs rows, not the run; a wrong result is one clear line."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tandemrl.cli import main
from tandemrl.methods.rewards import reward_metrics, score_rewards
from tandemrl.rollout import RolloutBatch
from tandemrl.tasks import Example, RewardFunctionError, RewardSpec, Task, run_reward


def flaky(prompts: list, completions: list, kind: list, **_: object) -> list[float | None]:
    """Raises on any batch holding a 'bad' row, like a reward that chokes on odd data."""
    if "bad" in kind:
        raise KeyError("no gold answer for this row")
    return [1.0] * len(completions)


def short(prompts: list, completions: list, **_: object) -> list[float | None]:
    return [1.0] * (len(completions) - 1)


def wordy(prompts: list, completions: list, **_: object) -> list:
    return [0.5, "high", 0.1][: len(completions)]


COLUMNS = {"kind": ["good", "bad", "good"]}
IDS = ["ex-a", "ex-b", "ex-c"]


def test_raising_rows_abstain_are_counted_and_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tandemrl.rewards"):
        outcome = run_reward(RewardSpec("flaky", flaky), [[]] * 3, ["x", "y", "z"], COLUMNS, IDS)
    assert outcome.values == [1.0, None, 1.0] and outcome.errors == 1
    (record,) = caplog.records
    message = record.getMessage()
    assert f"'flaky' ({__name__}:flaky)" in message
    assert "1 of 3 rows" in message and "row 1 (example 'ex-b')" in message
    assert "KeyError" in message and "no gold answer" in message


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (
            short,
            f"reward function 'r' ({__name__}:short) returned 2 values for 3 completions; expected one float or None per completion (first unmatched: row 2 (example 'ex-c'))",
        ),
        (
            wordy,
            f"reward function 'r' ({__name__}:wordy) returned 'high' (str) for row 1 (example 'ex-b'); expected a finite float or None",
        ),
        (
            lambda p, c, **_: 1.0,
            "returned a float; expected a list with one float or None per completion (3)",
        ),
        (lambda p, c, **_: [1.0, math.inf, 0.0], "returned inf (float) for row 1"),
    ],
)
def test_wrong_results_raise_one_clear_line(fn, expected: str) -> None:
    with pytest.raises(RewardFunctionError) as info:
        run_reward(RewardSpec("r", fn), [[]] * 3, ["x", "y", "z"], COLUMNS, IDS)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_array_tensor_bool_and_nan_values_are_accepted() -> None:
    spec = RewardSpec("r", lambda p, c, **_: np.array([1.0, np.nan, 0.0]))
    assert run_reward(spec, [[]] * 3, ["x"] * 3, {}).values == [1.0, None, 0.0]
    spec = RewardSpec("r", lambda p, c, **_: torch.tensor([True, False]))
    assert run_reward(spec, [[]] * 2, ["x"] * 2, {}).values == [1.0, 0.0]


class _Rows(Task):
    name = "rows"

    def __init__(self) -> None:
        self.rewards = [
            RewardSpec("flaky", flaky),
            RewardSpec("half", lambda p, c, **_: [0.5] * len(c), 2.0),
        ]

    def train_examples(self) -> list[Example]:
        return [
            Example(i, [{"role": "user", "content": i}], {"kind": k})
            for i, k in zip(IDS, COLUMNS["kind"], strict=True)
        ]

    eval_examples = train_examples

    def score(self, example: Example, completion: str) -> dict[str, float]:
        return {"correct": 0.0}


def test_score_rewards_logs_errors_per_reward() -> None:
    zeros = torch.zeros(3, 2, dtype=torch.long)
    batch = RolloutBatch(
        zeros,
        zeros + 1,
        zeros,
        zeros + 1,
        torch.arange(3),
        [0, 1, 2],
        ["a", "b", "c"],
        torch.zeros(3, dtype=torch.bool),
    )
    task = _Rows()
    score_rewards(task, list(task.train_examples()), batch)
    assert torch.equal(torch.isnan(batch.reward_matrix[:, 0]), torch.tensor([False, True, False]))
    assert batch.rewards.tolist() == [2.0, 1.0, 2.0]  # the abstaining reward is left out
    metrics = reward_metrics(batch)
    assert metrics["reward/flaky/errors"] == 1.0 and metrics["reward/half/errors"] == 0.0
    assert metrics["reward/flaky/mean"] == 1.0


def _user_run(tmp_path: Path, reward: str, steps: int) -> list[str]:
    (tmp_path / "user_rewards.py").write_text(
        "def flaky(prompts, completions, kind, **_):\n"
        "    if 'bad' in kind:\n"
        "        raise KeyError('no gold answer')\n"
        "    return [float(len(c) % 2) for c in completions]\n"
        "def short(prompts, completions, **_):\n"
        "    return [1.0] * (len(completions) - 1)\n"
    )
    rows = [{"prompt": f"word {i}", "kind": "bad" if i % 2 else "good"} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return [
        "train", "model=tiny", "task=jsonl", f"task_options.path={tmp_path / 'data.jsonl'}",
        f"task_options.rewards=[{tmp_path / 'user_rewards.py'}:{reward}]", "task_options.eval_size=2",
        f"steps={steps}", "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "eval.before=false", "eval.after=false", "log.progress=false", "log.tensorboard=false",
        f"output_dir={tmp_path / 'run'}",
    ]  # fmt: skip


def test_a_run_with_a_raising_reward_keeps_going(tmp_path: Path) -> None:
    assert main(_user_run(tmp_path, "flaky", steps=2)) == 0
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2]
    assert sum(r["reward/flaky/errors"] for r in records) > 0  # half the rows are 'bad'
    assert all(math.isfinite(r["loss"]) for r in records)
    assert list((tmp_path / "run" / "checkpoints" / "step-000002" / "policy").iterdir())


def test_a_wrong_length_reward_stops_the_cli_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_user_run(tmp_path, "short", steps=1)) == 2
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("tandem: error")
    ]
    assert len(lines) == 1
    assert (
        "reward function 'short' (tandemrl_user_rewards.user_rewards:short) returned 7 values for 8 completions"
        in lines[0]
    )
    assert "first unmatched: row 7 (example 'train-" in lines[0]


def test_overlong_reward_hand_computed():
    """DAPO's soft punishment: L_max 100, buffer 20: flat to 80, linear to -1 at 100, -1 beyond."""
    from tandemrl.tasks.rewards import overlong_reward

    ids = [[0] * n for n in (50, 80, 90, 100, 101, 500)]
    out = overlong_reward(max_len=100, buffer=20)([], [""] * 6, completion_ids=ids)
    assert out == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0, -1.0])
