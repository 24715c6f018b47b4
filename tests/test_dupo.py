"""DuPO on the tiny model: which weights move, the reduction to GRPO, off-policy log-probs."""

from __future__ import annotations

import math

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.algos import grpo_advantages
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.methods.dual_policy import SampledBy, TermNormalizers
from tandemrl.models import load_model
from tandemrl.models.adapters import activate_adapter, adapter_parameters
from tandemrl.rollout import score_tokens
from tandemrl.tasks import get_task

SMALL = ["model=tiny", "task=toy_letters", "rollout.prompts_per_step=2", "rollout.group_size=4",
         "rollout.max_new_tokens=6", "optim.micro_batch_size=4"]  # fmt: skip
# No interaction at all: two GRPO learners that happen to share a base.
INDEPENDENT = ["dupo.response_sharing=false", "dupo.gradient_sharing=0", "dupo.distill_coef=0",
               "dupo.cross_reward_weight=0", "dupo.diversity_coef=0", "dupo.adaptive_lr=false"]  # fmt: skip


def _method(overrides, method="dupo"):
    cfg = load_config(None, [f"method={method}", *SMALL, *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    return get_method_class(method)(RunContext(cfg, load_model("tiny"), task)), task


def _snapshot(method, policy):
    return {k: v.detach().clone() for k, v in adapter_parameters(method.policy, policy).items()}


def _base(method):
    return {n: p.detach().clone() for n, p in method.policy.named_parameters() if "lora_" not in n}


def _changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_both_adapters_change_and_the_base_does_not():
    method, task = _method(["dupo.schedule=simultaneous", "dupo.lr_explore=1e-2",
                            "dupo.lr_exploit=1e-2"])  # fmt: skip
    explore, exploit, base = (
        _snapshot(method, "explore"),
        _snapshot(method, "exploit"),
        _base(method),
    )
    # Identical initialisation: both policies start as the same (base) model.
    assert all(torch.equal(explore[k], exploit[k]) for k in explore)
    metrics = method.step(0, list(task.train_examples())[:2])
    assert _changed(explore, _snapshot(method, "explore"))
    assert _changed(exploit, _snapshot(method, "exploit"))
    after = _base(method)
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert metrics["explore/updated"] == metrics["exploit/updated"] == 1.0
    for p in ("explore", "exploit"):
        for key in ("reward/mean", "entropy/mean", "kl", "diversity/distinct_answers",
                    "diversity/distinct_2", "cross_reward/mean", "lr_scale"):  # fmt: skip
            assert math.isfinite(metrics[f"{p}/{key}"]), (p, key)
    assert "explore/shared_count" in metrics and "explore/novelty/mean" in metrics


def test_alternation_moves_only_the_active_adapter():
    method, task = _method(["dupo.schedule=alternating", "dupo.alternating_interval=1",
                            "dupo.lr_explore=1e-2", "dupo.lr_exploit=1e-2"])  # fmt: skip
    assert [method.active_policies(s) for s in range(3)] == [
        ("explore",),
        ("exploit",),
        ("explore",),
    ]
    examples = list(task.train_examples())[:2]
    for step, moving, frozen in [(0, "explore", "exploit"), (1, "exploit", "explore")]:
        before_m, before_f = _snapshot(method, moving), _snapshot(method, frozen)
        metrics = method.step(step, examples)
        assert _changed(before_m, _snapshot(method, moving))
        after_f = _snapshot(method, frozen)
        assert all(torch.equal(before_f[k], after_f[k]) for k in before_f)
        assert metrics[f"{moving}/updated"] == 1.0 and metrics[f"{frozen}/updated"] == 0.0
        # the frozen policy's entropy and KL are still reported every step
        assert math.isfinite(metrics[f"{frozen}/entropy/mean"])
        assert math.isfinite(metrics[f"{frozen}/kl"])


def test_schedule_blocks_and_first_policy():
    method, _ = _method(["dupo.alternating_interval=3", "dupo.first_policy=exploit"])
    active = [method.active_policies(s)[0] for s in range(7)]
    assert active == ["exploit"] * 3 + ["explore"] * 3 + ["exploit"]


def test_without_interactions_it_is_two_independent_grpo_runs():
    lrs = {"explore": 1e-2, "exploit": 3e-3}
    method, task = _method(["dupo.schedule=simultaneous", f"dupo.lr_explore={lrs['explore']}",
                            f"dupo.lr_exploit={lrs['exploit']}", *INDEPENDENT])  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():  # start away from the base, so that the KL term has a gradient
        for p in lrs:
            for key, param in adapter_parameters(method.policy, p).items():
                if "lora_B" in key:
                    param.normal_(0, 0.05)
    start = {p: _snapshot(method, p) for p in lrs}
    metrics = method.step(0, list(task.train_examples())[:2])
    assert metrics["explore/kl"] > 1e-4 and metrics["exploit/kl"] > 1e-4
    state = method.last_state
    full = state.batch
    for p, lr in lrs.items():
        grpo, _ = _method(["lora.enabled=true", f"optim.lr={lr}", "grpo.kl_coef=0.1"], "grpo")
        params = adapter_parameters(grpo.policy, "default")
        with torch.no_grad():
            for key, value in start[p].items():
                params[key].copy_(value)
        # The same responses and task rewards, with GRPO's own advantages, loss and update.
        batch = full.select(state.batches[p].per_row.source_row)
        batch.per_row, batch.advantages, batch.loss_mask = None, None, None
        grpo_state = grpo.State(step=0, examples=state.examples, batch=batch)
        grpo.advantages(grpo_state)
        grpo.policy.train()
        grpo.update(grpo_state)
        mine = _snapshot(method, p)
        moved = max((mine[k] - start[p][k]).abs().max().item() for k in mine)
        assert moved > 1e-4, p
        for key, value in params.items():
            torch.testing.assert_close(mine[key], value.detach(), atol=1e-6, rtol=1e-5)


def test_response_sharing_uses_both_adapters_log_probs():
    method, task = _method(["dupo.schedule=simultaneous", "dupo.success_reward=0.0",
                            "dupo.share_is_cap=1.5", "dupo.distill_coef=0"])  # fmt: skip
    with torch.no_grad():  # make the policies differ, so the weights are not all 1
        for key, param in adapter_parameters(method.policy, "explore").items():
            if "lora_B" in key:
                param.normal_(0, 0.3)
    examples = list(task.train_examples())[:2]
    before = {p: _snapshot(method, p) for p in ("explore", "exploit")}
    metrics = method.step(0, examples)
    step_state = method.last_state
    batch = step_state.batches["exploit"]
    shared = batch.per_row.shared
    assert shared.any() and metrics["explore/shared_count"] == shared.sum().item()
    own = batch.per_row.own
    task_r = step_state.batch.rewards[batch.per_row.source_row]
    for i in shared.nonzero().squeeze(-1).tolist():  # each beats the exploiter's own mean
        same = own & (batch.group_ids == batch.group_ids[i])
        assert task_r[i] > task_r[same].mean()
    # shared rows join the exploiter's groups: one advantage computation over own + shared
    pg = own | shared
    expected_adv = grpo_advantages(batch.rewards[pg], batch.group_ids[pg]).advantages
    torch.testing.assert_close(batch.advantages[pg], expected_adv)
    with torch.no_grad():  # restore the weights the step saw
        for p, state in before.items():
            params = adapter_parameters(method.policy, p)
            for key, value in state.items():
                params[key].copy_(value)
    rows = shared.nonzero().squeeze(-1)
    sub = batch.select(rows)
    temperature = method.sampling.temperature
    with torch.no_grad():
        explore = score_tokens(activate_adapter(method.policy, "explore"), sub, temperature).logp
        exploit = score_tokens(activate_adapter(method.policy, "exploit"), sub, temperature).logp
    mask = sub.response_mask.bool()
    assert (explore - exploit)[mask].abs().max() > 1e-3
    torch.testing.assert_close(batch.per_row.behaviour_logp[rows][mask], explore[mask])
    is_weights = method.share_weights(step_state.trained["exploit"].logp, batch.per_row)
    expected = (exploit - explore).exp().clamp(max=1.5)
    torch.testing.assert_close(is_weights[rows][mask], expected[mask])
    # the exploiter's own rows are on-policy: weight exactly 1
    own_mask = batch.response_mask[~shared].bool()
    assert (is_weights[~shared][own_mask] == 1).all()


def test_adaptive_weighting_scales_the_faster_policys_lr():
    method, task = _method(["dupo.schedule=simultaneous", "dupo.adaptive_window=2",
                            "dupo.adaptive_tolerance=0", "dupo.lr_explore=1e-3"])  # fmt: skip
    method.reward_history = {"explore": [0.0, 0.0, 1.0], "exploit": [0.0, 0.0, 0.0]}
    metrics = method.step(0, list(task.train_examples())[:2])
    assert metrics["explore/lr_scale"] < 0.5
    assert metrics["exploit/lr_scale"] == 1.0
    assert metrics["explore/lr"] == pytest.approx(1e-3 * metrics["explore/lr_scale"])


@pytest.mark.parametrize(
    "override, message",
    [("lora.enabled=false", "LoRA"), ("rollout.group_size=3", "samples per prompt")],
)
def test_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=dupo", *SMALL, override])


def test_activate_adapter_makes_exactly_one_adapter_trainable():
    method, _ = _method([])
    for name, other in (("explore", "exploit"), ("exploit", "explore")):
        activate_adapter(method.policy, name, trainable=True)
        assert method.policy.active_adapter == name
        assert all(p.requires_grad for p in adapter_parameters(method.policy, name).values())
        assert not any(p.requires_grad for p in adapter_parameters(method.policy, other).values())
        base = [p for n, p in method.policy.named_parameters() if "lora_" not in n]
        assert base and not any(p.requires_grad for p in base)
    activate_adapter(method.policy, "exploit", trainable=False)
    assert not any(p.requires_grad for p in method.policy.parameters())
    with pytest.raises(ValueError, match="no adapter"):
        activate_adapter(method.policy, "nope")


def _handmade_batch():
    """One prompt, G = 4: exploiter rows 0-1 (reward 0, 0), explorer rows 2-3 (1, 0).
    Explorer row 2 repeats exploiter row 0's tokens; row 3 shares no bigram with either."""
    from tandemrl.rollout import RolloutBatch

    resp = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23], [10, 11, 12, 13], [30, 31, 32, 33]])
    batch = RolloutBatch(
        prompt_ids=torch.full((4, 2), 5), prompt_mask=torch.ones(4, 2, dtype=torch.long),
        response_ids=resp, response_mask=torch.ones(4, 4, dtype=torch.long),
        group_ids=torch.zeros(4, dtype=torch.long), example_index=[0] * 4,
        completions=["a", "b", "a", "c"], truncated=torch.ones(4, dtype=torch.bool),
        rewards=torch.tensor([0.0, 0.0, 1.0, 0.0]),
    )  # fmt: skip
    batch.per_row = SampledBy(explore=torch.tensor([False, False, True, True]))
    return batch


