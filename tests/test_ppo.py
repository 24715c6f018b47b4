"""PPO with a critic: GAE on KL-shaped token rewards, the clipped value loss, where the critic
lives (its own adapter + value head on the shared base), and the run directory."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.algos import clipped_value_loss, explained_variance, gae, kl_in_reward
from tandemrl.cli import main
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.loop.checkpoint import policy_adapters
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.models.adapters import adapter_parameters
from tandemrl.tasks import get_task

SMALL = ["model=tiny", "task=toy_letters", "rollout.prompts_per_step=2", "rollout.group_size=4",
         "rollout.max_new_tokens=6", "optim.micro_batch_size=4"]  # fmt: skip


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected), atol=tol, rtol=0)


def _method(overrides):
    cfg = load_config(None, ["method=ppo", *SMALL, *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    return get_method_class("ppo")(RunContext(cfg, load_model("tiny"), task)), task


def _params(named):
    return {n: p.detach().clone() for n, p in named}


def _changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- the maths PPO composes


def test_gae_on_terminal_reward_plus_kl_penalty_hand_computed():
    # task reward 1 on a 3-token response; per-token KL .1, -.2, .3 with coef .5 ->
    # token rewards -.05, .1, -.15 + 1 = .85
    kl = torch.tensor([[0.1, -0.2, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    token_rewards, _ = kl_in_reward(torch.tensor([1.0]), kl, mask, 0.5, token_level=True)
    close(token_rewards, [[-0.05, 0.1, 0.85, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.5, 7.0]])
    # gamma = lam = 1: returns are the rewards-to-go .9, .95, .85; A = R - V
    adv, ret = gae(token_rewards, values, mask, gamma=1.0, lam=1.0)
    close(ret, [[0.9, 0.95, 0.85, 0.0]])
    close(adv, [[0.7, 0.55, 0.35, 0.0]])
    # gamma .9, lam .5: d2 = .85 - .5 = .35; d1 = .1 + .9*.5 - .4 = .15;
    # d0 = -.05 + .9*.4 - .2 = .11; A2 = .35; A1 = .15 + .45*.35 = .3075;
    # A0 = .11 + .45*.3075 = .248375; R = A + V
    adv, ret = gae(token_rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.248375, 0.3075, 0.35, 0.0]])
    close(ret, [[0.448375, 0.7075, 0.85, 0.0]])


def test_clipped_value_loss_hand_computed_and_its_gradient():
    old = torch.zeros(1, 4)
    values = torch.tensor([[0.5, 0.5, -0.1, 3.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # token 0: (V-R)^2 = .25, clipped V = .2 -> (.2-1)^2 = .64 -> max .64 (clip active)
    # token 1: .25 vs (.2-0)^2 = .04 -> .25;  token 2: inside the clip: 1.21 both
    # loss = 1/2 (.64 + .25 + 1.21) / 3 tokens = .35
    res = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert res.loss.item() == pytest.approx(0.35)
    assert res.metrics["value/clip_frac"] == pytest.approx(1 / 3)
    assert res.metrics["value/mse"] == pytest.approx((0.25 + 0.25 + 1.21) / 3)
    res.loss.backward()
    # the clipped term is constant in V: no gradient on token 0; (V - R)/3 elsewhere
    close(values.grad, [[0.0, 0.5 / 3, -1.1 / 3, 0.0]])
    unclipped = clipped_value_loss(values, old, returns, mask, clip=None)
    assert unclipped.loss.item() == pytest.approx(0.5 * (0.25 + 0.25 + 1.21) / 3)
    with pytest.raises(ValueError, match="clip"):
        clipped_value_loss(values, old, returns, mask, clip=0.0)


def test_value_clip_fraction_counts_no_token_inside_the_clip():
    # V_old + (V - V_old) differs from V by rounding when the two have opposite signs; a
    # token inside the clip has identical terms and must never count as clipped
    g = torch.Generator().manual_seed(0)
    old = 0.1 * torch.randn(4, 256, generator=g)
    values = old + 0.1 * torch.rand(4, 256, generator=g) - 0.05  # |V - V_old| < .05 < eps
    returns = torch.randn(4, 256, generator=g)
    res = clipped_value_loss(values, old, returns, torch.ones(4, 256), clip=0.2)
    assert res.metrics["value/clip_frac"] == 0.0
    assert res.loss.item() == pytest.approx(0.5 * ((values - returns) ** 2).mean().item())


def test_explained_variance_hand_computed():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    # errors 1, 0, -1 around mean 0: var 2/3; var(R) = 2/3 -> 0
    values = torch.tensor([[0.0, 2.0, 4.0, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(0.0)
    # constant returns leave nothing to explain
    assert math.isnan(explained_variance(values, torch.ones(1, 4), mask))
    # all rewards 0: returns A + V are 0 up to round-off, still nothing to explain
    v = torch.tensor([[0.1, 0.2, 0.3, 0.0]])
    adv, noisy = gae(torch.zeros(1, 4), v, mask, gamma=1.0, lam=1.0)
    assert math.isnan(explained_variance(v, noisy, mask))
    assert math.isnan(explained_variance(v, torch.tensor([[1e-9, 0.0, 0.0, 0.0]]), mask))


# ---------------------------------------------------------------- the method on `tiny`


def test_values_line_up_with_the_token_they_score_whatever_the_padding():
    """V[i, t] is the head on the hidden state before y_t; left padding must not move it."""
    method, task = _method([])
    examples = [task.train_examples()[0], task.train_examples()[11]]  # different prompt lengths
    batch = method.rollout(0, examples)
    assert batch.prompt_mask.sum(-1).unique().numel() == 2
    together = method.values(batch, grad=False)
    decoder = method.policy.get_decoder()
    for i in (0, len(batch) - 1):
        p = batch.prompt_ids[i][batch.prompt_mask[i].bool()]
        n = int(batch.response_mask[i].sum())
        ids = torch.cat([p, batch.response_ids[i, :n]]).unsqueeze(0)
        with torch.no_grad():
            hidden = decoder(input_ids=ids).last_hidden_state[0]
            alone = method.value_head(hidden[len(p) - 1 : len(p) - 1 + n])
        torch.testing.assert_close(together[i, :n], alone, atol=1e-5, rtol=1e-4)


def test_lora_critic_adapter_and_head_learn_and_the_base_does_not():
    method, task = _method(["lora.enabled=true", "ppo.kl_coef=0.1", "optim.lr=1e-2"])
    net = method.policy
    base = _params((n, p) for n, p in net.named_parameters() if "lora_" not in n)
    policy = _params(adapter_parameters(net, "policy").items())
    critic = _params(adapter_parameters(net, "critic").items())
    head = _params(method.value_head.named_parameters())
    metrics = method.step(0, task.train_examples()[:2])
    assert _changed(policy, _params(adapter_parameters(net, "policy").items()))
    assert _changed(critic, _params(adapter_parameters(net, "critic").items()))
    assert _changed(head, _params(method.value_head.named_parameters()))
    assert not _changed(
        base, _params((n, p) for n, p in net.named_parameters() if "lora_" not in n)
    )
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # reference = adapters off = start
    assert metrics["critic/lr"] == pytest.approx(5e-4) and metrics["lr"] == pytest.approx(1e-2)


def test_the_critic_update_never_reaches_the_policy():
    """Critic loss gradients land on the critic adapter / head only (LoRA and full FT)."""
    for lora in ("true", "false"):
        method, task = _method([f"lora.enabled={lora}"])
        state, _ = method.collect(0, task.train_examples()[:2])
        method.policy.zero_grad(set_to_none=True)
        method.critic_loss(state.batch, None).loss.backward()
        critic_ids = {id(p) for p in method.update_engine.groups["critic"].params}
        for name, p in method.policy.named_parameters():
            if id(p) not in critic_ids:
                assert p.grad is None, (lora, name)
        assert method.value_head.linear.weight.grad.abs().sum() > 0
        if lora == "true":
            grads = [p.grad for p in adapter_parameters(method.policy, "critic").values()]
            assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_whitening_option_and_returns_from_old_values():
    method, task = _method(["ppo.kl_coef=0"])
    state, _ = method.collect(0, task.train_examples()[:2])
    batch = state.batch
    m = batch.train_mask.float()
    adv = batch.advantages[m.bool()]
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert adv.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    # terminal reward only (no KL): r on each row's last response token
    token_rewards, _ = kl_in_reward(batch.rewards, torch.zeros(m.shape), m, 0.0, token_level=True)
    last = m.sum(-1).long() - 1
    assert torch.equal(token_rewards[torch.arange(len(batch)), last], batch.rewards)
    assert token_rewards.abs().sum() == pytest.approx(batch.rewards.abs().sum().item())
    values = batch.per_row.old_values
    raw, returns = gae(token_rewards, values, m, method.cfg.gamma, method.cfg.lam)
    torch.testing.assert_close(batch.per_row.returns, returns)
    method.cfg.whiten_advantages = False
    method.advantages(state)
    torch.testing.assert_close(batch.advantages, raw)


def test_epochs_and_minibatches_count_updates_and_move_the_ratio():
    method, task = _method(["ppo.ppo_epochs=2", "ppo.minibatches=2", "optim.lr=1e-2"])
    metrics = method.step(0, task.train_examples()[:2])
    optimizers = method.update_engine.optimizers
    assert optimizers["policy"].state_dict()["state"][0]["step"] == 4
    assert optimizers["critic"].state_dict()["state"][0]["step"] == 4
    # later updates see pi != pi_old: the mean ratio over the 4 updates is not exactly 1
    assert metrics["policy/ratio_mean"] != pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.lam=1.5", "ppo.lam"),
        ("ppo.gamma=-0.1", "ppo.gamma"),
        ("ppo.minibatches=9", "ppo.minibatches"),
        ("ppo.value_clip=0", "ppo.value_clip"),
        ("ppo.critic_lr=0", "ppo.critic_lr"),
        ("ppo.ppo_epochs=0", "ppo.ppo_epochs"),
    ],
)
def test_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=ppo", *SMALL, override])


def test_one_step_run_writes_metrics_checkpoint_eval_and_export(tmp_path):
    out = tmp_path / "run"
    args = ["train", "method=ppo", *SMALL, "lora.enabled=true", "steps=1", f"output_dir={out}",
            "eval.size=2", "eval.pass_k=2", "log.progress=false"]  # fmt: skip
    assert main(args) == 0
    (rec,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    documented = {"reward/mean", "loss", "kl", "advantage/mean", "returns/mean", "value/loss",
                  "value/clip_frac", "value/mean", "value/explained_variance", "critic/loss",
                  "critic/grad_norm", "critic/lr", "policy/ratio_mean", "clip/frac",
                  "entropy/mean", "time/step_s", "time/update_s"}  # fmt: skip
    assert rec.keys() >= documented
    ckpt = out / "checkpoints" / "step-000001"
    assert policy_adapters(ckpt) == ["critic", "policy"]
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert set(state["method"]) >= {"value_head", "update_engine"}
    assert set(state["method"]["update_engine"]["optimizers"]) == {"policy", "critic"}
    assert json.loads((out / "eval.json").read_text())["after"]["n"] == 2
    assert main(["eval", f"checkpoint={ckpt}", "eval.pass_k=0", "log.progress=false"]) == 0
    assert json.loads((ckpt / "eval-policy.json").read_text())["policy"] == "policy"
    export = tmp_path / "export"
    assert main(["export", f"checkpoint={ckpt}", f"out={export}"]) == 0
    assert (export / "adapter_config.json").is_file()
