"""`load_config`: defaults <- YAML file <- `key=value` overrides, into a validated `TrainConfig`.

It sits above the methods because the method's own section is typed by the method's `Config`
class (`grpo: {...}` becomes a `GRPOConfig`); the dataclasses themselves are in
`tandemrl.runtime.config`, where methods can read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tandemrl.errors import ConfigError
from tandemrl.methods import get_method_class
from tandemrl.runtime.config import TrainConfig, validate
from tandemrl.runtime.config_parse import deep_merge, from_dict, parse_overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, or a one-line ConfigError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- `key=value` overrides, validated against the dataclasses."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    return config_from_dict(deep_merge(data, parse_overrides(overrides or [])))


def config_from_dict(data: dict[str, Any], check_model: bool = True) -> TrainConfig:
    """A validated `TrainConfig` from the nested mapping a YAML file holds (`check_model`
    False: the model is given as an object, its name is only a label)."""
    data = dict(data)
    method_name = data.get("method", TrainConfig.method)
    method_cls = get_method_class(method_name)
    # A registered method's section is its name; an imported `module:Class` uses Class.name.
    section_name = method_cls.name if ":" in str(method_name) else method_name
    section = data.pop(section_name, {}) or {}
    cfg = from_dict(TrainConfig, data)
    cfg._method_section = section_name
    cfg.method_config = from_dict(method_cls.Config, section, path=section_name)
    validate(cfg, check_model=check_model)
    if cfg.distributed.strategy == "fsdp2" and not method_cls.supports_fsdp2:
        raise ConfigError(
            f"distributed.strategy=fsdp2 is not supported by method={method_name} yet (its "
            "update is not tested sharded); use distributed.strategy=replicate"
        )
    method_cls.check_config(cfg)
    return cfg
