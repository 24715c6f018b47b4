"""The Python API the way a notebook uses it: an in-memory `datasets.Dataset`, a loaded model,
a reward written as a Python function, and the trained model back.

    python examples/notebook_api.py [OUTPUT_DIR]

Runs in seconds on the tiny random model (CI runs it: tests/test_api.py). With the packaged
SmolLM2, pass `model="smollm2-135m"` instead and drop the tokenizer.
"""

from __future__ import annotations

import string
import sys

import torch
from datasets import Dataset
from peft import LoraConfig

import tandemrl
from tandemrl.models import load_model

# Any column besides the prompt reaches the reward functions, one value per completion.
DATA = Dataset.from_dict(
    {
        "prompt": [f"Write some letters ({i})." for i in range(24)],
        "alphabet": [string.ascii_lowercase] * 24,
    }
)


def letters(prompts, completions, alphabet, **columns):
    """TRL's reward signature: the share of each completion's characters in its row's alphabet."""
    return [
        sum(ch in a for ch in c) / max(1, len(c))
        for c, a in zip(completions, alphabet, strict=True)
    ]


def main(output_dir: str = "runs/notebook") -> tandemrl.TrainResult:
    loaded = load_model("tiny")  # in a notebook: AutoModelForCausalLM.from_pretrained(...)
    result = tandemrl.train(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        dataset=DATA,
        reward_funcs=[letters],
        method="grpo",
        steps=4,
        rollout={"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8},
        optim={"lr": 1e-2},
        eval={"size": 4, "pass_k": 0},
        task_options={"eval_size": 4},
        log={"progress": False, "tensorboard": False},
        output_dir=output_dir,
        overwrite=True,
    )
    # The adapter started at B = 0 (the base model's function): training moved it.
    moved = max(p.abs().max().item() for n, p in result.model.named_parameters() if "lora_B" in n)
    assert moved > 0, "the adapter did not train"
    print(f"lora_B moved by up to {moved:.4f}; reward per step:",
          [round(m["reward/letters/mean"], 3) for m in result.metrics])  # fmt: skip
    print("held-out after training:", result.summary["eval/after"]["accuracy"])
    return result


if __name__ == "__main__":
    torch.manual_seed(0)
    main(*sys.argv[1:])
