"""Checkpoints: the policy (LoRA adapters or full weights), the method's state (optimizer,
scheduler and whatever the method adds: queues, histories, controllers), the data position
and every RNG, written so that a crash never leaves a checkpoint that looks complete.

Layout of `<run>/checkpoints/step-N/`: `policy/` (what `save_pretrained` writes: also what
`tandem eval` and `tandem export` read), `trainer_state.pt`, then `manifest.json` (size and
SHA-256 of every file above) and `COMPLETE`, written last. The folder is built under a temp
name and renamed into place, so a reader sees all of it or none of it; a checkpoint whose
manifest is missing or does not match its files (truncated copy, disk full, bit rot) is
reported by `verify_checkpoint` and skipped by `find_resume_checkpoint`, which then falls back
to the previous one. `save_checkpoint` keeps the newest `keep` valid checkpoints and never
deletes the one it just wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

COMPLETE_MARKER = "COMPLETE"
MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.json"  # the resolved config of the run that wrote the checkpoint


class CheckpointError(ValueError):
    """A checkpoint is missing, partial or corrupt; the message names it and the reason."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: nn.Module | None,
    state: dict[str, Any],
    keep: int,
    config: dict[str, Any] | None = None,
    write_policy: Callable[[Path], None] | None = None,
) -> Path:
    """Write `<run_dir>/checkpoints/step-<step>` atomically (with the run's resolved `config`
    as `config.json`); prune to the newest `keep`. The weights are `policy.save_pretrained`
    into `policy/`, or whatever `write_policy(folder)` puts in the folder being built (a
    sharded checkpoint's `sharded/`)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root))
    try:
        if write_policy is not None:
            write_policy(tmp)
        else:
            policy.save_pretrained(tmp / "policy")
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        if config is not None:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "files": {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
                for p in files
            },
        }
        for p in files:  # data on disk before the manifest that vouches for it
            with p.open("rb") as handle:
                os.fsync(handle.fileno())
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / COMPLETE_MARKER).write_text(str(step))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep, target)
    return target


def _step_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if p.is_dir())


def _prune(root: Path, keep: int, just_written: Path) -> None:
    """Delete valid checkpoints beyond the newest `keep` (the one just written always stays)
    and temp folders of saves that a crash interrupted."""
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    valid = [p for p in _step_dirs(root) if (p / COMPLETE_MARKER).exists()]
    for old in valid[: max(0, len(valid) - max(1, keep))]:
        if old != just_written:
            shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: Path, *, hashes: bool = True) -> None:
    """Raise `CheckpointError` unless `path` is a complete checkpoint whose files match its
    manifest (sizes always, SHA-256 when `hashes`). Extra files (e.g. eval.json) are fine."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file() or not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"checkpoint {path} is partial: no {MANIFEST}/{COMPLETE_MARKER}")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST}: {err}") from None
    if STATE_FILE not in files:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} does not list {STATE_FILE}")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} has {size} bytes, expected {meta['size']}"
            )
        if hashes and _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} fails its SHA-256 check")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint marked complete (not verified; see `find_resume_checkpoint`)."""
    done = [p for p in _step_dirs(Path(run_dir) / "checkpoints") if (p / COMPLETE_MARKER).exists()]
    return done[-1] if done else None


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint in `run_dir` that passes `verify_checkpoint`, warning on stderr
    about each newer one that does not (it is left in place for inspection). None if none."""
    for path in reversed(_step_dirs(Path(run_dir) / "checkpoints")):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            print(f"[tandemrl] warning: {err}; falling back to an earlier one", file=sys.stderr)
            continue
        return path
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """`trainer_state.pt` of a verified checkpoint (raises `CheckpointError` otherwise)."""
    verify_checkpoint(path)
    # Our own file (optimizer states hold plain Python objects too), hence weights_only=False.
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every global RNG a step can draw from: Python, NumPy, torch CPU (and CUDA if present).

    Sampling itself uses a generator forked from a per-step seed (`rollout.generate`), so it
    needs no state; dropout, shuffles and user code use these."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_policy_weights(policy: nn.Module, checkpoint: Path) -> None:
    """Copy a checkpoint's `policy/` into the live `policy` in place (so optimizers keep
    pointing at the same tensors): every LoRA adapter of a peft model, or the full weights."""
    from safetensors.torch import load_file

    policy_dir = Path(checkpoint) / "policy"
    if (Path(checkpoint) / "sharded").is_dir():
        raise CheckpointError(
            f"checkpoint {checkpoint} is sharded (written with distributed.strategy=fsdp2); "
            "its weights load with its optimizer state (loop.sharded_checkpoint.load_sharded)"
        )
    if hasattr(policy, "peft_config"):
        from peft import set_peft_model_state_dict

        for name in policy.peft_config:
            folder = policy_dir if name == "default" else policy_dir / name
            weights = folder / "adapter_model.safetensors"
            if not weights.is_file():
                raise CheckpointError(f"checkpoint {checkpoint} has no weights for adapter {name}")
            result = set_peft_model_state_dict(policy, load_file(weights), adapter_name=name)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise CheckpointError(
                    f"checkpoint {checkpoint} adapter {name} does not match: {unexpected[:3]}"
                )
        return
    load_policy_weights(policy, Path(checkpoint))


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
    if (checkpoint / "sharded").is_dir():
        from tandemrl.loop.sharded_checkpoint import load_sharded_policy

        if policy is not None:
            raise ValueError(
                f"checkpoint {checkpoint} holds a single policy: policy= does not apply"
            )
        return load_sharded_policy(model, checkpoint)
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
