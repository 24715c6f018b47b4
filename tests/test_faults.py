"""Bad numbers and bad input: each stops (or is contained) with a message that says what is
wrong, and no checkpoint of an earlier run is lost."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path

import pytest

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.algos import clipped_policy_loss
from tandemrl.cli import main
from tandemrl.loop.checkpoint import verify_checkpoint
from tandemrl.tasks import RewardFunctionError, RewardSpec, run_reward
from tandemrl.tasks.rewards import MAX_ROW_TIMEOUTS, reward_limits

RUN = ["model=tiny", "task=toy_letters", "eval.before=false", "eval.after=false",
       "rollout.prompts_per_step=2", "rollout.max_new_tokens=4", "log.progress=false",
       "log.tensorboard=false"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


# -- non-finite updates ----------------------------------------------------------------------
CALLS = {"n": 0, "good": 2}


def nan_after_two_steps(*args, **kwargs):
    """The clipped loss for the first CALLS["good"] calls (one call per step here), then NaN."""
    CALLS["n"] += 1
    result = clipped_policy_loss(*args, **kwargs)
    if CALLS["n"] > CALLS["good"]:
        result.loss = result.loss * float("nan")
    return result


def test_nonfinite_updates_are_skipped_logged_and_stop_the_run(tmp_path, capsys):
    CALLS["n"] = 0
    out = tmp_path / "run"
    code = main(["train", *RUN, "steps=8", f"output_dir={out}", "checkpoint.every=1",
                 "checkpoint.keep=2", "faults.max_nonfinite_steps=3",
                 f"grpo.loss={__name__}:nan_after_two_steps"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    good = out / "checkpoints" / "step-000002"
    assert (
        f"tandem: error: 3 steps in a row (3-5) had a non-finite loss or gradient, so no update "
        f"was applied; the last good checkpoint is {good}" in err
    )
    assert "warning: step 3: non-finite loss or gradient (loss=nan" in err
    assert "update skipped (1 in a row" in err and "(3 in a row" in err
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update_skipped"] for r in records] == [0, 0, 1, 1, 1]
    assert [r["nonfinite/consecutive"] for r in records] == [0, 0, 1, 2, 3]
    # keep=2 did not push the good checkpoints out: none was written during the streak
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000001",
        "step-000002",
    ]
    verify_checkpoint(good)


def test_an_isolated_nonfinite_step_does_not_stop_the_run(tmp_path, capsys):
    CALLS["n"], CALLS["good"] = 0, 1
    try:
        out = tmp_path / "run"
        code = main(["train", *RUN, "steps=2", f"output_dir={out}",
                     "faults.max_nonfinite_steps=2",
                     f"grpo.loss={__name__}:nan_after_two_steps"])  # fmt: skip
    finally:
        CALLS["good"] = 2
    assert code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update_skipped"] for r in records] == [0, 1]
    assert "update skipped (1 in a row" in capsys.readouterr().err


# -- reward functions that hang or fail ----------------------------------------------------
def hangs_on_b(prompts, completions, kind, **_):
    if "b" in kind:
        time.sleep(30)
    return [1.0] * len(completions)


def hangs_always(prompts, completions, **_):
    while True:  # also swallows ordinary exceptions: the timeout must get through anyway
        with contextlib.suppress(Exception):
            time.sleep(1)


KINDS = {"kind": ["a", "b", "a"]}


def test_a_hanging_row_times_out_and_abstains(caplog):
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="tandemrl.rewards"):
        outcome = run_reward(RewardSpec("slow", hangs_on_b), [[]] * 3, ["x"] * 3, KINDS,
                             ["r0", "r1", "r2"], timeout_s=0.2)  # fmt: skip
    assert outcome.values == [1.0, None, 1.0] and outcome.errors == 1
    assert time.perf_counter() - started < 5
    message = caplog.records[0].getMessage()
    assert f"'slow' ({__name__}:hangs_on_b)" in message
    assert "row 1 (example 'r1')" in message and "RewardTimeout: timed out after 0.2 s" in message


def test_a_function_that_always_hangs_costs_a_few_time_limits():
    started = time.perf_counter()
    outcome = run_reward(RewardSpec("stuck", hangs_always), [[]] * 12, ["x"] * 12, {},
                         timeout_s=0.2)  # fmt: skip
    elapsed = time.perf_counter() - started
    assert outcome.values == [None] * 12 and outcome.errors == 12
    assert elapsed < (1 + MAX_ROW_TIMEOUTS) * 0.2 + 2  # batch call + 3 rows, not 12


def test_time_limit_outside_the_main_thread():
    box = {}

    def worker():
        with reward_limits(0.2):
            box["outcome"] = run_reward(RewardSpec("slow", hangs_on_b), [[]] * 3, ["x"] * 3, KINDS)

    started = time.perf_counter()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(20)
    assert not thread.is_alive() and time.perf_counter() - started < 10
    assert box["outcome"].values == [1.0, None, 1.0]


def test_fail_fast_names_the_function_and_the_row():
    with pytest.raises(RewardFunctionError) as info:
        run_reward(RewardSpec("slow", hangs_on_b), [[]] * 3, ["x"] * 3, KINDS,
                   ["r0", "r1", "r2"], timeout_s=0.2, on_error="raise")  # fmt: skip
    assert str(info.value) == (
        f"reward function 'slow' ({__name__}:hangs_on_b) failed on row 1 (example 'r1'): "
        "RewardTimeout: timed out after 0.2 s (faults.reward_errors=raise; set it to abstain "
        "to skip such rows)"
    )


# -- bad input, checked against a run directory that already holds a checkpoint ------------
@pytest.fixture
def existing_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *RUN, "steps=1", f"output_dir={out}"]) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".tandem.lock"}
    return out, files


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wrong_type(prompts, completions, **_):
    return ["high"] * len(completions)


def always_one(prompts, completions, **_):
    return [1.0] * len(completions)


def raises_on_odd(prompts, completions, n, **_):
    if any(x % 2 for x in n):
        raise ValueError(f"odd n {n}")
    return [1.0] * len(completions)


def _jsonl_args(data: Path, reward: str, extra: str = "") -> list[str]:
    return ["task=jsonl", f"task_options.path={data}", f"task_options.rewards=[{reward}]",
            "task_options.eval_size=1", *([extra] if extra else [])]  # fmt: skip


BAD_INPUTS = [
    (["rollout.grup_size=4"], "unknown config key 'rollout.grup_size'; did you mean 'rollout.group_size'?"),
    (["steps=many"], "steps: expected an integer, got 'many'"),
    (["rollout.group_size=1"], "grpo.advantage=grpo needs rollout.group_size >= 2"),
    (["method=dupo", "rollout.group_size=3"], "dupo needs >= 2 samples per prompt for each policy"),
    (["faults.reward_errors=skip"], "faults.reward_errors: 'skip' is not one of ['abstain', 'raise']"),
    ("missing_prompt", "has no column 'prompt' (columns: n, question); set prompt_column"),
    ("no_rows", "has no rows"),
    ("empty_train", "has an empty training split"),
    ("corrupt_resume", "is corrupt: trainer_state.pt has 10 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "message"), BAD_INPUTS)
def test_bad_input_stops_with_a_message_and_loses_no_checkpoint(
    existing_run, tmp_path, capsys, bad, message
):
    out, files = existing_run
    rows = [{"question": f"q{i}", "n": i} for i in range(4)]
    good_rows = [{"prompt": f"say {i}", "n": i} for i in range(4)]
    reward = f"{__name__}:wrong_type"
    args = (
        {
            "missing_prompt": _jsonl_args(_write_jsonl(tmp_path / "a.jsonl", rows), reward),
            "no_rows": _jsonl_args(_write_jsonl(tmp_path / "b.jsonl", []), reward),
            "empty_train": _jsonl_args(
                _write_jsonl(tmp_path / "d.jsonl", good_rows), reward, "task_options.train_size=0"
            ),  # fmt: skip
        }.get(bad, bad)
        if isinstance(bad, str)
        else bad
    )
    if bad == "corrupt_resume":  # a damaged copy of the run's checkpoint
        import shutil

        copy = tmp_path / "copy" / "checkpoints" / "step-000001"
        shutil.copytree(out / "checkpoints" / "step-000001", copy)
        (copy / "trainer_state.pt").write_bytes(b"0123456789")
        args = [f"resume={copy}"]
    capsys.readouterr()
    assert main(["train", *RUN, "steps=2", f"output_dir={out}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tandem: error: ") and message in err, err
    assert {
        p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".tandem.lock"
    } == files
    verify_checkpoint(out / "checkpoints" / "step-000001")


@pytest.mark.parametrize("policy", ["abstain", "raise"])
def test_reward_failures_mid_run_keep_the_checkpoint(tmp_path, capsys, policy):
    """A reward that raises on some rows: counted and skipped by default; with
    faults.reward_errors=raise the run stops naming the function and the row. A reward of
    the wrong type always stops. The resumed run's checkpoint survives either way."""
    out = tmp_path / "jsonl-run"
    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"say {i}", "n": i} for i in range(6)])
    first = ["train", *RUN, f"output_dir={out}", "steps=1"]
    assert main([*first, *_jsonl_args(data, f"{__name__}:always_one")]) == 0
    common = ["train", *RUN, f"output_dir={out}", "resume=auto",
              f"faults.reward_errors={policy}"]  # fmt: skip
    code = main([*common, "steps=2", *_jsonl_args(data, f"{__name__}:raises_on_odd")])
    err = capsys.readouterr().err
    if policy == "abstain":
        assert code == 0
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 2 and last["reward/raises_on_odd/errors"] > 0
    else:
        assert code == 2
        assert f"reward function 'raises_on_odd' ({__name__}:raises_on_odd) failed on row" in err
        assert "(example 'train-" in err and "ValueError: odd n" in err
    code = main([*common, "steps=3", *_jsonl_args(data, f"{__name__}:wrong_type")])
    assert code == 2
    assert f"reward function 'wrong_type' ({__name__}:wrong_type) returned 'high' (str)" in (
        capsys.readouterr().err
    )
    verify_checkpoint(out / "checkpoints" / "step-000001")
