"""Config loading: defaults, YAML, dotted overrides, and errors that say how to fix them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.runtime.config_parse import parse_overrides


def test_overrides_nest_and_parse_yaml_scalars():
    tree = parse_overrides(["steps=3", "rollout.group_size=8", "optim.lr=1e-5", "task=arith2"])
    assert tree == {
        "steps": 3,
        "rollout": {"group_size": 8},
        "optim": {"lr": "1e-5"},
        "task": "arith2",
    }


def test_defaults_and_overrides_reach_typed_fields(tmp_path):
    cfg = load_config(None, ["steps=3", "optim.lr=1e-5", "grpo.kl_coef=0.05", "seed=7"])
    assert cfg.steps == 3 and cfg.seed == 7
    assert cfg.optim.lr == pytest.approx(1e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.method == "grpo" and cfg.method_config.kl_coef == pytest.approx(0.05)
    assert cfg.to_dict()["grpo"]["kl_coef"] == pytest.approx(0.05)


def test_yaml_file_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "steps: 5\nrollout: {group_size: 2, temperature: 0.7}\ngrpo: {clip_high: 0.28}\n"
    )
    cfg = load_config(path, ["rollout.group_size=6"])
    assert cfg.steps == 5
    assert cfg.rollout.group_size == 6 and cfg.rollout.temperature == pytest.approx(0.7)
    assert cfg.method_config.clip_high == pytest.approx(0.28)


@pytest.mark.parametrize(
    "override, fragment",
    [
        (["rollout.grup_size=8"], "did you mean 'rollout.group_size'"),
        (["stepz=3"], "did you mean 'steps'"),
        (["grpo.kl_coeff=0.1"], "did you mean 'grpo.kl_coef'"),
        (["steps=many"], "steps: expected an integer"),
        (["rollout.temperature=hot"], "rollout.temperature: expected a number"),
        (["optim.schedule=cosin"], "did you mean 'cosine'"),
        (["rollout.group_size=0"], "rollout.group_size must be >= 1"),
        (["steps"], "is not key=value"),
    ],
)
def test_bad_config_names_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=str
)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.method_config is not None
