"""DuPO's step time and peak memory relative to GRPO: now part of `tandem bench speed`.

    flock /tmp/tandem-heavy.lock .venv/bin/python scripts/bench_dupo.py [--steps 4] [...]

is `tandem bench speed --what methods-cost --methods dupo-simultaneous,dupo-alternating`
(extra options pass through; see `tandem bench speed --help` and docs/benchmarks.md).
Results go to benchmarks/results/ (`--out`, `--name`).
"""

from __future__ import annotations

import sys

from tandemrl.bench.speed import main

if __name__ == "__main__":
    args = ["--what", "methods-cost", "--methods", "dupo-simultaneous,dupo-alternating"]
    sys.exit(main(args + ["--name", "methods-cost-dupo"] + sys.argv[1:]))
