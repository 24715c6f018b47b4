"""DiPO as a method: reallocation on hand-built batches (perplexities set by hand), validity
fallback, alpha = 0 is GRPO, the combined gradient, dynamic sampling, state and a CLI run."""

from __future__ import annotations

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers toy_letters)
from tandemrl.algos import LossNormalizer
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.models import load_model
from tandemrl.tasks import get_task
from tests.runs import train_tiny


def _method(overrides):
    cfg = load_config(
        None, ["model=tiny", "task=toy_letters", "rollout.max_new_tokens=6", *overrides]
    )
    task = get_task(cfg.task, **cfg.task_options)
    return get_method_class(cfg.method)(RunContext(cfg, load_model("tiny"), task)), task


# Four groups of four. Previous batch (in the queue): right answers at perplexity 1.0-2.0,
# wrong ones at 3.0-4.0, so the learned threshold falls between 2.0 and 3.0 and is valid.
# g0: all wrong, low perplexity   -> explore: its highest-perplexity row (1.8, row 3) gets 1
# g1: all right, high perplexity  -> exploit: its highest-perplexity row (3.9, row 5) gets 0
# g2: all wrong, high perplexity  -> nothing (already where it belongs)
# g3: mixed                       -> nothing (GRPO already has a signal)
REWARDS = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0]
PPL = [1.5, 1.6, 1.7, 1.8, 3.5, 3.9, 3.6, 3.7, 3.2, 3.3, 3.4, 3.5, 1.2, 3.3, 1.4, 3.1]
PREV_PPL = torch.cat([torch.linspace(1.0, 2.0, 20), torch.linspace(3.0, 4.0, 20)])
PREV_RIGHT = torch.cat([torch.ones(20), torch.zeros(20)])


def _hand_state(method, task, rewards=REWARDS, ppl=PPL, prev=(PREV_PPL, PREV_RIGHT)):
    """A step state after `prepare`, with rewards and perplexities set by hand."""
    examples = list(task.train_examples())[:4]
    batch = method.rollout(0, examples)
    assert len(batch) == 16
    batch.rewards = torch.tensor(rewards, dtype=torch.float32)
    batch.reward_matrix = batch.rewards.unsqueeze(-1)
    batch.reward_names = ["correct"]
    state = method.State(step=0, examples=examples, batch=batch)
    state.perplexity = torch.tensor(ppl)
    if prev is not None:
        method.queue.push(*prev)
    return state


def _advantages(method, state):
    """The `advantages` hook, and the term normalisers the update would set for the batch."""
    metrics = method.advantages(state)
    state.main_normalizer, state.realloc_normalizer = method.term_normalizers(state.batch)
    return metrics


def test_reallocation_picks_the_top_perplexity_response_in_the_right_direction():
    method, task = _method(["method=dipo", "rollout.prompts_per_step=4"])
    state = _hand_state(method, task)
    batch = state.batch
    metrics = _advantages(method, state)
    assert metrics["dipo/valid"] == 1.0
    assert 2.0 < metrics["dipo/threshold"] < 3.0
    assert metrics["dipo/explore_groups"] == 1 and metrics["dipo/exploit_groups"] == 1
    assert metrics["dipo/zero_var_groups"] == 3 and metrics["dipo/used_groups"] == 2
    adv = batch.per_row.realloc_advantages
    # R_r of g0 = [0, 0, 0, 1]: GRPO z-scores with unbiased std 0.5 -> [-0.5, -0.5, -0.5, 1.5].
    torch.testing.assert_close(adv[:4], torch.tensor([-0.5, -0.5, -0.5, 1.5]), atol=1e-4, rtol=0)
    # R_r of g1 = [1, 0, 1, 1]: the 3.9 row is pushed down.
    torch.testing.assert_close(adv[4:8], torch.tensor([0.5, -1.5, 0.5, 0.5]), atol=1e-4, rtol=0)
    assert adv[8:].abs().sum() == 0
    # The main term is plain GRPO: only the mixed group g3 has an advantage.
    assert batch.advantages[:12].abs().sum() == 0 and batch.advantages[12:].abs().sum() > 0


