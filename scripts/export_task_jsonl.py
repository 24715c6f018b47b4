"""Write a task's train and held-out splits as JSONL files that the ``jsonl`` task reads back.

    python scripts/export_task_jsonl.py arith2 runs/data/arith2 [--option key=value ...]

Each line holds ``id``, ``prompt`` (the chat messages) and the example's columns (values that
JSON cannot hold are written as strings). Use it to inspect what a generated task contains
(``rerank``, ``translation``), or to start your own data from a built-in task: training on
the exported ``arith2`` with ``tandemrl.tasks.rewards:numeric_match`` is the same job as
``task=arith2`` (docs/tasks.md uses this to check the ``jsonl`` path end to end).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from tandemrl.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="task name, e.g. arith2, rerank, translation")
    parser.add_argument("out_dir", type=Path, help="folder for train.jsonl and eval.jsonl")
    parser.add_argument(
        "--option", action="append", default=[], help="task option key=value (YAML value)"
    )
    args = parser.parse_args()
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    task = get_task(args.task, **options)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, examples in (("train", task.train_examples()), ("eval", task.eval_examples())):
        path = args.out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for ex in examples:
                row = {"id": ex.id, "prompt": ex.messages, **ex.columns}
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        print(f"{path}: {len(examples)} rows")


if __name__ == "__main__":
    main()
