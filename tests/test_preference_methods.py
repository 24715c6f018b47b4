"""DPO and IPO: loss values on hand-made log-probs, pairs from a reward batch, the offline file's
errors, the implicit reward margin on a separable set, and the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.algos import best_worst_pairs, sequence_logps
from tandemrl.cli import main
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.methods.preference_data import load_preference_jsonl, pair_batch
from tandemrl.models import load_model
from tandemrl.tasks import RewardSpec, get_task

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prefs_arith2.jsonl"
SMALL = ["model=tiny", "task=toy_letters", "rollout.prompts_per_step=2", "rollout.group_size=4",
         "rollout.max_new_tokens=6", "optim.micro_batch_size=4"]  # fmt: skip


def _method(name, overrides):
    cfg = load_config(None, [f"method={name}", *SMALL, *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    return get_method_class(name)(RunContext(cfg, load_model("tiny"), task)), task


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _separable(path, n=4):
    """Chosen replies are lowercase words, rejected ones digits: one feature separates them."""
    rows = [
        {"prompt": f"say something {i}", "chosen": "abc def", "rejected": f"{i}{i} 901"}
        for i in range(n)
    ]
    return _write(path, rows)


# ---------------------------------------------------------------- the losses, by hand


def softplus(x):
    return math.log1p(math.exp(x))


def test_dpo_and_ipo_on_interleaved_pairs_hand_computed(tmp_path):
    """The method's layout is [c0, r0, c1, r1]: pair 0 has h/beta = 1, pair 1 has h/beta = -2."""
    data = _separable(tmp_path / "p.jsonl")
    policy = torch.tensor([-1.0, -3.0, -2.0, -1.0])  # c0 r0 c1 r1
    ref = torch.tensor([-1.5, -2.5, -2.0, -3.0])
    # pair 0: (-1 + 1.5) - (-3 + 2.5) = 1;  pair 1: (-2 + 2) - (-1 + 3) = -2
    dpo, _ = _method("dpo", ["dpo.source=offline", f"dpo.data={data}", "dpo.beta=0.5"])
    loss, metrics = dpo.pair_loss(policy, ref, None, None, 2)
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(1.0)) / 2)
    assert metrics["dpo/chosen_reward"] == pytest.approx((0.25 + 0.0) / 2)
    assert metrics["dpo/rejected_reward"] == pytest.approx((-0.25 + 1.0) / 2)
    assert metrics["dpo/reward_margin"] == pytest.approx((0.5 - 1.0) / 2)
    assert metrics["dpo/accuracy"] == pytest.approx(0.5)
    ipo, _ = _method("ipo", ["ipo.source=offline", f"ipo.data={data}", "ipo.beta=0.25"])
    loss, metrics = ipo.pair_loss(policy, ref, None, None, 2)
    # target margin 1 / (2 * .25) = 2: ((1 - 2)^2 + (-2 - 2)^2) / 2
    assert loss.item() == pytest.approx((1.0 + 16.0) / 2)
    assert metrics["ipo/reward_margin"] == pytest.approx(0.25 * (1.0 - 2.0) / 2)
    # RPO: + alpha * mean(-sum log pi(y_w) / |y_w|); chosen sums -1 over 2 tokens, -2 over 4
    ipo.cfg.rpo_alpha = 2.0
    loss, metrics = ipo.pair_loss(policy, ref, torch.tensor([-1.0, -2.0]), torch.tensor([2, 4]), 2)
    assert loss.item() == pytest.approx(8.5 + 2.0 * (0.5 + 0.5) / 2)
    assert metrics["ipo/sft_nll"] == pytest.approx(0.5)


def test_sequence_logps_sum_and_mean():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-4.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(sequence_logps(logp, mask), torch.tensor([-3.0, -4.0]))
    torch.testing.assert_close(sequence_logps(logp, mask, average=True), torch.tensor([-1.5, -4.0]))


# ---------------------------------------------------------------- online pairs


def test_best_worst_pairs_from_a_hand_made_reward_batch():
    nan = float("nan")
    rewards = torch.tensor([0.0, 1.0, 0.5, 1.0,  # group 7: best row 1 (first of the tied 1s), worst 0
                            0.3, 0.3, 0.3,       # group 2: all equal -> skipped
                            nan, 0.9,            # group 5: one valid reward -> skipped
                            0.2, nan, 0.6])  # group 1: NaN abstains; 11 beats 9  # fmt: skip
    groups = torch.tensor([7, 7, 7, 7, 2, 2, 2, 5, 5, 1, 1, 1])
    pairs = best_worst_pairs(rewards, groups)
    assert pairs.chosen.tolist() == [11, 1]  # ordered by group id: 1, then 7
    assert pairs.rejected.tolist() == [9, 0]
    assert (pairs.groups, pairs.skipped) == (4, 2)
    # a minimum gap of .5 also drops group 1 (gap .4)
    gapped = best_worst_pairs(rewards, groups, min_gap=0.5)
    assert gapped.chosen.tolist() == [1] and gapped.skipped == 3


