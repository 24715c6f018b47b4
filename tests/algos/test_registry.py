import sys
import textwrap

import pytest
import torch

from tandemrl.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    AdvantageResult,
    LossNormalizer,
    LossResult,
    Registry,
    UnknownNameError,
)


def test_register_and_get():
    reg = Registry("thing")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert reg.get("double") is double
    assert reg.names() == ["double"]
    assert "double" in reg
    assert reg.get(double) is double  # callables pass through


def test_duplicate_name_needs_overwrite():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    reg.register("a", overwrite=True)(lambda: 3)
    assert reg.get("a")() == 3


def test_invalid_name_rejected():
    with pytest.raises(ValueError):
        Registry("thing").register("pkg:fn")


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(UnknownNameError) as err:
        ADVANTAGES.get("grop")
    msg = str(err.value)
    assert isinstance(err.value, KeyError)
    assert "Did you mean 'grpo'?" in msg
    for name in ("gd2po", "gdpo", "grpo", "rloo"):
        assert name in msg


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(UnknownNameError) as err:
        KL_ESTIMATORS.get("zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "k1, k2, k3" in str(err.value)


def test_user_function_from_import_path(tmp_path, monkeypatch):
    module = "tandem_user_fns_for_registry_test"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from tandemrl.algos import AdvantageResult

            def sign_adv(rewards, group_ids, **options):
                adv = torch.sign(rewards - options.get("center", 0.5))
                return AdvantageResult(adv, torch.ones_like(adv, dtype=torch.bool), {})

            class Holder:
                @staticmethod
                def nested(rewards, group_ids):
                    return AdvantageResult(rewards * 0, rewards == rewards, {})

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    fn = ADVANTAGES.get(f"{module}:sign_adv")
    res = fn(torch.tensor([1.0, 0.0, 0.7]), torch.tensor([0, 0, 1]), center=0.5)
    assert torch.equal(res.advantages, torch.tensor([1.0, -1.0, 1.0]))
    assert ADVANTAGES.get(f"{module}:Holder.nested") is not None
    with pytest.raises(UnknownNameError, match="has no"):
        ADVANTAGES.get(f"{module}:missing")
    with pytest.raises(TypeError, match="not callable"):
        ADVANTAGES.get(f"{module}:NOT_CALLABLE")
    # user functions never land in the registry itself
    assert f"{module}:sign_adv" not in ADVANTAGES.names()
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_import_path_to_missing_module():
    with pytest.raises(ImportError, match="cannot import"):
        ADVANTAGES.get("tandem_no_such_module_xyz:fn")


def test_required_names_registered():
    assert {"grpo", "rloo", "gdpo", "gd2po"} <= set(ADVANTAGES.names())
    assert {"clipped", "bapo"} <= set(POLICY_LOSSES.names())
    assert set(KL_ESTIMATORS.names()) >= {"k1", "k2", "k3"}
    assert set(AGGREGATIONS.names()) >= {
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum-norm",
    }


def test_every_advantage_shares_the_signature():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    group_ids = torch.tensor([0, 0, 1, 1])
    for name in ADVANTAGES.names():
        res = ADVANTAGES.get(name)(rewards, group_ids)
        assert isinstance(res, AdvantageResult), name
        assert res.advantages.shape == (4,) and res.keep.shape == (4,), name
        assert res.keep.dtype == torch.bool, name
        assert all(isinstance(v, float) for v in res.metrics.values()), name


def test_every_policy_loss_shares_the_signature():
    torch.manual_seed(0)
    logp = torch.randn(3, 4, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(3, 4)
    mask = torch.ones(3, 4)
    for name in POLICY_LOSSES.names():
        res = POLICY_LOSSES.get(name)(
            logp, old, torch.tensor([1.0, -1.0, 0.5]), mask, aggregation="token-mean"
        )
        assert isinstance(res, LossResult), name
        assert res.loss.dim() == 0 and res.loss.requires_grad, name


def test_every_kl_estimator_and_aggregation_share_the_signature():
    x = torch.randn(2, 3)
    for name in KL_ESTIMATORS.names():
        assert KL_ESTIMATORS.get(name)(x).shape == (2, 3), name
    norm = LossNormalizer(6.0, 2.0, 3.0)
    for name in AGGREGATIONS.names():
        assert AGGREGATIONS.get(name)(x, torch.ones(2, 3), norm).dim() == 0, name


def test_core_imports_without_model_libraries():
    import subprocess

    code = (
        "import sys, tandemrl.algos\n"
        "bad = {'transformers', 'peft', 'accelerate'} & {m.split('.')[0] for m in sys.modules}\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
