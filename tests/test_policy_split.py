"""Policy Split on the tiny model: the four pairings, the clamp, the reduction to GRPO at
eta = 0, the entropy guard, prompt modes in eval and the config checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.algos import LossNormalizer, policy_split_token_advantages
from tandemrl.cli import main
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.methods.policy_split_modes import (
    DEFAULT_HIGH_ENTROPY_PROMPT,
    EntropyGuard,
    high_entropy_messages,
    template_has_system_role,
)
from tandemrl.models import load_model
from tandemrl.rollout import score_tokens
from tandemrl.tasks import get_task

SMALL = ["model=tiny", "task=toy_letters", "rollout.prompts_per_step=3", "rollout.group_size=4",
         "rollout.max_new_tokens=6", "optim.micro_batch_size=4"]  # fmt: skip


def _method(overrides=(), method="policy_split", loaded=None):
    cfg = load_config(None, [f"method={method}", *SMALL, *overrides])
    task = get_task(cfg.task, **cfg.task_options)
    loaded = loaded or load_model("tiny")
    return get_method_class(method)(RunContext(cfg, loaded, task)), task


def _prepared(overrides=()):
    """A method, one step's state up to its update, its rollout and its pairings."""
    method, task = _method(overrides)
    examples = list(task.train_examples())[:3]
    state, _ = method.collect(0, examples)
    return method, examples, state, state.pairings


def _prompt_tokens(batch, j):
    return batch.prompt_ids[j][batch.prompt_mask[j].bool()].tolist()


def test_the_four_pairings():
    method, examples, state, train = _prepared()
    full = state.batch
    n, tok = method.n, method.tokenizer
    assert n == 2 and len(full) == 3 * 2 * n and len(train) == 2 * len(full)
    expected = {}
    for i, ex in enumerate(examples):
        for high, mode in ((False, "normal"), (True, "high_entropy")):
            text = tok.apply_chat_template(
                method.transforms[mode](ex.messages), tokenize=False, add_generation_prompt=True
            )
            expected[i, high] = tok(text, add_special_tokens=False)["input_ids"]
    assert expected[0, False] != expected[0, True]
    assert DEFAULT_HIGH_ENTROPY_PROMPT in tok.decode(expected[0, True])
    counts: dict[tuple[bool, bool], int] = {}
    for j in range(len(train)):
        r = int(train.per_row.row[j])
        prompt_high = bool(train.per_row.prompt_high[j])
        response_high = bool(full.per_row.high_entropy[r])
        counts[prompt_high, response_high] = counts.get((prompt_high, response_high), 0) + 1
        group = int(train.group_ids[j])
        assert group == full.example_index[r] == int(full.group_ids[r])
        # the training mode's prompt, whichever mode sampled the response
        assert _prompt_tokens(train, j) == expected[group, prompt_high]
        assert torch.equal(train.response_ids[j], full.response_ids[r])
        assert torch.equal(train.response_mask[j], full.response_mask[r])
        assert train.rewards[j] == full.rewards[r]
    # each pairing once per sampled response: N * n rows each
    assert counts == {(False, False): 6, (False, True): 6, (True, False): 6, (True, True): 6}
    # the sampled rows carry their mode's prompt too (generation used the right prompt)
    for r in range(len(full)):
        high = bool(full.per_row.high_entropy[r])
        assert _prompt_tokens(full, r) == expected[full.example_index[r], high]
    # each half holds every response once; a group's 2n rows are contiguous
    half = len(full)
    for part in (train.per_row.row[:half], train.per_row.row[half:]):
        assert sorted(part.tolist()) == list(range(half))
    assert train.group_ids[:half].tolist() == sorted(train.group_ids[:half].tolist())


def _token_advantages(method, state):
    """[2B, T] token advantages of the pairings as the update's two passes compute them, and
    the normal pass's log-probs (in its part's row order)."""
    train = state.pairings
    high = train.per_row.prompt_high
    adv = torch.zeros(train.response_ids.shape)
    with torch.no_grad():
        normal_rows, high_rows = (~high).nonzero().squeeze(-1), high.nonzero().squeeze(-1)
        normal_part, high_part = train.select(normal_rows), train.select(high_rows)
        logps, advs = [], []
        for micro in normal_part.microbatches(method.micro_size):
            logps.append(score_tokens(method.policy, micro, 1.0).logp)
            advs.append(method.token_advantages(micro, logps[-1], state.eta)[0])
        adv[normal_rows] = torch.cat(advs)
        high_part.per_row.normal_logp = torch.cat(logps)
        advs = []
        for micro in high_part.microbatches(method.micro_size):
            logp = score_tokens(method.policy, micro, 1.0).logp
            advs.append(method.token_advantages(micro, logp, state.eta)[0])
        adv[high_rows] = torch.cat(advs)
    return adv, high_part.per_row.normal_logp


