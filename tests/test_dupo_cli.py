"""DuPO through the command line: run directory, both adapters saved, eval/export per policy."""

from __future__ import annotations

import json

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers the toy_letters task)
from tandemrl.cli import main
from tandemrl.loop.checkpoint import load_policy_weights, policy_adapters
from tandemrl.models import load_model
from tandemrl.models.adapters import activate_adapter

ARGS = ["method=dupo", "model=tiny", "task=toy_letters", "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=6", "dupo.schedule=simultaneous", "dupo.lr_explore=0.05",
        "dupo.lr_exploit=0.02", "eval.before=false", "eval.size=2", "eval.pass_k=0",
        "log.progress=false", "log.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dupo") / "run"
    assert main(["train", *ARGS, "steps=2", f"output_dir={out}"]) == 0
    return out


def test_run_directory_has_per_policy_metrics_and_the_plot(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for rec in records:
        for p in ("explore", "exploit"):
            for key in ("reward/mean", "entropy/mean", "kl", "diversity/distinct_answers",
                        "diversity/distinct_2", "cross_reward/mean", "lr_scale"):  # fmt: skip
                assert f"{p}/{key}" in rec, (p, key)
        assert rec["reward/mean"] == rec["exploit/reward/mean"]  # the served policy
        assert rec["time/step_s"] >= rec["time/generate_s"] > 0
    assert (run / "dupo_policies.png").stat().st_size > 1000
    assert "dupo:" in (run / "config.yaml").read_text()


def test_checkpoint_holds_both_adapters_and_eval_picks_one(run, capsys):
    ckpt = run / "checkpoints" / "step-000002"
    assert policy_adapters(ckpt) == ["exploit", "explore"]
    for policy in ("explore", "exploit"):
        assert main(["eval", f"checkpoint={ckpt}", f"policy={policy}", "log.progress=false"]) == 0
        result = json.loads((ckpt / f"eval-{policy}.json").read_text())
        assert result["policy"] == policy and result["n"] == 2
    # the default is the served policy
    assert main(["eval", f"checkpoint={ckpt}", "log.progress=false"]) == 0
    assert json.loads((ckpt / "eval-exploit.json").read_text())["policy"] == "exploit"
    assert main(["eval", f"checkpoint={ckpt}", "policy=nope"]) == 2
    assert "has policies ['exploit', 'explore']" in capsys.readouterr().err


def test_the_two_saved_adapters_differ(run):
    ckpt = run / "checkpoints" / "step-000002"
    ids = torch.tensor([[5, 70, 80, 90, 100]])
    logits = {}
    for policy in ("explore", "exploit"):
        model = load_policy_weights(load_model("tiny").model, ckpt, policy)
        logits[policy] = model(input_ids=ids).logits
    assert not torch.allclose(logits["explore"], logits["exploit"], atol=1e-4)


@pytest.mark.parametrize("merged", ["true", "false"])
def test_export_either_policy_in_hugging_face_format(run, tmp_path, merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ckpt = run / "checkpoints" / "step-000002"
    out = tmp_path / "export"
    args = ["export", f"checkpoint={ckpt}", "policy=explore", f"out={out}", f"merged={merged}"]
    assert main(args) == 0
    assert (out / "tokenizer_config.json").is_file()
    if merged == "true":
        exported = AutoModelForCausalLM.from_pretrained(out)
    else:
        assert (out / "adapter_config.json").is_file()
        exported = PeftModel.from_pretrained(load_model("tiny").model, out)
    reference = load_policy_weights(load_model("tiny").model, ckpt, "explore")
    activate_adapter(reference, "default")
    ids = torch.tensor([[5, 70, 80, 90]])
    with torch.no_grad():
        torch.testing.assert_close(
            exported(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-4
        )
