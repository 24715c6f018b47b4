"""`tandem`: the command line.

    tandem train [CONFIG.yaml] [key=value ...]     train (defaults: GRPO, smollm2-135m, arith2)
    tandem eval  [CONFIG.yaml] [checkpoint=DIR] [key=value ...]
    tandem tasks                                   list tasks with sizes, metrics, a prompt

Errors in what the user asked for (config keys, names, paths) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from tandemrl.algos import UnknownNameError
    from tandemrl.methods import UnknownMethodError
    from tandemrl.models import ModelLoadError
    from tandemrl.tasks import TaskOptionError, UnknownTaskError
    from tandemrl.train import ConfigError

    return (
        ConfigError,
        UnknownTaskError,
        TaskOptionError,
        ModelLoadError,
        UnknownMethodError,
        UnknownNameError,
    )


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    config = None
    if args and "=" not in args[0]:
        config = args[0]
        args = args[1:]
    return config, args


def cmd_train(args: list[str]) -> int:
    from tandemrl.train import load_config
    from tandemrl.train.trainer import train

    config, overrides = _split_args(args)
    cfg = load_config(config, overrides)
    train(cfg)
    return 0


def cmd_eval(args: list[str]) -> int:
    from tandemrl.train import load_config
    from tandemrl.train.eval_cli import run_eval

    config, overrides = _split_args(args)
    checkpoint = None
    rest = []
    for arg in overrides:
        if arg.startswith("checkpoint="):
            checkpoint = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if checkpoint and config is None and (Path(checkpoint).parent.parent / "config.yaml").is_file():
        config = str(Path(checkpoint).parent.parent / "config.yaml")
    cfg = load_config(config, rest)
    result = run_eval(cfg, checkpoint)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    return 0


def cmd_tasks(args: list[str]) -> int:
    from tandemrl.tasks import get_task, list_tasks

    for name in list_tasks():
        try:
            info = get_task(name).describe()
        except Exception as err:  # one broken provider must not hide the others
            print(f"{name}: unavailable ({err})")
            continue
        print(
            f"{info.name}: train {info.train_size}, eval {info.eval_size}; metrics {', '.join(info.metrics)}; rewards {', '.join(info.rewards)}"
        )
        print("    " + info.example_text().replace("\n", "\n    "))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "tasks": cmd_tasks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tandem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command](ns.args)
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, _user_errors()):
            print(f"tandem: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
