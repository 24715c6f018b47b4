"""Checkpoints: the policy (LoRA adapter or full weights), optimizer/scheduler, data position
and RNG states, written to a temp directory and renamed so a crash never leaves a half-written
checkpoint that looks complete."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

COMPLETE_MARKER = "COMPLETE"


def save_checkpoint(
    run_dir: Path, step: int, policy: nn.Module, state: dict[str, Any], keep: int
) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root))
    try:
        policy.save_pretrained(tmp / "policy")
        torch.save({**state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
        (tmp / COMPLETE_MARKER).write_text(str(step))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep)
    return target


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if (p / COMPLETE_MARKER).exists())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(
        p for p in (run_dir / "checkpoints").glob("step-*") if (p / COMPLETE_MARKER).exists()
    )
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def policy_adapters(checkpoint: Path) -> list[str]:
    """Names of the adapters a multi-adapter checkpoint holds (peft saves each adapter but
    "default" in a subfolder of policy/, e.g. DuPO's explore/ and exploit/); [] otherwise."""
    policy_dir = Path(checkpoint) / "policy"
    if not policy_dir.is_dir() or (policy_dir / "adapter_config.json").is_file():
        return []
    return sorted(p.name for p in policy_dir.iterdir() if (p / "adapter_config.json").is_file())


def load_policy_weights(model: nn.Module, checkpoint: Path, policy: str | None = None) -> nn.Module:
    """Apply a checkpoint's policy to a freshly loaded base `model` (adapter or full weights).

    `policy` names one adapter of a multi-adapter checkpoint (see `policy_adapters`); it must
    be None for a single-policy checkpoint.
    """
    policy_dir = checkpoint / "policy"
    if not policy_dir.is_dir():
        raise FileNotFoundError(f"{checkpoint} has no policy/ folder: not a tandemrl checkpoint")
    names = policy_adapters(checkpoint)
    if names:
        if policy not in names:
            raise ValueError(f"checkpoint {checkpoint} holds policies {names}; got policy={policy}")
        from peft import PeftModel

        return PeftModel.from_pretrained(model, policy_dir / policy)
    if policy is not None:
        raise ValueError(f"checkpoint {checkpoint} holds a single policy: policy= does not apply")
    if (policy_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, policy_dir)
    from safetensors.torch import load_file

    files = sorted(policy_dir.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing means a mismatched model.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {checkpoint} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model