def test_the_clamp_silences_the_entropy_term_when_the_advantage_is_zero():
    kappa = 2.0
    method, _, state, train = _prepared(["policy_split.eta=5.0", f"policy_split.kappa={kappa}"])
    train.advantages[train.group_ids == 0] = 0.0  # group 0 carries no outcome signal
    adv, _ = _token_advantages(method, state)
    mask = train.response_mask.bool()
    high = train.per_row.prompt_high
    a = train.advantages.unsqueeze(-1).expand_as(adv)
    zero = (train.group_ids == 0).unsqueeze(-1) & mask
    assert (adv[zero] == 0).all()
    # elsewhere the high-entropy rows do get a token term, bounded by |A_i| / kappa ...
    live = high.unsqueeze(-1) & mask & (a != 0)
    bonus = (adv - a)[live]
    assert bonus.abs().max() > 1e-3
    assert (bonus.abs() <= a[live].abs() / kappa + 1e-6).all()
    # ... and the normal mode keeps the plain correctness advantage (normal_eta = 0)
    normal = (~high).unsqueeze(-1) & mask
    assert torch.equal(adv[normal], a[normal])
    assert (adv[~mask] == 0).all()


def test_normal_eta_shapes_only_the_normal_mode_from_its_own_surprisal():
    method, _, state, train = _prepared(["policy_split.eta=0", "policy_split.normal_eta=0.5"])
    adv, nlp = _token_advantages(method, state)
    mask = train.response_mask.bool()
    high = train.per_row.prompt_high
    a = train.advantages.unsqueeze(-1).expand_as(adv)
    hi = high.unsqueeze(-1) & mask
    assert torch.equal(adv[hi], a[hi])  # eta = 0: the high-entropy mode is plain A_i
    # the normal term uses the normal prompt's surprisal alone (alpha = 1)
    part = train.select((~high).nonzero().squeeze(-1))
    expected, _ = policy_split_token_advantages(
        part.advantages, -nlp, torch.zeros_like(nlp), part.train_mask, part.group_ids,
        alpha=1.0, eta=0.5, kappa=2.0,
    )  # fmt: skip
    torch.testing.assert_close(adv[~high], expected)
    assert not torch.equal(adv[~high], a[~high])


def test_with_eta_zero_the_gradient_is_grpo_on_the_pooled_group():
    loaded = load_model("tiny")
    zero = ["policy_split.eta=0", "policy_split.normal_eta=0"]
    method, task = _method(zero, loaded=loaded)
    examples = list(task.train_examples())[:3]
    state, _ = method.collect(0, examples)
    train = state.pairings
    params = [p for p in method.policy.parameters() if p.requires_grad]

    def grads():
        out = [p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        return out

    method.backward_passes(state)  # the update without its optimizer step
    mine = grads()
    # GRPO itself, on the same model, over each mode's 2n pooled responses per prompt
    grpo, _ = _method([], method="grpo", loaded=loaded)
    assert grpo.policy is method.policy
    per_mode = []
    for high in (False, True):
        batch = train.select((train.per_row.prompt_high == high).nonzero().squeeze(-1))
        batch.per_row, batch.advantages, batch.loss_mask = None, None, None
        grpo_state = grpo.State(step=0, examples=examples, batch=batch)
        grpo.advantages(grpo_state)
        norm = LossNormalizer.from_masks(batch.train_mask)
        for micro in batch.microbatches(5):
            grpo.loss(micro, norm, grpo_state).loss.backward()
        per_mode.append(grads())
    assert max(g.abs().max().item() for g in mine) > 1e-4
    for g, g_normal, g_high in zip(mine, *per_mode, strict=True):
        # equal token counts: the token-mean over both parts is the mean of the two losses
        torch.testing.assert_close(g, (g_normal + g_high) / 2, atol=1e-6, rtol=1e-4)
    # and it differs from GRPO under one prompt only: the second pairing matters
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(*per_mode, strict=True))


def test_a_step_updates_the_weights_and_logs_both_modes():
    method, task = _method(["optim.lr=1e-2"])
    before = {n: p.detach().clone() for n, p in method.policy.named_parameters()}
    metrics = method.step(0, list(task.train_examples())[:3])
    assert any(not torch.equal(before[n], p) for n, p in method.policy.named_parameters())
    for mode in ("normal", "high_entropy"):
        for key in ("reward/mean", "entropy/mean", "diversity/distinct_answers",
                    "diversity/distinct_1", "diversity/distinct_2"):  # fmt: skip
            assert math.isfinite(metrics[f"{mode}/{key}"]), (mode, key)
    assert metrics["policy_split/eta"] == 0.03
    assert metrics["policy_split/bonus_abs_mean"] > 0
    assert metrics["entropy/mean"] == metrics["normal/entropy/mean"]
    # KL to the reference per mode when kl_coef > 0 (full fine-tune: a frozen copy)
    method, task = _method(["policy_split.kl_coef=0.1", "optim.lr=1e-2"])
    method.step(0, list(task.train_examples())[:3])
    metrics = method.step(1, list(task.train_examples())[3:6])
    assert metrics["normal/kl"] > 0 and metrics["high_entropy/kl"] > 0


