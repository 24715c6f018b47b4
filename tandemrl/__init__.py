"""tandemrl: reinforcement-learning post-training of language models, with exploration and
exploitation as first-class parts of the method.

    import tandemrl
    result = tandemrl.train(model="smollm2-135m", task="arith2", steps=20)

`train`, `TrainResult`, `TrainConfig` and `load_config` load on first use, so that importing
a light part of the package (`tandemrl.algos`) does not import transformers.
"""

from typing import Any

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from tandemrl import api

        return getattr(api, name)
    if name == "TrainConfig":
        from tandemrl.runtime.config import TrainConfig

        return TrainConfig
    if name == "load_config":
        from tandemrl.loop.config import load_config

        return load_config
    raise AttributeError(f"module 'tandemrl' has no attribute {name!r}")