def test_training_rewards_sharing_and_distillation_by_hand():
    method, _ = _method(["dupo.cross_reward_weight=0.3", "dupo.diversity_coef=0.1"])
    full = _handmade_batch()
    inter = method.interactions(full, ("explore", "exploit"))
    assert inter.give_e.tolist() == [False, False, True, False]
    assert not inter.give_x.any()  # the exploiter has no successful response
    # row 2 in the exploiter's group [0, 0, 1]: mean 1/3, Bessel std 1/sqrt(3) -> A = 2/sqrt(3)
    a = 2 / math.sqrt(3)
    torch.testing.assert_close(inter.cross, torch.tensor([0.0, 0.0, a, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(inter.novelty, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    expected = torch.tensor([0.0, 0.0, 1.0 + 0.3 * a, 0.1])
    torch.testing.assert_close(inter.train_rewards, expected, atol=1e-5, rtol=0)

    batch = method.policy_batch(full, "exploit", inter)
    assert batch.per_row.source_row.tolist() == [0, 1, 2]
    assert batch.per_row.shared.tolist() == [False, False, True]
    s = 1 / math.sqrt(3)
    torch.testing.assert_close(batch.advantages, torch.tensor([-s, -s, a]), atol=1e-5, rtol=0)
    assert batch.per_row.distill_mask.sum(-1).tolist() == [0, 0, 4]
    assert batch.per_row.kl_mask.sum(-1).tolist() == [4, 4, 0]  # KL on own samples only

    method.cfg.response_sharing = False  # distillation alone: row 2 joins with no PG term
    batch = method.policy_batch(full, "exploit", inter)
    assert batch.per_row.shared.tolist() == [False, False, False]
    assert batch.train_mask.sum(-1).tolist() == [4, 4, 0]
    assert batch.advantages.abs().sum() == 0  # own group [0, 0] alone has no signal
    assert batch.per_row.distill_mask.sum(-1).tolist() == [0, 0, 4]


def test_distillation_term_is_coef_times_mean_nll():
    from tandemrl.algos import LossNormalizer

    method, _ = _method(["dupo.kl_coef=0", "dupo.distill_coef=0.5"])
    full = _handmade_batch()
    batch = method.policy_batch(full, "exploit", method.interactions(full, ("explore", "exploit")))
    batch.per_row.behaviour_logp = torch.zeros(3, 4)
    rows = batch.per_row
    norms = TermNormalizers(*(LossNormalizer.from_masks(m) for m in
                              (batch.train_mask, rows.kl_mask, rows.distill_mask)))  # fmt: skip
    with torch.no_grad():
        with_distill = method.loss("exploit", batch, norms)
        method.cfg.distill_coef = 0.0
        without = method.loss("exploit", batch, norms)
    nll = -with_distill.scores.logp[2].mean()
    assert with_distill.metrics["distill_nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert (with_distill.loss - without.loss).item() == pytest.approx(0.5 * nll.item(), rel=1e-4)


def test_gradient_sharing_adds_the_other_adapters_gradient():
    method, _ = _method([])
    e = adapter_parameters(method.policy, "explore")
    x = adapter_parameters(method.policy, "exploit")
    ge = {k: torch.randn_like(p) for k, p in e.items()}
    gx = {k: torch.randn_like(p) for k, p in x.items()}
    for k in e:
        e[k].grad, x[k].grad = ge[k].clone(), gx[k].clone()
    method.share_adapter_gradients(0.25)
    for k in e:
        torch.testing.assert_close(e[k].grad, ge[k] + 0.25 * gx[k])
        torch.testing.assert_close(x[k].grad, gx[k] + 0.25 * ge[k])


def test_lower_layers_can_be_shared_with_adapters_on_the_top_layers_only():
    method, task = _method(["lora.top_layers=1", "dupo.schedule=simultaneous"])
    for p in ("explore", "exploit"):
        names = list(adapter_parameters(method.policy, p))
        assert names and all(".layers.1." in n for n in names), names
    method.step(0, list(task.train_examples())[:2])  # still trains


def test_state_dict_round_trip_restores_both_optimizers():
    method, task = _method(["dupo.schedule=simultaneous"])
    method.step(0, list(task.train_examples())[:2])
    state = method.state_dict()
    fresh, _ = _method(["dupo.schedule=simultaneous"])
    fresh.load_state_dict(state)
    for p in ("explore", "exploit"):
        a = method.update_engine.optimizers[p].state_dict()
        b = fresh.update_engine.optimizers[p].state_dict()
        assert a["state"].keys() == b["state"].keys() and a["state"]
        for key in a["state"]:
            torch.testing.assert_close(a["state"][key]["exp_avg"], b["state"][key]["exp_avg"])
    assert fresh.reward_history == method.reward_history and fresh.history


@pytest.mark.parametrize("order", ["contiguous", "interleaved"])
def test_rows_per_adapter_matches_peft_mixed_batches(order):
    from tandemrl.models.adapters import mixed_adapter_rows, rows_per_adapter

    method, _ = _method([])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ("explore", "exploit"):
            for key, param in adapter_parameters(method.policy, p).items():
                if "lora_B" in key:
                    param.normal_(0, 0.3)
    if order == "contiguous":
        names = ["exploit"] * 3 + ["explore"] * 2 + ["__base__"]
    else:
        names = ["explore", "exploit", "__base__", "exploit", "explore", "exploit"]
    ids = torch.randint(3, 200, (6, 7))
    model = method.policy.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, adapter_names=names).logits
        context, extra = mixed_adapter_rows(model, names)
        assert extra == {}  # plain LoRA: the fast path is taken
        with context:
            got = model(input_ids=ids).logits
        with rows_per_adapter(model, names[:5]), pytest.raises(RuntimeError, match="6"):
            model(input_ids=ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the patch is gone after the block; rows of an adapter equal a plain run of it, and
    # the other rows differ from it (so a wrong assignment would show)
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and all("forward" not in vars(m) for m in lora_layers)
    activate_adapter(model, "exploit")
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    mine = torch.tensor([n == "exploit" for n in names])
    torch.testing.assert_close(got[mine], plain[mine], atol=1e-5, rtol=1e-5)
    assert (got[~mine] - plain[~mine]).abs().amax(dim=(1, 2)).min() > 1e-3


def test_explorer_entropy_bonus_changes_the_explorer_gradient_only():
    """`explore_entropy_coef` must train the explorer (its entropy carries a gradient) and
    leave the exploiter's loss gradient as it was."""
    from tandemrl.algos import LossNormalizer

    full = _handmade_batch()

    def adapter_grads(coef, policy):
        torch.manual_seed(0)  # the same adapter initialisation for both runs
        method, _ = _method([*INDEPENDENT, "dupo.kl_coef=0", f"dupo.explore_entropy_coef={coef}"])
        with torch.no_grad():  # B = 0 at init would make every adapter gradient but B's zero
            for name, p in method.policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        batch = method.policy_batch(full, policy, method.interactions(full, ("explore", "exploit")))
        batch.per_row.behaviour_logp = torch.zeros(batch.response_ids.shape)
        norms = TermNormalizers(*[LossNormalizer.from_masks(batch.train_mask)] * 3)
        activate_adapter(method.policy, policy, trainable=True)
        method.loss(policy, batch, norms).loss.backward()
        return [p.grad.clone() for p in adapter_parameters(method.policy, policy).values()]

    for policy, moved in (("explore", True), ("exploit", False)):
        plain, bonus = adapter_grads(0.0, policy), adapter_grads(0.5, policy)
        diff = sum(float((a - b).abs().sum()) for a, b in zip(plain, bonus, strict=True))
        assert (diff > 1e-6) == moved, (policy, diff)
