"""A run that cannot be silently wrecked (docs/resume_and_faults.md): one writer per run
directory, no overwrite without `overwrite=true`, torn metrics lines, resume that applies what
the user changed and refuses what cannot change, honest exit codes, numbers checked before
any work, and one-line errors. Each test checks the exit code, the message and that the bytes
of the earlier run are untouched."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy tasks)
from tandemrl.cli import main
from tandemrl.loop.checkpoint import verify_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
RUN = ["model=tiny", "task=toy_letters", "eval.before=false", "eval.after=false",
       "rollout.prompts_per_step=2", "rollout.max_new_tokens=4", "log.progress=false",
       "log.tensorboard=false"]  # fmt: skip


def _train(out: Path, *extra: str) -> int:
    return main(["train", *RUN, f"output_dir={out}", *extra])


def _snapshot(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".tandem.lock"}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tandem: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture
def earlier_run(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "steps=2", "checkpoint.every=1") == 0
    return out, _snapshot(out)


# -- the run directory is owned -------------------------------------------------------------
def test_a_fresh_run_refuses_a_directory_that_holds_a_run(earlier_run, capsys):
    out, before = earlier_run
    assert _train(out, "steps=1") == 2
    line = _error(capsys)
    assert f"output_dir {out} already holds a run" in line and "overwrite=true" in line
    assert _snapshot(out) == before


def test_overwrite_replaces_the_earlier_run(earlier_run, capsys):
    out, before = earlier_run
    assert _train(out, "steps=1", "overwrite=true") == 0
    assert "overwrite=true: removed the earlier run's" in capsys.readouterr().err
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]


def test_resume_auto_without_a_checkpoint_moves_the_earlier_files_aside(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "config.yaml").write_text("steps: 1\n")
    before = _snapshot(out)
    assert _train(out, "steps=1", "resume=auto") == 0
    (aside,) = out.glob("previous-*")
    assert {p.name: b for p, b in before.items()} == {
        p.name: p.read_bytes() for p in aside.iterdir()
    }
    assert "moved its config.yaml, metrics.jsonl" in capsys.readouterr().err


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a run")
    assert _train(path, "steps=1") == 2
    assert f"output_dir {path} is a file" in _error(capsys)
    assert path.read_text() == "not a run"


def _child(*args: str, sleep: str = "0") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "TANDEM_TEST_STEP_SLEEP": sleep}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train_driver", *RUN, *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_processes_into_one_run_directory(tmp_path):
    """Exactly one runs; the other exits non-zero with one line naming the holder; the
    survivor's outputs are intact (every step logged once, checkpoints valid)."""
    out = tmp_path / "run"
    # the first sleeps 1.5 s a step from its 2nd on: the second starts well inside it
    first = _child(f"output_dir={out}", "steps=8", "checkpoint.every=2", sleep="1.5")
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file():  # the first holds the directory
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.05)
    second = _child(f"output_dir={out}", "steps=8", "resume=auto")
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=240)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 2
    errors = [line for line in err2.splitlines() if line.startswith("tandem: error: ")]
    assert (
        len(errors) == 1
        and f"output_dir {out} is in use by another run (pid {first.pid}" in errors[0]
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    for ckpt in (out / "checkpoints").iterdir():
        verify_checkpoint(ckpt)
    assert json.loads((out / "summary.json").read_text())["steps"] == 8


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    proc = _child(f"output_dir={out}", "steps=50", "checkpoint.every=1", sleep="0.5")
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-000001" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["train", *RUN, f"output_dir={out}", "steps=3", "resume=auto"]) == 0


# -- metrics.jsonl ---------------------------------------------------------------------------
def test_a_torn_metrics_line_does_not_stop_resume(earlier_run, capsys):
    out, _ = earlier_run
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.1, "rew')  # disk full while writing step 3
    assert _train(out, "steps=3", "resume=auto") == 0
    err = capsys.readouterr().err
    assert "dropped 0 logged after that checkpoint and 1 unreadable (torn) line(s)" in err
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    from tandemrl.runtime.records import read_records

    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 4, "lo')
    records, torn = read_records(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and torn == 1


# -- resume applies what changed, refuses what cannot ---------------------------------------
def test_resume_with_a_new_lr_trains_at_it(earlier_run, capsys):
    out, _ = earlier_run
    assert _train(out, "steps=3", "resume=auto", "optim.lr=1e-5") == 0
    err = capsys.readouterr().err
    assert "resume: took from the command line: " in err
    assert "optim.lr 0.0001 -> 1e-05" in err and "steps 2 -> 3" in err
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("change", "key"),
    [("method=dipo", "method"), ("lora.enabled=true", "lora.enabled"), ("task=arith2", "task"),
     ("task_options.size=8", "task_options")],
)  # fmt: skip
def test_resume_refuses_what_cannot_change(earlier_run, capsys, change, key):
    out, before = earlier_run
    assert _train(out, "steps=3", "resume=auto", change) == 2
    line = _error(capsys)
    assert f"resume: {key} was" in line and "cannot change when resuming" in line
    assert _snapshot(out) == before


def test_resume_refuses_a_lora_shape_change(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "steps=1", "lora.enabled=true", "lora.r=4") == 0
    before = _snapshot(out)
    assert _train(out, "steps=2", "resume=auto", "lora.enabled=true", "lora.r=8") == 2
    assert "resume: lora.r was 4" in _error(capsys)
    assert _snapshot(out) == before


# -- honest exits ----------------------------------------------------------------------------
CALLS = {"n": 0}


def exits_on_third_call(prompts, completions, **_):
    CALLS["n"] += 1
    if CALLS["n"] == 3:
        sys.exit(0)
    return [1.0 if "a" in c else 0.0 for c in completions]


def interrupts_on_third_call(prompts, completions, **_):
    CALLS["n"] += 1
    if CALLS["n"] == 3:
        raise KeyboardInterrupt
    return [1.0 if "a" in c else 0.0 for c in completions]


def always_nan(prompts, completions, **_):
    return [float("nan")] * len(completions)


def _jsonl(tmp_path: Path, reward: str) -> list[str]:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}"}) + "\n" for i in range(6)))
    return ["task=jsonl", f"task_options.path={data}", f"task_options.rewards=[{reward}]",
            "task_options.eval_size=1"]  # fmt: skip


