"""The loop: configs into runs. Training, evaluation, checkpoints, resume and logging; it
drives the methods (`tandemrl.methods`) and nothing below imports it."""

from tandemrl.loop.config import config_from_dict, load_config

__all__ = ["config_from_dict", "load_config"]