def test_online_step_pairs_the_best_and_worst_of_each_group():
    method, task = _method("dpo", ["rollout.max_new_tokens=12"])
    state, metrics = method.collect(0, task.train_examples()[:2])
    pairs, full = state.pairs, state.batch
    used = 2 - int(metrics["pairs/skipped"])
    assert used >= 1 and len(pairs) == 2 * used
    for k in range(used):
        g = pairs.group_ids[2 * k]
        group = full.rewards[full.group_ids == g]
        assert pairs.group_ids[2 * k + 1] == g
        assert pairs.rewards[2 * k] == group.max() and pairs.rewards[2 * k + 1] == group.min()
        assert group.max() > group.min()
    assert metrics["pairs/reward_gap_mean"] == pytest.approx(
        (pairs.rewards[0::2] - pairs.rewards[1::2]).mean().item()
    )


def test_a_step_without_any_reward_gap_skips_the_update():
    method, task = _method("ipo", [])
    before = [p.detach().clone() for p in method.policy.parameters()]
    task.rewards = [RewardSpec("flat", lambda prompts, completions, **kw: [0.5] * len(completions))]
    metrics = method.step(0, task.train_examples()[:2])
    assert metrics["pairs/used"] == 0.0 and metrics["pairs/skipped"] == 2.0
    assert metrics["update_empty"] == 1.0 and math.isnan(metrics["loss"])
    assert metrics["update_skipped"] == 0.0  # nothing to learn is not a non-finite fault
    assert all(torch.equal(a, b) for a, b in zip(before, method.policy.parameters(), strict=True))


# ---------------------------------------------------------------- offline data