@pytest.mark.parametrize(
    ("reward", "what"),
    [("exits_on_third_call", "called sys.exit(0)"),
     ("interrupts_on_third_call", "raised KeyboardInterrupt")],
)  # fmt: skip
def test_a_reward_that_ends_the_process_is_its_error(tmp_path, capsys, reward, what):
    """Not exit 0 (sys.exit) nor 130 (as if the user pressed Ctrl-C): exit 2 naming it."""
    CALLS["n"] = 0
    out = tmp_path / "run"
    assert (
        _train(out, "steps=5", "checkpoint.every=1", *_jsonl(tmp_path, f"{__name__}:{reward}")) == 2
    )
    line = _error(capsys)
    assert f"reward function '{reward}'" in line and what in line
    assert not (out / "summary.json").exists()
    verify_checkpoint(out / "checkpoints" / "step-000002")  # the steps before it are kept


def test_a_run_without_reward_signal_ends_non_zero(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "steps=3", *_jsonl(tmp_path, f"{__name__}:always_nan")) == 2
    err = capsys.readouterr().err
    assert "warning: step 1: every reward abstained" in err
    assert "3 of the 3 steps run had no reward at all" in err and "max_silent_frac" in err
    assert (out / "summary.json").is_file()  # the run directory is complete
    verify_checkpoint(out / "checkpoints" / "step-000003")


# -- numbers checked before any work ---------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=inf", "optim.lr must be in (0, 1]"),
        ("optim.lr=1e30", "optim.lr must be in (0, 1]"),
        ("optim.lr=0", "optim.lr must be in (0, 1]"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm must be > 0 (or null"),
        ("optim.max_grad_norm=-1", "optim.max_grad_norm must be > 0 (or null"),
        ("rollout.temperature=0", "rollout.temperature must be > 0"),
        ("seed=-1", "seed must be an integer in [0, 2**32)"),
        ("seed=5000000000", "seed must be an integer in [0, 2**32)"),
        ("lora.r=0", "lora.r (the LoRA rank) must be >= 1"),
        ("rollout.group_size=0", "rollout.group_size must be >= 1"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("optim.micro_batch_size=0", "optim.micro_batch_size must be >= 1"),
    ],
)
def test_bad_numbers_stop_before_any_work(earlier_run, capsys, override, message):
    out, before = earlier_run
    assert _train(out, "steps=3", "resume=auto", override) == 2
    assert message in _error(capsys)
    assert _snapshot(out) == before


def test_max_grad_norm_null_means_no_clipping(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "steps=1", "optim.max_grad_norm=null", "optim.lr=1e-2") == 0
    (rec,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rec["grad_norm"] > 0 and rec["update_skipped"] == 0


def test_non_finite_weights_stop_the_run_and_keep_the_last_finite_checkpoint(
    tmp_path, capsys, monkeypatch
):
    """An update that leaves a weight NaN (here: injected into the 2nd optimizer step) stops
    the run at once: nothing is saved after it, and the message names a finite checkpoint."""
    out = tmp_path / "run"
    assert _train(out, "steps=1") == 0
    good = out / "checkpoints" / "step-000001"
    before = _snapshot(good)
    real_step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    assert _train(out, "steps=4", "resume=auto", "checkpoint.every=1") == 2
    line = _error(capsys)
    assert "step 2: the update made 'policy' weights non-finite" in line
    assert f"the last checkpoint, {good}, has finite weights" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    assert _snapshot(good) == before


# -- one-line errors -------------------------------------------------------------------------
def test_a_full_disk_while_saving_is_one_line(earlier_run, capsys, monkeypatch):
    out, _ = earlier_run
    keep = _snapshot(out / "checkpoints" / "step-000002")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    assert _train(out, "steps=3", "resume=auto") == 2
    line = _error(capsys)
    assert "could not write the checkpoint of step 3" in line and "No space left on device" in line
    assert f"the last complete checkpoint is {out / 'checkpoints' / 'step-000002'}" in line
    assert _snapshot(out / "checkpoints" / "step-000002") == keep
    assert not list((out / "checkpoints").glob(".step-*"))  # no half-written checkpoint left


def test_eval_of_a_truncated_checkpoint_is_one_line(earlier_run, capsys):
    out, _ = earlier_run
    ckpt = out / "checkpoints" / "step-000002"
    weights = next((ckpt / "policy").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["eval", f"checkpoint={ckpt}", "eval.pass_k=0", "log.progress=false"]) == 2
    line = _error(capsys)
    assert f"checkpoint {ckpt} is corrupt" in line and weights.name in line


def test_tasks_with_an_unknown_name_exits_non_zero(capsys):
    assert main(["tasks", "no_such_task"]) == 2
    assert "unknown task 'no_such_task'" in _error(capsys)
