import math

import pytest
import torch

from tandemrl.algos import (
    PerplexityQueue,
    dipo_reallocate,
    groups_with_signal,
    learn_perplexity_threshold,
    to_reward_tensor,
)

NAN = float("nan")


# ---------------------------------------------------------------- DiPO threshold


def test_threshold_hand_computed_and_tie_to_smallest():
    # ppl 1..6, correct [1,1,1,0,1,0]; error of each midpoint (below predicted correct):
    #   1.5: 0 + 3 wrong above -> 3/6 | 2.5: 2/6 | 3.5: 1/6 | 4.5: 1 + 1 -> 2/6 | 5.5: 1/6
    # tie 3.5 vs 5.5 -> smallest; below acc 1 > .5, above acc 1/3 < .5 -> valid
    res = learn_perplexity_threshold(
        torch.tensor([1.0, 2, 3, 4, 5, 6]), torch.tensor([1, 1, 1, 0, 1, 0])
    )
    assert res.threshold == pytest.approx(3.5)
    assert res.error == pytest.approx(1 / 6)
    assert res.valid and res.reason == "ok"


def test_threshold_unordered_input_and_nan_ignored():
    ppl = torch.tensor([6.0, NAN, 1, 4, 3, 2, 5])
    correct = torch.tensor([0.0, 1, 1, 0, 1, 1, 1])
    res = learn_perplexity_threshold(ppl, correct)
    assert res.threshold == pytest.approx(3.5) and res.valid


def test_threshold_invalid_when_anticorrelated():
    # correct [0,0,1,1] for ppl 1..4: errors 3/4, 1, 3/4 -> tau 1.5, below acc 0 -> invalid
    res = learn_perplexity_threshold(torch.tensor([1.0, 2, 3, 4]), torch.tensor([0, 0, 1, 1]))
    assert res.threshold == pytest.approx(1.5)
    assert not res.valid and "low-ppl" in res.reason


def test_threshold_only_between_distinct_values():
    # only split 1|2 exists; below = [1, 0] has accuracy .5, not > .5 -> invalid
    res = learn_perplexity_threshold(torch.tensor([1.0, 1, 2, 2]), torch.tensor([1, 0, 0, 0]))
    assert res.threshold == pytest.approx(1.5) and not res.valid
    single = learn_perplexity_threshold(torch.tensor([3.0, 3.0]), torch.tensor([1, 0]))
    assert not single.valid and math.isnan(single.threshold)


def test_perplexity_queue_keeps_last_two_batches():
    q = PerplexityQueue(num_batches=2)
    assert not q.threshold().valid
    q.push(torch.tensor([100.0, 200.0]), torch.tensor([1.0, 1.0]))  # evicted below
    q.push(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]))
    q.push(torch.tensor([4.0, 5.0, 6.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert q.threshold().threshold == pytest.approx(3.5)
    clone = PerplexityQueue()
    clone.load_state_dict(q.state_dict())
    assert clone.threshold() == q.threshold()


# ---------------------------------------------------------------- DiPO reallocation


def _dipo_batch():
    rewards = torch.tensor([0.0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1, 1])
    ppl = torch.tensor([1.0, 2.5, 2.0, 4, 6, 5, 1, 2, 3, 5, 6, 1, 2])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4])
    return rewards, ppl, groups


def test_dipo_reallocation_hand_computed():
    # tau = 3:
    # g0 all wrong, mean ppl 1.83 < 3 (exploitation space): highest ppl (2.5) -> 1  [explore]
    # g1 all right, mean ppl 5 > 3 (exploration space): highest ppl (6) -> 0       [exploit]
    # g2 mixed; g3 all wrong but high ppl; g4 all right but low ppl: all -> 0
    rewards, ppl, groups = _dipo_batch()
    out, metrics = dipo_reallocate(rewards, ppl, groups, threshold=3.0, valid=True)
    assert out.tolist() == [0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert metrics["dipo/explore_groups"] == 1 and metrics["dipo/exploit_groups"] == 1


def test_dipo_space_all_is_stricter():
    rewards, ppl, groups = _dipo_batch()
    ppl[0] = 3.5  # g0 mean (3.5 + 2.5 + 2) / 3 = 2.67 < 3, but one member above tau
    by_mean, _ = dipo_reallocate(rewards, ppl, groups, 3.0, True, space="mean")
    by_all, _ = dipo_reallocate(rewards, ppl, groups, 3.0, True, space="all")
    assert by_mean[:3].tolist() == [1, 0, 0]  # highest ppl is now rollout 0
    assert by_all[:3].tolist() == [0, 0, 0]


def test_dipo_invalid_threshold_gives_zeros_and_keeps_abstain():
    rewards, ppl, groups = _dipo_batch()
    out, metrics = dipo_reallocate(rewards, ppl, groups, 3.0, valid=False)
    assert torch.equal(out, torch.zeros(13))
    assert metrics["dipo/valid"] == 0.0
    r = to_reward_tensor([0, None, 0])
    out, _ = dipo_reallocate(r, torch.tensor([1.0, 9.0, 2.0]), torch.zeros(3).long(), 3.0, True)
    # abstained member ignored: group of valid [0, 0] in low space; highest valid ppl -> 1
    assert out[0] == 0 and math.isnan(out[1]) and out[2] == 1


def test_dipo_reallocated_rewards_feed_grpo():
    from tandemrl.algos import grpo_advantages

    rewards, ppl, groups = _dipo_batch()
    out, _ = dipo_reallocate(rewards, ppl, groups, 3.0, True)
    adv = grpo_advantages(out, groups).advantages
    assert adv[1] > 0 and adv[4] < 0  # pushed up / pushed down
    assert torch.equal(adv[6:], torch.zeros(7))


# ---------------------------------------------------------------- DAPO pieces


def test_groups_with_signal():
    r = to_reward_tensor([1, 1, 0, 1, 1, None, 1, 2, None])
    g = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 4])
    # g0 equal; g1 varies; g2 single; g3 and g4 have one valid reward each
    expected = [False, False, True, True, False, False, False, False, False]
    assert groups_with_signal(r, g).tolist() == expected
    multi = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    assert groups_with_signal(multi, torch.tensor([0, 0, 1, 1])).tolist() == [
        True,
        True,
        False,
        False,
    ]