def test_pair_batch_layout(tmp_path):
    rows = load_preference_jsonl(_separable(tmp_path / "p.jsonl", 2))
    tok = load_model("tiny").tokenizer
    batch = pair_batch(tok, rows)
    assert batch.completions == ["abc def", "00 901", "abc def", "11 901"]
    assert batch.group_ids.tolist() == [0, 0, 1, 1]
    # byte-level tiny tokenizer: one token per character, plus EOS
    assert batch.response_mask.sum(-1).tolist() == [8, 7, 8, 7]
    assert batch.response_ids[1, 6].item() == tok.eos_token_id


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "has no rows"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": "b"}\n',
         r"p.jsonl:3 has no 'rejected'"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{not json\n', r"p.jsonl:2 is not valid"),
        ('{"prompt": "a", "chosen": "", "rejected": "c"}\n', r"p.jsonl:1: 'chosen' must be"),
        ('{"prompt": 3, "chosen": "b", "rejected": "c"}\n', r"p.jsonl:1: 'prompt' must be"),
        ('[1, 2]\n', r"p.jsonl:1 is not a JSON object"),
    ],
)  # fmt: skip
def test_offline_file_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=dpo", *SMALL, "dpo.source=offline", f"dpo.data={path}"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dpo.source=offline"], "needs dpo.data"),
        (["dpo.source=offline", "dpo.data=/nonexistent.jsonl"], "no such file"),
        (["dpo.data=x.jsonl"], "only with dpo.source=offline"),
        (["rollout.group_size=1"], "group_size must be >= 2"),
        (["dpo.beta=0"], "dpo.beta must be > 0"),
        (["dpo.label_smoothing=0.5"], "label_smoothing"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=dpo", *SMALL, *overrides])


def test_the_shipped_example_file_loads():
    rows = load_preference_jsonl(EXAMPLE)
    assert len(rows) == 32
    assert all(r.chosen != r.rejected and r.messages[0]["role"] == "user" for r in rows)


def test_prompt_as_chat_messages(tmp_path):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rows = load_preference_jsonl(
        _write(tmp_path / "p.jsonl", [{"prompt": msgs, "chosen": "a", "rejected": "b"}])
    )
    assert rows[0].messages == msgs and rows[0].line == 1


# ---------------------------------------------------------------- learning on `tiny`


@pytest.mark.parametrize(
    "name, lora, lr", [("dpo", "false", 1e-3), ("ipo", "false", 1e-3), ("dpo", "true", 3e-3)]
)
def test_implicit_reward_margin_grows_on_a_separable_set(tmp_path, name, lora, lr):
    data = _separable(tmp_path / "p.jsonl")
    method, task = _method(
        name,
        [f"{name}.source=offline", f"{name}.data={data}", "rollout.prompts_per_step=4",
         f"optim.lr={lr}", f"lora.enabled={lora}"],
    )  # fmt: skip
    base = {n: p.detach().clone() for n, p in method.policy.named_parameters() if "lora_" not in n}
    margins, accuracy = [], []
    for step in range(5):
        metrics = method.step(step, [])
        assert metrics["pairs/used"] == 4.0
        margins.append(metrics[f"{name}/reward_margin"])
        accuracy.append(metrics[f"{name}/accuracy"])
    # step 1 scores the starting policy: policy == reference, every implicit reward is 0
    assert margins[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a for a, b in zip(margins, margins[1:], strict=False)), margins
    assert accuracy[-1] == 1.0
    if lora == "true":  # the reference is the untouched base (adapters off)
        for n, p in method.policy.named_parameters():
            if "lora_" not in n:
                assert torch.equal(base[n], p), n


def test_microbatches_give_the_full_batch_loss_and_gradient(tmp_path):
    data = _separable(tmp_path / "p.jsonl")
    grads = {}
    for micro in (8, 2):
        method, _ = _method(
            "dpo", ["dpo.source=offline", f"dpo.data={data}", "rollout.prompts_per_step=4",
                    f"optim.micro_batch_size={micro}", "optim.max_grad_norm=1e9", "dpo.rpo_alpha=0.5"],
        )  # fmt: skip
        before = [p.detach().clone() for p in method.policy.parameters()]
        metrics = method.step(0, [])
        grads[micro] = metrics["loss"], metrics["grad_norm"]
        assert any(
            not torch.equal(a, b) for a, b in zip(before, method.policy.parameters(), strict=True)
        )
    assert grads[8][0] == pytest.approx(grads[2][0], rel=1e-5)
    assert grads[8][1] == pytest.approx(grads[2][1], rel=1e-4)


# ---------------------------------------------------------------- the run directory


DOCUMENTED = {"reward/mean", "loss", "grad_norm", "lr", "pairs/used", "pairs/skipped",
              "pairs/reward_gap_mean", "time/step_s", "time/generate_s", "time/update_s"}  # fmt: skip
PAIR_METRICS = {"loss", "chosen_reward", "rejected_reward", "reward_margin", "accuracy"}


def test_steps_without_pairs_do_not_stop_the_run(tmp_path):
    # untrained tiny model on arithmetic: reward 0 everywhere, so no step ever has a pair
    out = tmp_path / "run"
    args = ["train", "method=ipo", "model=tiny", "task=basic_arithmetic", "steps=4",
            "faults.max_nonfinite_steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
            "rollout.max_new_tokens=4", f"output_dir={out}", "eval.after=false",
            "eval.before=false", "log.progress=false"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update_empty"] for r in records] == [1.0] * 4
    assert all(r["nonfinite/consecutive"] == 0 for r in records)


@pytest.mark.parametrize(
    "name, extra", [("dpo", []), ("ipo", ["lora.enabled=true"]), ("dpo", None)]
)
def test_one_step_run_writes_the_documented_metrics(tmp_path, name, extra):
    out = tmp_path / "run"
    if extra is None:  # offline
        extra = ["dpo.source=offline", f"dpo.data={EXAMPLE}"]
    args = ["train", f"method={name}", *SMALL, *extra, "steps=1", f"output_dir={out}",
            "eval.size=2", "eval.pass_k=2", "log.progress=false"]  # fmt: skip
    assert main(args) == 0
    (rec,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = {f"{name}/{k}" for k in PAIR_METRICS} | DOCUMENTED
    if "dpo.source=offline" in extra:
        expected -= {"reward/mean", "pairs/reward_gap_mean"}
    assert rec.keys() >= expected
    assert json.loads((out / "eval.json").read_text())["after"]["n"] == 2
    ckpt = out / "checkpoints" / "step-000001"
    assert main(["eval", f"checkpoint={ckpt}", "eval.pass_k=0", "log.progress=false"]) == 0
    assert (ckpt / "eval.json").is_file()
    assert main(["export", f"checkpoint={ckpt}", f"out={tmp_path / 'export'}"]) == 0
