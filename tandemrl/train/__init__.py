"""Orchestration: config, the training loop, checkpoints, logging and evaluation."""

from tandemrl.train.config import TrainConfig, load_config
from tandemrl.train.config_parse import ConfigError

__all__ = ["ConfigError", "TrainConfig", "load_config"]
