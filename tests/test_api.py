"""The Python API (`tandemrl.train`), user data through `datasets`, reward models, trackers,
the completions table, callbacks, and the CLI's help."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import tandemrl
from tandemrl.cli import main
from tandemrl.tasks import TaskOptionError, get_task
from tandemrl.tasks.reward_model import RewardModel

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "tiny", "steps": 2, "log": {"progress": False, "tensorboard": False},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6},
        "eval": {"before": False, "after": False}, "task_options": {"eval_size": 2}}  # fmt: skip


def _data(n: int = 8) -> Dataset:
    return Dataset.from_dict(
        {"prompt": [f"say {i}" for i in range(n)], "target": [i % 3 for i in range(n)]}
    )


def test_the_notebook_example_trains_and_returns_the_model(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import notebook_api
    finally:
        sys.path.pop(0)
    result = notebook_api.main(str(tmp_path / "nb"))
    assert isinstance(result, tandemrl.TrainResult)
    assert len(result.metrics) == 4 and (tmp_path / "nb" / "summary.json").is_file()
    assert hasattr(result.model, "peft_config")  # the adapter on the base model


def test_a_callable_reward_receives_the_dataset_columns(tmp_path):
    seen = []

    def count_targets(prompts, completions, target, **columns):
        seen.append((list(target), sorted(columns)))
        return [float(t) for t in target]

    result = tandemrl.train(TINY, dataset=_data(), reward_funcs=[count_targets],
                            output_dir=str(tmp_path / "run"))  # fmt: skip
    assert seen and all(len(t) == 8 for t, _ in seen)  # 2 prompts x 4 samples per call
    assert all(set(t) <= {0, 1, 2} for t, _ in seen)
    assert "completion_ids" in seen[0][1]  # TRL's column of response token ids
    assert result.metrics[0]["reward/count_targets/mean"] >= 0
    assert result.config.task == "dataset" and result.config.task_options["rewards"] == [
        "count_targets"
    ]


def test_keywords_overrides_and_a_config_object_combine(tmp_path):
    cfg = tandemrl.load_config(None, ["model=tiny", "task=toy_letters"])
    import tests.toy_task  # noqa: F401

    result = tandemrl.train(cfg, steps=1, log={"progress": False}, eval={"before": False, "after": False},
                            rollout={"prompts_per_step": 2, "max_new_tokens": 4},
                            overrides=["optim.lr=3e-3"], output_dir=str(tmp_path / "r"))  # fmt: skip
    assert result.config.optim.lr == 3e-3 and result.config.steps == 1
    assert len(result.metrics) == 1


def _tiny_reward_model(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tandemrl.models import load_model

    tokenizer = load_model("tiny").tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         num_labels=1, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_reward_model_scores_completions(tmp_path):
    path = _tiny_reward_model(tmp_path / "rm")
    rm = RewardModel(str(path), batch_size=2)
    prompts = [[{"role": "user", "content": "hi"}]] * 3
    scores = rm(prompts, ["a", "bbb", "a"])
    assert len(scores) == 3 and scores[0] == pytest.approx(scores[2]) and scores[0] != scores[1]
    z = RewardModel(str(path), normalize="batch")(prompts, ["a", "bbb", "cc"])
    assert sum(z) == pytest.approx(0.0, abs=1e-5)
    # by name in a run: `rm:<path>` is a reward like any other
    result = tandemrl.train(TINY, dataset=_data(), reward_funcs=[f"rm:{path}"],
                            output_dir=str(tmp_path / "run"))  # fmt: skip
    assert all(isinstance(m["reward/rm/mean"], float) for m in result.metrics)


def test_a_hub_id_offline_is_one_line(monkeypatch, capsys):
    import datasets
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1, as read when the libraries were imported (this process imported them)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        TaskOptionError, match="could not load hub id 'someone/no-such-data'.*offline"
    ):
        get_task(
            "dataset", path="someone/no-such-data", rewards="tandemrl.tasks.rewards:exact_match"
        )
    code = main(["train", "model=tiny", "task=dataset", "task_options.path=someone/no-such-data",
                 "task_options.rewards=[tandemrl.tasks.rewards:exact_match]"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "offline" in err[0]


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run's `.wandb` file (a LevelDB-style log of protobuf records,
    32 KiB blocks whose first holds the file's 7-byte header; our reader, so the test needs no
    network)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks, out = path.read_bytes(), 7, [], []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's last bytes are zero padding when no header fits
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            chunks = [chunk]
        elif kind in (3, 4):
            chunks.append(chunk)
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            out.append(record)
    return out


def _wandb_history_keys(run_dir: Path, wait_s: float = 60.0) -> list[set[str]]:
    """The keys of each history record, once the file holds the run's exit record.

    W&B's service process writes the log a full 32 KiB block at a time, the rest when the run's
    stream closes, which may be after `run.finish()` has returned (CI once read no history
    record), so the test waits for the exit record rather than read a half-written log."""
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_records(Path(path))
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "exit" in kinds, (
        f"no exit record after {wait_s} s: {Path(path).stat().st_size} bytes, records {kinds}"
    )
    return [
        {it.key or "/".join(it.nested_key) for it in r.history.item}
        for r, kind in zip(records, kinds, strict=True)
        if kind == "history"
    ]


def test_wandb_offline_logs_the_metrics_jsonl_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    import tests.toy_task  # noqa: F401

    result = tandemrl.train({**TINY, "task_options": {}}, task="toy_letters", output_dir=str(out),
                            log={"progress": False, "trackers": ["wandb"]})  # fmt: skip
    history = [k - {"_timestamp", "_runtime", "_step"} for k in _wandb_history_keys(out)]
    assert len(history) == 2
    for logged, record in zip(history, result.metrics, strict=True):
        numbers = {k for k, v in record.items() if isinstance(v, float | int) and k != "step"}
        assert logged == numbers  # the same names as metrics.jsonl (finite numbers)


def test_the_completions_table_and_callbacks(tmp_path):
    steps, evals, ends = [], [], []

    class Watcher:
        def on_step(self, step, metrics):
            steps.append((step, metrics["reward/mean"]))

        def on_evaluate(self, tag, result):
            evals.append(tag)

        def on_train_end(self, summary):
            ends.append(summary["steps"])

    def letters(prompts, completions, **_):
        return [sum(ch.isalpha() for ch in c) / max(1, len(c)) for c in completions]

    config = {**TINY, "steps": 4, "eval": {"before": True, "after": True, "size": 2, "pass_k": 0},
              "log": {"progress": False, "tensorboard": False, "completions_every": 2,
                      "completions_rows": 3}}  # fmt: skip
    plain = []
    tandemrl.train(config, dataset=_data(), reward_funcs=[letters], output_dir=str(tmp_path / "r"),
                   callbacks=[Watcher(), lambda step, m: plain.append(step)])  # fmt: skip
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [(m["step"], m["reward/mean"]) for m in metrics] and plain == [1, 2, 3, 4]
    assert evals == ["before", "after"] and ends == [4]
    rows = [json.loads(x) for x in (tmp_path / "r" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 2, 2, 4, 4, 4]
    assert set(rows[0]) == {"step", "prompt", "completion", "reward/letters", "reward", "advantage"}
    assert rows[0]["prompt"].startswith("say ")
    assert rows[0]["reward"] == pytest.approx(rows[0]["reward/letters"])


def test_train_help_lists_keys_with_defaults_and_meanings(capsys):
    assert main(["train", "--help", "method=dipo"]) == 0
    out = capsys.readouterr().out
    assert "usage: tandem train" in out
    assert "optim.lr" in out and "0.0001" in out and "AdamW's learning rate" in out
    assert "dipo.alpha" in out and "weight of the reallocated-reward term" in out
    assert main(["eval", "--help"]) == 0 and "usage: tandem eval" in capsys.readouterr().out


def test_python_dash_m_tandemrl_works():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tandemrl", "tasks", "arith2"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "arith2" in proc.stdout


def test_import_tandemrl_is_light_and_train_is_a_function():
    code = "import sys, tandemrl; assert 'transformers' not in sys.modules; print(callable(tandemrl.train))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr[-1000:]


def test_trackio_logs_the_run_locally(tmp_path):
    import sqlite3

    from trackio.utils import TRACKIO_DIR

    import tests.toy_task  # noqa: F401

    project = f"tandemrl-test-{os.getpid()}"
    tandemrl.train({**TINY, "task_options": {}}, task="toy_letters", output_dir=str(tmp_path / "r"),
                   log={"progress": False, "tensorboard": False, "trackers": ["trackio"],
                        "project": project})  # fmt: skip
    (db,) = Path(TRACKIO_DIR).glob(f"{project}.db")
    with sqlite3.connect(db) as conn:
        text = " ".join(str(row) for row in conn.execute("select * from metrics"))
    assert "reward/mean" in text and "grad_norm" in text
    db.unlink()
