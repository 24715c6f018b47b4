"""Every advertised option of the policy-gradient methods does what its paper says: a matrix
of methods x losses x aggregations, several updates that make the clip bind, DAPO dynamic
sampling, Dr.GRPO's constant normaliser, D³S, overlong shaping, and the dual-policy method's
interactions crediting only what happened."""

from __future__ import annotations

import math

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy tasks)
from tandemrl.algos import AGGREGATIONS, POLICY_LOSSES
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import METHODS, RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.tasks import get_task
from tests.runs import train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model=tiny", "rollout.prompts_per_step=2", "rollout.group_size=4",
         "rollout.max_new_tokens=6", "optim.lr=1e-2"]  # fmt: skip
TASKS = {"gdpo": "toy_case_rewards", "gd2po": "toy_case_rewards"}


def _method(name: str, *overrides: str):
    task_name = TASKS.get(name, "toy_letters")
    cfg = load_config(None, [f"method={name}", f"task={task_name}", *SMALL, *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    method = get_method_class(cfg.method)(RunContext(cfg, load_model("tiny"), task))
    return method, list(task.train_examples())


def _trainable(method) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in method.policy.named_parameters()
        if "lora_" in n or p.requires_grad
    }


def _builtin_methods() -> list[str]:
    get_method_class("grpo")
    return sorted(METHODS)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS.names()))
@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES.names()))
@pytest.mark.parametrize("name", _builtin_methods())
def test_every_method_loss_and_aggregation_trains_or_is_refused(name, loss, aggregation):
    args = [f"{name}.loss={loss}", f"{name}.aggregation={aggregation}"]
    if name in ("dpo", "ipo"):  # a preference loss on pairs: no surrogate, no aggregation
        with pytest.raises(ConfigError, match=f"unknown config key '{name}.loss'"):
            load_config(None, [f"method={name}", *SMALL, *args])
        return
    method, examples = _method(name, *args)
    before = _trainable(method)
    metrics = method.step(0, examples[:2])
    assert math.isfinite(metrics["loss"]), metrics["loss"]
    after = dict(method.policy.named_parameters())
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    if loss == "bapo":
        assert any(k.endswith("bapo/clip_high") for k in metrics)


@pytest.mark.parametrize("name", ["grpo", "dipo", "policy_split", "dupo", "ppo"])
def test_a_second_epoch_makes_the_clip_bind(name):
    """One update a step: π_old is π, the ratio is 1 and nothing is clipped. Two epochs: the
    second pass sees the updated policy against π_old scored before the first."""
    extra = ["dupo.schedule=simultaneous", "dupo.lr_explore=1e-2", "dupo.lr_exploit=1e-2"]
    fractions = {}
    for epochs in (1, 2):
        torch.manual_seed(0)
        args = [f"{name}.ppo_epochs={epochs}", f"{name}.clip_low=0.01", f"{name}.clip_high=0.01"]
        method, examples = _method(name, *args, *(extra if name == "dupo" else []))
        metrics = method.step(0, examples[:2])
        key = "exploit/clip/frac" if name == "dupo" else "clip/frac"
        fractions[epochs] = metrics[key]
    assert fractions[1] == 0.0
    assert fractions[2] > 0.0


def test_minibatches_count_updates_in_the_schedule():
    method, examples = _method("grpo", "grpo.ppo_epochs=2", "grpo.minibatches=2", "steps=3")
    assert method.update_engine.groups["policy"].total_updates == 12
    method.step(0, examples[:2])
    state = method.update_engine.optimizers["policy"].state_dict()["state"]
    assert next(iter(state.values()))["step"] == 4


def test_bapo_bounds_are_searched_once_per_update_and_move():
    method, examples = _method("grpo", "grpo.loss=bapo", "grpo.ppo_epochs=2",
                               "grpo.loss_options={target_positive: 0.9}")  # fmt: skip
    metrics = method.step(0, examples[:2])
    # the search widened the upper bound past its start (ratio 1.2) to reach the target share
    assert metrics["bapo/clip_high"] > 0.2 + 1e-9
    with pytest.raises(ConfigError, match="bapo sets its own clip bounds"):
        load_config(None, ["model=tiny", "grpo.loss=bapo", "grpo.loss_options={clip_low: 0.1}"])


def test_dynamic_sampling_fills_the_batch_with_groups_that_have_variance(tmp_path):
    records = train_tiny(
        tmp_path / "run", "task=toy_binary", "steps=3", "rollout.prompts_per_step=4",
        "rollout.group_size=4", "rollout.max_new_tokens=8", "grpo.dynamic_sampling=true",
        "grpo.max_sampling_rounds=8",
    )  # fmt: skip
    assert sum(r["dynamic_sampling/extra_prompts"] for r in records) > 0  # it had to refill
    for r in records:
        assert r["dynamic_sampling/filled"] == 1.0
        assert r["dynamic_sampling/groups_with_signal"] == 4.0
        assert r["advantage/kept_frac"] == 1.0


def test_dynamic_sampling_batch_in_detail():
    method, examples = _method("grpo", "task=toy_binary", "rollout.prompts_per_step=4",
                               "grpo.dynamic_sampling=true", "grpo.max_sampling_rounds=8")  # fmt: skip
    state, metrics = method.collect(0, examples[:4])
    batch = state.batch
    assert len(batch) == 16 and len(batch.group_ids.unique()) == 4  # the batch keeps its size
    for g in batch.group_ids.unique():
        rewards = batch.rewards[batch.group_ids == g]
        assert rewards.max() > rewards.min()  # every group in the update has variance
    assert len(state.examples) == 4 + metrics["dynamic_sampling/extra_prompts"]