def test_space_all_needs_every_member_on_the_side():
    method, task = _method(["method=dipo", "dipo.space=all", "rollout.prompts_per_step=4"])
    ppl = list(PPL)
    ppl[0] = 2.9  # g0's mean stays low, but one member now sits above the threshold
    state = _hand_state(method, task, ppl=ppl)
    metrics = _advantages(method, state)
    assert metrics["dipo/valid"] == 1.0 and 1.9 < metrics["dipo/threshold"] < 2.9
    assert metrics["dipo/explore_groups"] == 0 and metrics["dipo/exploit_groups"] == 1


def test_invalid_threshold_reallocates_nothing_and_says_why(capsys):
    """Right answers at HIGH perplexity: the threshold is invalid; the loss is GRPO's."""
    method, task = _method(["method=dipo", "rollout.prompts_per_step=4"])
    flipped = (PREV_PPL, 1 - PREV_RIGHT)
    state = _hand_state(method, task, prev=flipped)
    batch = state.batch
    metrics = _advantages(method, state)
    assert metrics["dipo/valid"] == 0.0
    assert "mostly" in metrics["dipo/invalid_reason"]
    assert metrics["dipo/used_groups"] == 0
    assert batch.per_row.realloc_advantages.abs().sum() == 0
    assert "no reallocation" in capsys.readouterr().err
    norm = LossNormalizer.from_masks(batch.train_mask)
    loss = method.loss(batch, norm, state).loss
    grpo_loss = method.loss_from_scores(batch, _scores(method, batch), norm).loss
    assert loss.item() == pytest.approx(grpo_loss.item(), abs=1e-7)


def _scores(method, batch):
    from tandemrl.rollout import score_tokens

    return score_tokens(method.policy, batch, method.sampling.temperature, with_entropy=True)


def _grads(method, loss):
    method.policy.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in method.policy.parameters() if p.grad is not None]


