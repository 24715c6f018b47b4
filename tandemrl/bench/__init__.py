"""Benchmarks behind `tandem bench NAME [options]`: each is a module with `main(argv) -> int`.

    tandem bench speed [--what speed,methods-cost] ...   tandemrl vs TRL, method costs, FLOP/s
    tandem bench methods [--suite maths|fc] [--quick] ...  methods x seeds, held-out accuracy
    tandem bench compute [--what precision,checkpointing,fsdp2]  precision, checkpointing, FSDP2

Results go to `benchmarks/results/` (JSON + Markdown); see docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "speed": "tandemrl.bench.speed",
    "methods": "tandemrl.bench.methods",
    "compute": "tandemrl.bench.compute",
}


def run_bench(args: list[str]) -> int:
    """Dispatch `tandem bench NAME ...` to the benchmark module's `main`."""
    if not args or args[0] not in BENCHMARKS:
        names = ", ".join(sorted(BENCHMARKS))
        got = f" {args[0]!r}" if args else ""
        print(f"tandem bench: unknown benchmark{got}; choose one of: {names}", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[args[0]]).main(args[1:])
