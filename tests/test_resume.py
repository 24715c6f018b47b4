"""Resume: a run killed with SIGKILL (or Ctrl-C) and resumed with resume=auto logs the same
metrics as an uninterrupted run; corrupt checkpoints are detected and skipped; SIGTERM saves
and says how to resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.cli import main
from tandemrl.loop.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    verify_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
# Dropout and a warmup+cosine schedule: resuming must restore the torch RNG and the scheduler.
RUN = ["model=tiny", "task=toy_letters", "eval.before=false", "eval.after=false",
       "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
       "lora.enabled=true", "lora.dropout=0.1", "optim.lr=5e-3", "optim.warmup_steps=2",
       "optim.schedule=cosine", "log.progress=false", "log.tensorboard=false"]  # fmt: skip
STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def _child(args: list[str], **extra_env: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra_env}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train_driver", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in records]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(
        run / "checkpoints" / f"step-{step:06d}" / "policy" / "adapter_model.safetensors"
    )


def test_sigkill_then_resume_auto_matches_the_uninterrupted_run(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    args = [*RUN, f"steps={STEPS}", "checkpoint.every=1", "checkpoint.keep=3"]
    reference = _child([*args, f"output_dir={ref}"])
    killed = _child([*args, f"output_dir={cut}"], TANDEM_TEST_STEP_SLEEP="1.0")
    deadline = time.time() + 120
    while not (cut / "checkpoints" / "step-000002" / "COMPLETE").exists():
        assert killed.poll() is None and time.time() < deadline, killed.stderr.read()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (cut / "summary.json").exists()  # it really died mid-run
    k = int(find_resume_checkpoint(cut).name.split("-")[1])
    assert 2 <= k < STEPS
    resumed = _child([*args, f"output_dir={cut}", "resume=auto"])
    for proc in (reference, resumed):
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    assert f"resumed from {cut / 'checkpoints' / f'step-{k:06d}'}" in err
    expected, got = _metrics(ref), _metrics(cut)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    # something moved: rewards vary and updates were taken, so equality is not trivial
    assert len({r["reward/mean"] for r in expected}) > 1 and expected[-1]["grad_norm"] > 0
    for want, have in zip(expected[k:], got[k:], strict=True):
        assert have.keys() == want.keys()
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (want["step"], key)
    for key, value in _weights(ref, STEPS).items():
        torch.testing.assert_close(_weights(cut, STEPS)[key], value, rtol=1e-6, atol=1e-8)


def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = _child([*RUN, "steps=50", f"output_dir={out}"], TANDEM_TEST_STEP_SLEEP="1.0")
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 50
    ckpt = out / "checkpoints" / f"step-{done:06d}"
    verify_checkpoint(ckpt)
    assert f"stopped by SIGTERM after step {done}; checkpoint saved to {ckpt}" in err
    assert f"resume with: tandem train {out / 'config.yaml'} resume=auto" in err


def _train(out: Path, *extra: str) -> int:
    return main(["train", *RUN, f"output_dir={out}", *extra])


@pytest.mark.parametrize(("when", "saved"), [("before_update", 2), ("after_update", 3)])
def test_ctrl_c_on_dupo_then_resume_matches_the_uninterrupted_run(
    tmp_path, monkeypatch, capsys, when, saved
):
    """Ctrl-C in step 3 of DuPO: before its update commits the step is abandoned (step 2 is
    saved); after, the step is finished and logged first (step 3 is saved). Either way DuPO's
    state (two optimizers and schedules, the reward history behind the adaptive lr) resumes
    to the metrics of the uninterrupted run."""
    from tandemrl.methods.dual_policy import DualPolicy

    dupo = ["method=dupo", "lora.dropout=0.0", "dupo.schedule=simultaneous",
            "dupo.adaptive_window=1", "dupo.plot=false", "dupo.success_reward=0.0",
            "dupo.lr_explore=1e-2", "dupo.lr_exploit=1e-2", "steps=4"]  # fmt: skip
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _train(ref, *dupo) == 0
    real_step = DualPolicy.step

    def interrupted(self, step, examples):
        if step == 2 and when == "before_update":
            os.kill(os.getpid(), signal.SIGINT)
        out = real_step(self, step, examples)
        if step == 2 and when == "after_update":
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(DualPolicy, "step", interrupted)
    assert _train(cut, *dupo) == 130
    err = capsys.readouterr().err
    assert f"interrupted after step {saved}" in err and "resume=auto" in err
    assert len(_metrics(cut)) == saved
    monkeypatch.setattr(DualPolicy, "step", real_step)
    assert _train(cut, *dupo, "resume=auto") == 0
    assert f"(step {saved} of 4)" in capsys.readouterr().err
    expected, got = _metrics(ref), _metrics(cut)
    assert len({r["explore/lr_scale"] for r in expected}) > 1  # adaptive lr did act
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for want, have in zip(expected, got, strict=True):
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (want["step"], key)


def test_corrupt_checkpoint_is_reported_and_skipped(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "steps=3", "checkpoint.every=1", "checkpoint.keep=3") == 0
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000001", "step-000002", "step-000003"]
    for p in ckpts:
        verify_checkpoint(p)
    # a truncated state file, and a save that died before its manifest
    state = ckpts[2] / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    (ckpts[1] / "manifest.json").unlink()
    (out / "checkpoints" / ".step-000004-abc").mkdir()  # a crashed save's temp folder
    with pytest.raises(CheckpointError, match="trainer_state.pt has 100 bytes"):
        verify_checkpoint(ckpts[2])
    capsys.readouterr()
    assert find_resume_checkpoint(out) == ckpts[0]
    err = capsys.readouterr().err
    assert "step-000003 is corrupt: trainer_state.pt has 100 bytes" in err
    assert "step-000002 is partial" in err and "falling back" in err
    # resume=PATH to the corrupt one: one line, exit 2
    assert _train(out, "steps=4", f"resume={ckpts[2]}") == 2
    assert "is corrupt" in capsys.readouterr().err
    # resume=auto continues from step 1; the corrupt ones stay for inspection
    assert _train(out, "steps=4", "checkpoint.keep=3", "resume=auto") == 0
    assert f"resumed from {ckpts[0]} (step 1 of 4)" in capsys.readouterr().err
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4]
    verify_checkpoint(out / "checkpoints" / "step-000004")


def _registered_methods() -> list[str]:
    from tandemrl.methods import METHODS, get_method_class

    get_method_class("grpo")  # imports every built-in method
    return sorted(METHODS)


@pytest.mark.parametrize("method", _registered_methods())
def test_every_method_resumes_to_the_same_next_step(tmp_path, method):
    """The state_dict hook covers each method's own state (critic, queues, histories...):
    step 3 resumed from the step-2 checkpoint equals step 3 of the uninterrupted run."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    args = [*RUN, f"method={method}", "lora.dropout=0.0", "steps=3"]
    assert _train(ref, *args, "checkpoint.every=1", "checkpoint.keep=3") == 0
    assert _train(cut, *args, f"resume={ref / 'checkpoints' / 'step-000002'}") == 0
    (want,), (have,) = _metrics(ref)[2:], _metrics(cut)
    assert want["step"] == have["step"] == 3 and want.keys() == have.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert have[key] == value, key
