"""`tandem train` on the tiny model from a test, and the metrics it logged."""

from __future__ import annotations

import json
from pathlib import Path

import tests.toy_task  # noqa: F401  (registers the toy tasks)
from tandemrl.cli import main

# No held-out evaluation, no progress bar, no TensorBoard: what most run tests want.
QUIET = ["eval.before=false", "eval.after=false", "log.progress=false", "log.tensorboard=false"]


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of `<run_dir>/metrics.jsonl`."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_tiny(out: Path, *overrides: str) -> list[dict]:
    """`tandem train model=tiny <QUIET> <overrides> output_dir=out`; asserts it exits 0 and
    returns the metrics records."""
    code = main(["train", "model=tiny", *QUIET, *overrides, f"output_dir={out}"])
    assert code == 0, f"tandem train exited {code}"
    return read_metrics(out)