def test_objective_is_grpo_plus_alpha_times_the_reallocated_term():
    """The ratio is 1 at the one update: grad J(R) + alpha J(R_r) = grad of the GRPO loss with
    advantages A + alpha A_r (no dynamic sampling: one normaliser for both terms)."""
    method, task = _method(["method=dipo", "dipo.alpha=0.3", "rollout.prompts_per_step=4"])
    state = _hand_state(method, task)
    batch = state.batch
    _advantages(method, state)
    norm = LossNormalizer.from_masks(batch.train_mask)
    out = method.loss(batch, norm, state)
    loss, metrics = out.loss, out.metrics
    assert "dipo/realloc_loss" in metrics
    g_dipo = _grads(method, loss)
    combined = batch.select(list(range(16)))
    combined.advantages = batch.advantages + 0.3 * batch.per_row.realloc_advantages
    ref = method.loss_from_scores(combined, _scores(method, combined), norm).loss
    g_ref = _grads(method, ref)
    assert any(g.abs().sum() > 0 for g in g_dipo)
    for a, b in zip(g_dipo, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_alpha_zero_steps_exactly_like_grpo():
    grpo, task = _method(["method=grpo", "optim.lr=1e-2", "rollout.prompts_per_step=4"])
    dipo, _ = _method(
        ["method=dipo", "dipo.alpha=0", "optim.lr=1e-2", "rollout.prompts_per_step=4"]
    )
    examples = list(task.train_examples())[:4]
    m_grpo = grpo.step(0, examples)
    m_dipo = dipo.step(0, examples)
    assert m_grpo["loss"] == m_dipo["loss"] and m_grpo["grad_norm"] > 0
    for a, b in zip(grpo.policy.parameters(), dipo.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_dynamic_sampling_drops_a_group_from_the_main_term_but_not_the_reallocated_one():
    method, task = _method(
        ["method=dipo", "dipo.dynamic_sampling=true", "rollout.prompts_per_step=4"]
    )
    state = _hand_state(method, task)
    batch = state.batch
    _advantages(method, state)
    main_rows = batch.per_row.main_mask.sum(-1) > 0
    all_rows = batch.train_mask.sum(-1) > 0
    assert main_rows.tolist() == [False] * 12 + [True] * 4  # only the mixed group g3
    assert all_rows.all()  # g0 and g1 still enter the loss through R_r
    main_norm, realloc_norm = state.main_normalizer, state.realloc_normalizer
    assert main_norm.num_sequences == 4 and realloc_norm.num_sequences == 16
    norm = LossNormalizer.from_masks(batch.train_mask)
    loss = method.loss(batch, norm, state).loss
    g_with = _grads(method, loss)
    method.cfg.alpha = 0.0
    g_without = _grads(method, method.loss(batch, norm, state).loss)
    # Equal-length responses make the R_r loss value 0 (z-scores sum to 0), not its gradient.
    assert any(not torch.allclose(a, b) for a, b in zip(g_with, g_without, strict=True))


def test_queue_and_running_total_survive_state_dict():
    method, task = _method(["method=dipo", "rollout.prompts_per_step=4"])
    _advantages(method, _hand_state(method, task))
    state = method.state_dict()
    fresh, _ = _method(["method=dipo", "rollout.prompts_per_step=4"])
    fresh.load_state_dict(state)
    assert fresh.used_total == method.used_total == 2
    assert fresh.queue.threshold() == method.queue.threshold()


def test_bad_alpha_stops_early():
    with pytest.raises(ConfigError, match=r"dipo\.alpha"):
        load_config(None, ["model=tiny", "method=dipo", "dipo.alpha=-1"])


def test_one_step_run_writes_the_documented_metrics(tmp_path):
    records = train_tiny(
        tmp_path / "run", "method=dipo", "task=toy_letters", "steps=2",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=6",
    )  # fmt: skip
    for rec in records:
        for key in (
            "threshold",
            "valid",
            "explore_groups",
            "exploit_groups",
            "zero_var_groups",
            "all_wrong_groups",
            "all_right_groups",
            "used_groups",
            "used_groups_total",
            "ppl_mean",
        ):
            assert f"dipo/{key}" in rec
        assert rec["dipo/valid"] in (0.0, 1.0)
        assert ("dipo/invalid_reason" in rec) == (rec["dipo/valid"] == 0.0)
        assert rec["dipo/ppl_mean"] > 1.0
    assert records[-1]["dipo/used_groups_total"] == sum(r["dipo/used_groups"] for r in records)
    for rec in records:  # a direction acts only on its candidates; both are uniform groups
        assert rec["dipo/explore_groups"] <= rec["dipo/all_wrong_groups"]
        assert rec["dipo/exploit_groups"] <= rec["dipo/all_right_groups"]
        uniform = rec["dipo/all_wrong_groups"] + rec["dipo/all_right_groups"]
        assert rec["dipo/zero_var_groups"] <= uniform  # an all-equal group is on one side


def test_uniform_groups_count_each_directions_candidates():
    from tandemrl.methods.dipo import _uniform_groups

    nan = float("nan")
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, nan, 0.2, nan, nan])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # group 3: one abstention, the answered one below 0.5: all wrong; group 4: nothing answered
    assert _uniform_groups(rewards, groups, 0.5) == {
        "dipo/all_wrong_groups": 2.0,
        "dipo/all_right_groups": 1.0,
    }


def test_uniform_groups_leave_out_groups_with_variance():
    from tandemrl.methods.dipo import _uniform_groups

    # both below 0.5 but unequal: GRPO has signal there, DiPO does not reallocate it
    rewards = torch.tensor([0.1, 0.2, 0.7, 0.7])
    groups = torch.tensor([0, 0, 1, 1])
    assert _uniform_groups(rewards, groups, 0.5) == {
        "dipo/all_wrong_groups": 0.0,
        "dipo/all_right_groups": 1.0,
    }
