"""Every registered method's seeded 3-step tiny run logs the metrics recorded in tests/golden/
(written by the commit named in tests/golden/README.md), all keys but time and memory.

Tolerance: the runs are one-threaded and seeded, so on one machine they repeat bit for bit;
rel 1e-4 leaves room for a refactor's float reassociation and another CPU's kernels, while any
change to what a method computes moves some metric by far more."""

from __future__ import annotations

import json
import math

import pytest

from tandemrl.methods import METHODS, get_method_class
from tests import golden_runs


def _golden(name: str) -> list[dict]:
    path = golden_runs.GOLDEN / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_registered_method_has_a_golden_run():
    get_method_class("grpo")  # imports the built-in methods
    covered = {arg.split("=", 1)[1] for args in golden_runs.RUNS.values() for arg in args
               if arg.startswith("method=")}  # fmt: skip
    assert covered == set(METHODS)


@pytest.mark.parametrize("name", sorted(golden_runs.RUNS))
def test_metrics_match_the_golden_run(tmp_path, name):
    want, have = _golden(name), golden_runs.run(name, tmp_path / name)
    assert len(have) == len(want)
    for step, (w, h) in enumerate(zip(want, have, strict=True), start=1):
        assert sorted(h) == sorted(w), f"step {step}: keys differ: {set(h) ^ set(w)}"
        for key, value in w.items():
            got = h[key]
            if isinstance(value, float) and isinstance(got, float):
                ok = got == pytest.approx(value, rel=1e-4, abs=1e-6)
                assert ok or (math.isnan(value) and math.isnan(got)), (step, key, got, value)
            else:
                assert got == value, (step, key)
