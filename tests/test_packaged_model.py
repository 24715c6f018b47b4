"""The packaged SmolLM2-135M: conversion cache, chat template, one real GRPO step."""

from __future__ import annotations

import json

import pytest

from tandemrl.cli import main
from tandemrl.loop import load_config
from tandemrl.models import load_model


def test_smollm2_loads_from_the_package_with_its_chat_template():
    loaded = load_model("smollm2-135m")
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 130e6 < n_params < 140e6
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert loaded.tokenizer.pad_token_id is not None


def test_yaml_example_config_is_valid():
    cfg = load_config("configs/grpo_arith2.yaml", ["steps=1"])
    assert cfg.model == "smollm2-135m" and cfg.task == "arith2" and cfg.steps == 1


def test_one_grpo_step_on_smollm2(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "model=smollm2-135m",
            "task=arith2",
            "steps=1",
            f"output_dir={out}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=8",
            "eval.before=false",
            "eval.after=false",
            "log.progress=false",
            "log.tensorboard=false",
        ]
    )
    assert code == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["grad_norm"] >= 0 and record["update_skipped"] == 0
    assert (out / "checkpoints" / "step-000001" / "policy" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_main_job_improves_held_out_accuracy(tmp_path):
    """The README's main job, end to end (about 10 minutes on 2 cores)."""
    out = tmp_path / "default"
    assert main(["train", f"output_dir={out}", "log.progress=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/after"]["accuracy"] > summary["eval/before"]["accuracy"]