def test_dr_grpo_normaliser_is_the_generation_budget_every_step():
    method, examples = _method("grpo", "rollout.max_new_tokens=12",
                               "grpo.aggregation=seq-mean-token-sum-norm",
                               "grpo.advantage_options={std_mode: none}")  # fmt: skip
    seen = []
    real_loss = method.loss

    def recording(micro, normalizer, state):
        seen.append((micro.response_ids.shape[1], normalizer.horizon))
        return real_loss(micro, normalizer, state)

    method.loss = recording
    state, _ = method.collect(0, examples[:2])
    method.update(state)
    short, _ = method.collect(1, examples[2:4])
    cut = short.batch.select(list(range(len(short.batch))))
    cut.response_ids, cut.response_mask = cut.response_ids[:, :5], cut.response_mask[:, :5]
    cut.loss_mask = cut.loss_mask[:, :5]
    short.batch = cut
    method.update(short)
    widths = {w for w, _ in seen}
    assert widths == {12, 5}  # responses of different lengths ...
    assert {h for _, h in seen} == {12.0}  # ... one constant: rollout.max_new_tokens


def test_d3s_keeps_the_selected_rollouts_and_tokens():
    samples, examples = _method("grpo", "grpo.d3s.sample_keep_start=0.5",
                                "grpo.d3s.sample_keep_end=0.5")  # fmt: skip
    state, metrics = samples.collect(0, examples[:2])
    rows = state.batch.train_mask.sum(-1) > 0
    assert rows.sum() == 4 and metrics["d3s/sample_kept_frac"] == 0.5  # 2 of each group of 4
    for g in state.batch.group_ids.unique():  # the pair whose advantages vary most
        adv = state.batch.advantages[state.batch.group_ids == g]
        kept = adv[rows[state.batch.group_ids == g]]
        assert kept.max() == adv.max() and kept.min() == adv.min()
    tokens, examples = _method("grpo", "grpo.d3s.token_keep_start=0.25",
                               "grpo.d3s.token_keep_end=1.0", "steps=4")  # fmt: skip
    state, metrics = tokens.collect(0, examples[:2])
    kept = state.batch.train_mask.sum() / state.batch.response_mask.sum()
    assert metrics["d3s/token_keep"] == 0.25 and 0.2 < kept.item() <= 0.3
    state, metrics = tokens.collect(2, examples[:2])  # the schedule relaxes linearly
    assert metrics["d3s/token_keep"] == pytest.approx(0.625)
    with pytest.raises(ConfigError, match="d3s.token_keep_end"):
        load_config(None, ["model=tiny", "grpo.d3s.token_keep_end=0"])


def test_overlong_shaping_is_a_named_reward(tmp_path):
    records = train_tiny(
        tmp_path / "run", "task=toy_letters", "steps=1", "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=6", "overlong.buffer=3", "overlong.penalty_factor=0.5",
    )  # fmt: skip
    (rec,) = records
    # the tiny model rarely stops: most responses hit the budget and get -1
    assert -1.0 <= rec["reward/overlong/mean"] < 0.0
    assert rec["reward/mean"] == pytest.approx(
        rec["reward/lowercase/mean"] + 0.5 * rec["reward/overlong/mean"], abs=1e-5
    )
    with pytest.raises(ConfigError, match="overlong.buffer"):
        load_config(None, ["model=tiny", "overlong.buffer=99", "rollout.max_new_tokens=8"])


def test_dual_policy_cross_reward_is_zero_in_a_step_without_sharing():
    # alternating, explorer first: the exploiter does not train in step 0, nothing is shared
    method, examples = _method("dupo", "dupo.alternating_interval=1")
    metrics = method.step(0, examples[:2])
    assert metrics["explore/shared_count"] == 0.0
    assert (
        metrics["explore/cross_reward/mean"] == 0.0 and metrics["exploit/cross_reward/mean"] == 0.0
    )
    assert metrics["explore/eligible_count"] > 0  # there were responses it could have shared
    # sharing switched off: no credit either; on: credit where rows were shared
    for sharing in ("false", "true"):
        method, examples = _method("dupo", "dupo.schedule=simultaneous",
                                   f"dupo.response_sharing={sharing}")  # fmt: skip
        metrics = method.step(0, examples[:2])
        credited = metrics["explore/cross_reward/mean"] > 0
        assert credited == (metrics["explore/shared_count"] > 0) == (sharing == "true")
        assert metrics["exploit/cross_reward/mean"] == 0.0  # nothing flows the other way


def test_dual_policy_gradient_sharing_needs_both_policies():
    with pytest.raises(ConfigError, match="gradient_sharing=0.2 needs both"):
        load_config(None, ["model=tiny", "method=dupo", "dupo.gradient_sharing=0.2"])
    method, examples = _method("dupo", "dupo.alternating_interval=1")
    assert method.step(0, examples[:2])["dupo/grad_share"] == 0.0
    method, examples = _method("dupo", "dupo.schedule=simultaneous")
    assert method.step(0, examples[:2])["dupo/grad_share"] == 0.1
