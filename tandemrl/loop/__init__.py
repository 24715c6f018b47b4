"""The loop: configs into runs. Training, evaluation, checkpoints, resume and logging; it
drives the methods (`tandemrl.methods`) and nothing below imports it."""

from tandemrl.loop.config import load_config

__all__ = ["load_config"]