def test_the_entropy_guard_backs_off_eta_and_warns_once(capsys):
    guard = EntropyGuard(ratio=1.5, vs_normal=3.0, factor=0.5, floor=0.003)
    assert guard.update(0.03, 2.0, 2.0) == (0.03, False)  # first step sets the baseline
    assert guard.update(0.03, 2.0, 2.9) == (0.03, False)  # 2.9 < 1.5 x 2.0
    etas = [0.03]
    for _ in range(5):
        eta, hit = guard.update(etas[-1], 2.0, 3.1)
        assert hit
        etas.append(eta)
    assert etas == pytest.approx([0.03, 0.015, 0.0075, 0.00375, 0.003, 0.003])
    assert capsys.readouterr().err.count("warning") == 1
    # relative to the normal mode in the same step, and never raising eta up to the floor
    other = EntropyGuard(ratio=0, vs_normal=3.0, factor=0.5, floor=0.003)
    assert other.update(0.001, 1.0, 3.5) == (0.001, True)
    assert other.update(0.02, 1.0, 2.9) == (0.02, False)
    assert EntropyGuard(enabled=False).update(0.03, 1.0, 99.0) == (0.03, False)


def test_system_role_fallback_prefixes_the_first_user_message():
    tok = load_model("tiny").tokenizer
    assert template_has_system_role(tok)
    messages = [{"role": "user", "content": "2 + 2?"}]
    assert high_entropy_messages(messages, "EXPLORE", True) == [
        {"role": "system", "content": "EXPLORE"},
        *messages,
    ]
    assert high_entropy_messages(messages, "EXPLORE", False) == [
        {"role": "user", "content": "EXPLORE\n\n2 + 2?"}
    ]
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    assert high_entropy_messages(with_system, "EXPLORE", True)[0]["content"] == (
        "EXPLORE\n\nBe brief."
    )
    no_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    )
    tok.chat_template = no_system
    assert not template_has_system_role(tok)
    tok.chat_template = "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"  # noqa: E501
    assert not template_has_system_role(tok)  # silently dropped counts as unsupported


def _eval(tmp_path, capsys, *args):
    code = main(["eval", "model=tiny", "method=policy_split", "task=toy_letters", "eval.size=2",
                 "eval.pass_k=3", f"output_dir={tmp_path}", "log.progress=false", *args])  # fmt: skip
    return code, capsys.readouterr()


def test_eval_mode_selects_the_prompt(tmp_path, capsys):
    prefix = ["policy_split.system_role=prefix", "policy_split.system_prompt=EXPLORE NOW"]
    for mode in ("high_entropy", "normal"):
        code, _ = _eval(tmp_path, capsys, f"mode={mode}", *prefix)
        assert code == 0
        result = json.loads((tmp_path / f"eval-{mode}.json").read_text())
        assert result["mode"] == mode
        prompts = [rec["prompt"] for rec in result["examples"]]
        assert all(p.startswith("EXPLORE NOW\n\n") for p in prompts) == (mode == "high_entropy")
        assert result["examples"][0]["prompt"].endswith("other 0")
        for key in ("pass@3", "diversity/distinct_answers", "diversity/self_bleu"):
            assert key in result
    code, out = _eval(tmp_path, capsys, "mode=creative")
    assert code == 2 and "normal, high_entropy" in out.err
    code, out = _eval(tmp_path, capsys, "method=grpo", "mode=normal")
    assert code == 2 and "has none" in out.err


def test_odd_group_size_is_a_config_error():
    with pytest.raises(ConfigError, match="rollout.group_size must be even|must be even"):
        load_config(None, ["method=policy_split", "model=tiny", "rollout.group_size=5"])
    cfg = load_config(None, ["method=policy_split", "model=tiny", "rollout.group_size=5",
                             "policy_split.n_per_mode=3"])  # fmt: skip
    assert get_method_class("policy_split").per_mode(cfg) == 3
    for bad in ("policy_split.alpha=1.5", "policy_split.kappa=0", "policy_split.eta=-0.1",
                "policy_split.guard_factor=1.0"):  # fmt: skip
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, ["method=policy_split", "model=tiny", bad])
