"""GDPO / GD²PO methods and the weighted-sum baseline: hand-built batches on the tiny model,
config checks, per-reward diagnostics, and one-step training runs."""

from __future__ import annotations

import math

import pytest
import torch

from tandemrl.algos import grpo_advantages
from tandemrl.algos.reward_stats import conflicts, multi_reward_stats, query_weights
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.tasks import get_task
from tests.runs import train_tiny


def _method(overrides):
    cfg = load_config(None, ["model=tiny", "task=toy_two_rewards", *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    method = get_method_class(cfg.method)(RunContext(cfg, load_model("tiny"), task))
    return method, task


# Group 0: lower = [1, 1, 0, 0], digit = [1, 0, 1, 0]: rows 1 and 2 have per-reward advantages
# of opposite signs (conflict), rows 0 and 3 agree. Group 1: both rewards vary the same way.
LOWER = [1.0, 1.0, 0.0, 0.0, 0.9, 0.1, 0.5, 0.5]
DIGIT = [1.0, 0.0, 1.0, 0.0, 0.8, 0.2, 0.5, 0.5]


def _hand_batch(method, task):
    examples = list(task.train_examples())[:2]
    batch = method.rollout(0, examples)
    assert len(batch) == 8
    batch.reward_matrix = torch.tensor([LOWER, DIGIT]).T
    batch.reward_names = ["lower", "digit"]
    w = torch.tensor([s.weight for s in task.rewards])
    batch.rewards = (batch.reward_matrix * w).sum(-1)
    return batch


def _advantages(method, batch):
    """The method's `advantages` hook on a batch whose rewards are set by hand."""
    return method.advantages(method.State(step=0, examples=[], batch=batch))


def _kept_rows(batch):
    return (batch.train_mask.sum(-1) > 0).tolist()


def test_hard_filter_drops_the_conflicting_rollouts():
    method, task = _method(["method=gd2po", "gd2po.filter=hard", "rollout.prompts_per_step=2"])
    batch = _hand_batch(method, task)
    metrics = _advantages(method, batch)
    assert _kept_rows(batch) == [True, False, False, True, True, True, True, True]
    assert batch.advantages[1] == 0 and batch.advantages[2] == 0
    # Query weight w_q = kept / G: group 0 keeps 2 of 4, group 1 all 4.
    assert metrics["multi_reward/query_weight_min"] == pytest.approx(0.5)
    assert metrics["multi_reward/query_weight_mean"] == pytest.approx(0.75)
    assert metrics["multi_reward/kept_frac"] == pytest.approx(6 / 8)
    assert metrics["multi_reward/conflict_rate"] == pytest.approx(2 / 8)
    assert metrics["gd2po/conflict_rate"] == pytest.approx(2 / 8)


def test_query_weight_scales_the_group_before_whitening():
    """Group 0 keeps 2 of 4 rollouts (w_q = 0.5): its sums are halved relative to group 1."""
    method, task = _method(["method=gd2po", "rollout.prompts_per_step=2"])
    batch = _hand_batch(method, task)
    _advantages(method, batch)
    off, _ = _method(["method=gd2po", "gd2po.query_reweight=false", "rollout.prompts_per_step=2"])
    batch_off = _hand_batch(off, task)
    _advantages(off, batch_off)
    # Whitening is affine over the kept rows: compare differences within each group, where the
    # common shift cancels. Group 0 is scaled by w_q = 0.5 relative to group 1.
    d0_on = batch.advantages[0] - batch.advantages[3]
    d1_on = batch.advantages[4] - batch.advantages[5]
    d0_off = batch_off.advantages[0] - batch_off.advantages[3]
    d1_off = batch_off.advantages[4] - batch_off.advantages[5]
    assert (d0_on / d1_on).item() == pytest.approx(0.5 * (d0_off / d1_off).item(), rel=1e-4)


@pytest.mark.parametrize("tau, kept", [(0.5, True), (0.8, False)])
def test_snr_filter_keeps_a_conflict_whose_snr_is_above_tau(tau, kept):
    """Weights (1, 0.2): a_row1 = (+0.866, -0.173), s = 0.693 / 1.039 = 0.667."""
    method, task = _method(
        ["method=gd2po", "gd2po.filter=snr", f"gd2po.tau={tau}", "rollout.prompts_per_step=2"]
    )
    batch = _hand_batch(method, task)
    metrics = _advantages(method, batch)
    assert _kept_rows(batch)[1:3] == [kept, kept]
    assert metrics["multi_reward/conflict_rate"] == pytest.approx(2 / 8)
    assert (batch.advantages[1] != 0).item() == kept


def test_gdpo_with_one_reward_is_grpo_rescaled():
    """One reward: per-group z-scores whitened over the batch = GRPO's advantage / its std."""
    method, task = _method(
        ["method=gdpo", "task_options.digit_weight=0", "rollout.prompts_per_step=2"]
    )
    batch = _hand_batch(method, task)
    batch.reward_matrix = batch.reward_matrix[:, :1]
    batch.reward_names = ["lower"]
    batch.rewards = batch.reward_matrix[:, 0]
    _advantages(method, batch)
    grpo = grpo_advantages(batch.rewards, batch.group_ids).advantages
    torch.testing.assert_close(batch.advantages, grpo / grpo.std(), atol=1e-5, rtol=1e-4)


def test_sum_mode_is_grpo_on_the_weighted_sum():
    method, task = _method(["method=gdpo", "gdpo.multi_reward=sum", "rollout.prompts_per_step=2"])
    batch = _hand_batch(method, task)
    metrics = _advantages(method, batch)
    expected = grpo_advantages(
        batch.reward_matrix[:, 0] + 0.2 * batch.reward_matrix[:, 1], batch.group_ids
    ).advantages
    torch.testing.assert_close(batch.advantages, expected)
    # The baseline keeps conflicting rows, but the diagnostics still count them.
    assert all(_kept_rows(batch))
    assert metrics["multi_reward/conflict_rate"] == pytest.approx(2 / 8)


def test_multi_reward_stats_hand_computed():
    r = torch.tensor([LOWER, DIGIT]).T
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    r[4:, 1] = 0.3  # digit constant in group 1
    keep = torch.tensor([True, False, False, True, False, False, False, False])
    stats = multi_reward_stats(r, groups, ["lower", "digit"], [1.0, 0.2], keep)
    assert stats["reward/digit/zero_var_group_frac"] == 0.5
    assert stats["reward/lower/zero_var_group_frac"] == 0.0
    assert stats["reward/lower/std"] == pytest.approx(
        torch.tensor(LOWER).std(unbiased=False).item()
    )
    assert stats["multi_reward/groups_all_dropped_frac"] == 0.5
    assert query_weights(keep, groups).tolist() == [0.5, 0.0]
    assert conflicts(r, groups).tolist() == [False, True, True, False] + [False] * 4
    # A zero weight removes a reward from the conflict test.
    assert not conflicts(r, groups, [1.0, 0.0]).any()


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["method=gd2po", "gd2po.filter=snr", "gd2po.tau=1.5"], "gd2po.tau"),
        (["method=gd2po", "gd2po.multi_reward=sum"], "method=gdpo gdpo.multi_reward=sum"),
        (["method=gdpo", "rollout.group_size=1"], "group_size"),
        (["method=gd2po", "gd2po.batch_norm=false"], "gd2po.batch_norm"),
        (["method=gdpo", "gdpo.kl_coef=0.1", "gdpo.kl_in=reward"], "gdpo.kl_in=loss"),
    ],
)
def test_bad_config_stops_early(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, ["model=tiny", "task=toy_two_rewards", *overrides])


