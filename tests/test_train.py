"""End-to-end training on the tiny model: the run directory, learning, and update maths."""

from __future__ import annotations

import json

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.algos import LossNormalizer
from tandemrl.cli import main
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.tasks import get_task

REQUIRED_METRICS = {
    "step",
    "reward/mean",
    "loss",
    "time/step_s",
    "time/generate_s",
    "memory/peak_rss_mb",
    "entropy/mean",
}


def test_two_step_tiny_run_writes_run_directory(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "method=grpo",
            "model=tiny",
            "task=arith2",
            "steps=2",
            f"output_dir={out}",
            "eval.size=4",
            "eval.pass_k=2",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=8",
            "log.progress=false",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [1, 2]
    for rec in lines:
        assert rec.keys() >= REQUIRED_METRICS
        assert rec["time/step_s"] >= rec["time/generate_s"] > 0
        assert rec["memory/peak_rss_mb"] > 50
    assert "reward/correct/mean" in lines[0]
    config = (out / "config.yaml").read_text()
    assert "method: grpo" in config and "steps: 2" in config and "grpo:" in config
    assert list((out / "checkpoints").glob("step-000002/policy/*"))
    assert list((out / "tensorboard").iterdir())
    evals = json.loads((out / "eval.json").read_text())
    assert set(evals) == {"before", "after"}
    assert evals["after"]["n"] == 4 and "pass@2" in evals["after"]


def test_eval_command_loads_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "model=tiny",
        "task=toy_letters",
        "steps=1",
        "eval.before=false",
        "eval.after=false",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=4",
        "log.progress=false",
    ]
    assert main(["train", *args, f"output_dir={out}"]) == 0
    ckpt = out / "checkpoints" / "step-000001"
    assert main(["eval", f"checkpoint={ckpt}", "eval.pass_k=0", "log.progress=false"]) == 0
    result = json.loads((ckpt / "eval.json").read_text())
    assert result["n"] == 4 and result["checkpoint"] == str(ckpt)


def _method(overrides):
    cfg = load_config(None, ["model=tiny", *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    return get_method_class(cfg.method)(RunContext(cfg, load_model("tiny"), task)), task


def test_grpo_learns_the_toy_task():
    """Reward = share of lowercase letters (~0.1 at start); GRPO on tiny must raise it."""
    method, task = _method(
        [
            "task=toy_letters",
            "optim.lr=3e-3",
            "rollout.prompts_per_step=4",
            "rollout.group_size=8",
            "rollout.max_new_tokens=8",
            "steps=20",
        ]
    )
    examples = list(task.train_examples())
    rewards = []
    for step in range(20):
        metrics = method.step(step, examples[(step * 4) % 16 : (step * 4) % 16 + 4])
        rewards.append(metrics["reward/mean"])
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards


def test_microbatching_gives_the_same_gradient():
    """token-mean with a global normaliser: 1 x 8 sequences == 4 x 2 sequences, exactly."""
    method, task = _method(
        ["task=toy_letters", "rollout.prompts_per_step=2", "rollout.group_size=4"]
    )
    state, _ = method.collect(0, list(task.train_examples())[:2])
    batch = state.batch
    assert batch.advantages.abs().sum() > 0
    normalizer = LossNormalizer.from_masks(batch.train_mask)

    def grads(micro_size):
        method.policy.zero_grad()
        total = 0.0
        for micro in batch.microbatches(micro_size):
            loss = method.loss(micro, normalizer, state).loss
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in method.policy.parameters() if p.grad is not None]

    loss_full, g_full = grads(8)
    loss_micro, g_micro = grads(2)
    assert loss_full == pytest.approx(loss_micro, abs=1e-6)
    for a, b in zip(g_full, g_micro, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "lora, kl_in, estimator",
    [("true", "loss", "k3"), ("false", "loss", "k1"), ("true", "reward", "k2")],
)
def test_kl_starts_at_zero_and_grows_after_an_update(lora, kl_in, estimator):
    """The reference is the starting policy: adapters off (LoRA) or a frozen copy (full)."""
    method, task = _method(
        [
            "task=toy_letters",
            f"lora.enabled={lora}",
            "grpo.kl_coef=0.1",
            f"grpo.kl_in={kl_in}",
            f"grpo.kl_estimator={estimator}",
            "optim.lr=1e-2",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=6",
        ]
    )
    assert method.uses_lora() == (lora == "true")
    examples = list(task.train_examples())[:2]
    first = method.step(0, examples)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    second = method.step(1, examples)
    assert second["kl"] > 1e-6


def _grpo_batch_ready_for_the_loss():
    """A GRPO method on toy_letters and one rolled-out, rewarded batch with advantages."""
    method, task = _method(["task=toy_letters", "rollout.prompts_per_step=2"])
    state, _ = method.collect(0, list(task.train_examples())[:2])
    return method, state, LossNormalizer.from_masks(state.batch.train_mask)


def test_entropy_bonus_enters_the_loss_with_its_coefficient():
    method, state, normalizer = _grpo_batch_ready_for_the_loss()
    plain = method.loss(state.batch, normalizer, state)
    method.cfg.entropy_coef = 0.05
    with_bonus = method.loss(state.batch, normalizer, state).loss
    expected = plain.loss.item() - 0.05 * plain.metrics["entropy/mean"]
    assert with_bonus.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_entropy_bonus_moves_the_gradient_by_its_own_gradient():
    """With entropy_coef = c the gradient is GRPO's plus that of -c * aggregate(H): the bonus
    must train, not only show up in the loss value (its entropy needs a gradient)."""
    from tandemrl.algos import aggregate
    from tandemrl.rollout import score_tokens

    method, state, normalizer = _grpo_batch_ready_for_the_loss()
    batch = state.batch
    params = [p for p in method.policy.parameters() if p.requires_grad]

    def grads(loss):
        method.policy.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    plain = grads(method.loss(batch, normalizer, state).loss)
    method.cfg.entropy_coef = 0.5
    with_bonus = grads(method.loss(batch, normalizer, state).loss)
    entropy = score_tokens(method.policy, batch, method.sampling.temperature, entropy_grad=True)
    bonus_only = grads(
        -0.5 * aggregate(entropy.entropy, batch.response_mask, method.cfg.aggregation, normalizer)
    )
    assert sum(float(g.abs().sum()) for g in bonus_only) > 0
    for p0, p1, pb in zip(plain, with_bonus, bonus_only, strict=True):
        torch.testing.assert_close(p1, p0 + pb, atol=1e-6, rtol=1e-4)


def test_interrupt_keeps_the_finished_steps(tmp_path, monkeypatch, capsys):
    """Ctrl-C during step 2 saves step 1's checkpoint and exits 130 with a hint."""
    from tandemrl.methods.grpo import GRPO

    real_rollout = GRPO.rollout

    def interrupt_step_two(self, step, examples):
        if step == 1:
            raise KeyboardInterrupt
        return real_rollout(self, step, examples)

    monkeypatch.setattr(GRPO, "rollout", interrupt_step_two)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "model=tiny",
            "task=toy_letters",
            "steps=3",
            f"output_dir={out}",
            "eval.before=false",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=4",
            "log.progress=false",
        ]
    )
    assert code == 130
    assert (out / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert "tandem eval checkpoint=" in capsys.readouterr().err
