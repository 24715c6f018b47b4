"""`tandem tasks`: our tasks in detail first, reasoning-gym names compactly, one task by name."""

from __future__ import annotations

import sys

import pytest

from tandemrl.cli import main


def test_listing_shows_our_tasks_then_reasoning_gym_names(capsys: pytest.CaptureFixture) -> None:
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("bfcl", "translation", "rerank", "arith2"):
        assert f"\n{name}: " in f"\n{out}"
    assert "metrics correct, exact_call, format, name, args; rewards format, name, args" in out
    assert "metrics correct, ndcg@10, mrr, format" in out
    assert "metrics correct, chrf, bleu" in out
    assert "jsonl: needs options (task 'jsonl': set task_options.path" in out
    assert "Translate into " in out and "Passages:" in out  # example prompts
    names_at = out.index("reasoning-gym datasets (")
    assert out.index("\nrerank: ") < names_at
    listing = out[names_at:]
    assert " gsm_symbolic " in listing and "basic_arithmetic" in listing
    assert "example prompt" not in listing  # compact: names only


def test_named_task_in_full(capsys: pytest.CaptureFixture) -> None:
    assert main(["tasks", "bfcl", "chain_sum"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bfcl: function calling, BFCL v4 simple_python")
    assert "more lines" not in out  # named tasks show the whole prompt
    assert "\nchain_sum: " in out and "reasoning-gym" in out
    assert "bfcl_eval" not in sys.modules  # its data is read as files, never imported


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown option --al"):
        main(["tasks", "--al"])