@pytest.mark.parametrize(
    "method_args",
    [["method=gdpo", "gdpo.multi_reward=sum"], ["method=gdpo"], ["method=gd2po"]],
)
def test_one_step_run_writes_the_per_reward_metrics(tmp_path, method_args):
    (rec,) = train_tiny(
        tmp_path / "run", *method_args, "task=toy_two_rewards", "steps=1",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=6",
    )  # fmt: skip
    for name in ("lower", "digit"):
        for stat in ("mean", "std", "zero_var_group_frac"):
            assert math.isfinite(rec[f"reward/{name}/{stat}"])
    for key in ("conflict_rate", "kept_frac", "query_weight_mean", "query_weight_min"):
        assert 0.0 <= rec[f"multi_reward/{key}"] <= 1.0
    assert ("gd2po/dropped_frac" in rec) == (method_args == ["method=gd2po"])
    assert math.isfinite(rec["loss"])


def test_bfcl_offers_an_exact_call_reward_with_weights():
    pytest.importorskip("tandemrl.tasks.bfcl")
    task = get_task(
        "bfcl", weights={"exact": 1.0, "args": 0.5, "format": 0.2, "length": 0.2, "name": 0.0}
    )
    assert {s.name: s.weight for s in task.rewards} == {
        "format": 0.2,
        "args": 0.5,
        "length": 0.2,
        "exact": 1.0,
    }
    ex = next(iter(task.train_examples()))
    exact = next(s.fn for s in task.rewards if s.name == "exact")
    length = next(s.fn for s in task.rewards if s.name == "length")
    ((name, answer),) = ex.columns["ground_truth"][0].items()
    args = ", ".join(f"{k}={v[0]!r}" for k, v in answer.items() if v and v[0] != "")
    right = f"{name}({args})"
    chatty = f"Sure! Here is the call you asked for, with every argument: {right}"
    cols = {k: [ex.columns[k]] * 3 for k in ("functions", "ground_truth", "length_budget")}
    completions = [right, chatty, "wrong_function(x=1)"]
    assert exact([None] * 3, completions, **cols) == [1.0, 1.0, 0.0]
    lengths = length([None] * 3, completions, **cols)
    # The chatty right call and the bare wrong call disagree: exact prefers one, length the other.
    assert lengths[0] == 1.0 and lengths[2] == 1.0 and lengths[1] < 1.0


@pytest.mark.parametrize("estimator", ["gd2po", "gdpo"])
def test_a_constant_reward_group_keeps_advantage_exactly_zero(estimator):
    """Group 0: lower = [1, 0, 0, 0], digit = [1, 1, 0, 0]; row 1 conflicts (lower below its
    mean, digit above) and GD²PO's hard filter drops it, so the kept rows' sum is no longer 0
    and whitening shifts every kept row. Group 1 has the same rewards on every row: it must
    still carry no signal (it had +0.055 per row before the rule)."""
    from tandemrl.algos import ADVANTAGES

    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0],
                            [0.5, 0.3], [0.5, 0.3], [0.5, 0.3], [0.5, 0.3]])  # fmt: skip
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    result = ADVANTAGES.get(estimator)(rewards, groups)
    assert torch.equal(result.advantages[4:], torch.zeros(4))
    assert result.advantages[:4].abs().sum() > 0
    if estimator == "gd2po":
        assert result.keep.tolist() == [True, False, True, True] + [True] * 4
        # the shift is there: group 0's kept advantages no longer sum to 0
        assert result.advantages[[0, 2, 3]].sum().abs() > 1e-2
