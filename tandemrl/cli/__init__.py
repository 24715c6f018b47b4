"""`tandem`: the command line.

    tandem train [CONFIG.yaml] [key=value ...]     train (defaults: GRPO, smollm2-135m, arith2)
    tandem eval  [CONFIG.yaml] [checkpoint=DIR] [policy=NAME] [mode=NAME] [key=value ...]
    tandem export checkpoint=DIR out=DIR [policy=NAME] [merged=true]
    tandem tasks [--all] [NAME ...]                list tasks with sizes, metrics, a prompt
    tandem rerank [CONFIG.yaml] [checkpoint=DIR] [n=8[,16]] [k=8] [temperature=0.7] [chunk=8] [key=value ...]
                                                   DuPO dual reranking vs greedy, majority vote
    tandem bench speed [--what ...] [--help]       benchmarks (docs/benchmarks.md)

`policy=` picks one adapter of a multi-adapter checkpoint (DuPO: explore or exploit; the
default is the method's served policy, exploit). `mode=` picks a prompt mode of the same
weights (Policy Split: normal, the default, or high_entropy).

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
    from tandemrl.errors import ConfigError
    from tandemrl.loop.checkpoint import CheckpointError
    from tandemrl.loop.trainer import TrainingError
    from tandemrl.methods import UnknownMethodError
    from tandemrl.models import ModelLoadError
    from tandemrl.tasks import RewardFunctionError, TaskOptionError, UnknownTaskError

    return (
        ConfigError,
        CheckpointError,
        TrainingError,
        RewardFunctionError,
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
    from tandemrl.api import train

    config, overrides = _split_args(args)
    train(config, overrides=overrides)
    return 0


HELP_USAGE = {
    "train": "tandem train [CONFIG.yaml] [key=value ...]",
    "eval": "tandem eval [CONFIG.yaml] [checkpoint=DIR] [policy=NAME] [mode=NAME] [key=value ...]",
    "rerank": "tandem rerank [CONFIG.yaml] [checkpoint=DIR] [n=8[,16]] [k=8] [temperature=0.7] [chunk=8] [key=value ...]",
    "export": "tandem export checkpoint=DIR out=DIR [policy=NAME] [merged=true]",
}


def print_config_help(command: str, args: list[str]) -> int:
    """`tandem <command> --help [CONFIG.yaml] [method=NAME]`: usage, then every config key
    with its default and meaning (the method's own section for `method=`)."""
    from tandemrl.loop import load_config
    from tandemrl.runtime.config_help import config_help

    config, overrides = _split_args([a for a in args if a not in ("-h", "--help")])
    keep = [o for o in overrides if o.split("=", 1)[0] in ("method", "model")]
    cfg = load_config(config, keep)
    print(f"usage: {HELP_USAGE[command]}\n")
    print(
        f"config keys (YAML sections or key=value), with their defaults here{' and ' + config if config else ''}:"
    )
    print(config_help(cfg))
    return 0


def _checkpoint_args(args: list[str], keys: tuple[str, ...]) -> tuple[dict, str | None, list]:
    """Pull `key=value` arguments that are not config keys (checkpoint=, policy=, ...) out of
    `args`; a checkpoint's run config is used unless a config file is given."""
    config, overrides = _split_args(args)
    special: dict[str, str] = {}
    rest = []
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key in keys:
            special[key] = value
        else:
            rest.append(arg)
    checkpoint = special.get("checkpoint")
    run_config = Path(checkpoint).parent.parent / "config.yaml" if checkpoint else None
    if config is None and run_config is not None and run_config.is_file():
        config = str(run_config)
    return special, config, rest


def cmd_eval(args: list[str]) -> int:
    from tandemrl.cli.eval import run_eval
    from tandemrl.loop import load_config

    special, config, rest = _checkpoint_args(args, ("checkpoint", "policy", "mode"))
    cfg = load_config(config, rest)
    result = run_eval(cfg, special.get("checkpoint"), special.get("policy"), special.get("mode"))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    return 0


def cmd_rerank(args: list[str]) -> int:
    """`tandem rerank`: N candidates per held-out problem, K dual samples per question; prints
    greedy, majority-vote and dual-reranking accuracy (tandemrl.cli.rerank)."""
    from tandemrl.cli.rerank import run_rerank
    from tandemrl.errors import ConfigError
    from tandemrl.loop import load_config

    keys = ("checkpoint", "n", "k", "temperature", "chunk")
    special, config, rest = _checkpoint_args(args, keys)
    try:
        n = [int(v) for v in str(special.get("n", 8)).split(",")]
        k = int(special.get("k", 8))
        chunk = int(special.get("chunk", 8))
        temperature = float(special.get("temperature", 0.7))
    except ValueError as err:
        raise ConfigError(
            "tandem rerank: n integers (n=8 or n=8,16), k and chunk integers, temperature a "
            f"number: {err}"
        ) from None
    cfg = load_config(config, rest)
    result = run_rerank(cfg, special.get("checkpoint"), n, k, temperature, chunk)
    print(json.dumps(result, indent=2))
    return 0


def cmd_export(args: list[str]) -> int:
    from tandemrl.cli.eval import run_export
    from tandemrl.errors import ConfigError
    from tandemrl.loop import load_config

    special, config, rest = _checkpoint_args(args, ("checkpoint", "policy", "out", "merged"))
    if not special.get("checkpoint") or not special.get("out"):
        raise ConfigError("tandem export needs checkpoint=DIR and out=DIR")
    merged = special.get("merged", "false").lower()
    if merged not in ("true", "false"):
        raise ConfigError(f"merged: expected true/false, got {merged!r}")
    cfg = load_config(config, rest)
    run_export(cfg, special["checkpoint"], special["out"], special.get("policy"), merged == "true")
    return 0


_EXAMPLE_LINES = 12


def _print_task(name: str, *, full: bool = False) -> None:
    from tandemrl.tasks import TaskOptionError, UnknownTaskError, get_task

    try:
        info = get_task(name).describe()
    except UnknownTaskError:  # a mistyped name is the user's error: one line, exit 2
        raise
    except TaskOptionError as err:  # e.g. jsonl: nothing to show until it has a file
        print(f"{name}: needs options ({err})\n")
        return
    except Exception as err:  # one broken task must not hide the others
        print(f"{name}: unavailable ({type(err).__name__}: {err})\n")
        return
    print(f"{info.name}: {info.description}")
    print(f"    source {info.source}; train {info.train_size}, eval {info.eval_size}")
    print(f"    metrics {', '.join(info.metrics)}; rewards {', '.join(info.rewards)}")
    lines = info.example_text().splitlines()
    if not full and len(lines) > _EXAMPLE_LINES:
        lines = lines[:_EXAMPLE_LINES] + [f"... ({len(lines) - _EXAMPLE_LINES} more lines)"]
    shown = [line if full or len(line) <= 160 else line[:157] + "..." for line in lines]
    print("    example prompt:\n      " + "\n      ".join(shown) + "\n")


def cmd_tasks(args: list[str]) -> int:
    """`tandem tasks [--all] [NAME ...]`: our tasks in detail, reasoning-gym names compactly.

    Names given: details of just those. `--all`: details of every task (slow: it builds
    every reasoning-gym dataset).
    """
    from tandemrl.tasks import list_tasks

    flags = {a for a in args if a.startswith("-")}
    names = [a for a in args if not a.startswith("-")]
    unknown_flags = flags - {"--all"}
    if unknown_flags:
        raise SystemExit(f"tandem tasks: unknown option {sorted(unknown_flags)[0]} (use --all)")
    if names:
        for name in names:
            _print_task(name, full=True)
        return 0
    own = list_tasks(include_providers=False)
    for name in own:
        _print_task(name)
    others = [n for n in list_tasks() if n not in own]
    if "--all" in flags:
        for name in others:
            _print_task(name)
        return 0
    print(
        f"reasoning-gym datasets ({len(others)}): task=NAME, their own settings under "
        "task_options.config; `tandem tasks NAME` shows one in detail:"
    )
    width, line = 100, "   "
    for name in others:
        if len(line) + len(name) + 1 > width:
            print(line)
            line = "   "
        line += " " + name
    print(line)
    return 0


def cmd_bench(args: list[str]) -> int:
    from tandemrl.bench import run_bench

    return run_bench(args)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "tasks": cmd_tasks,
    "rerank": cmd_rerank,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tandem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    try:
        if ns.command in HELP_USAGE and ({"-h", "--help"} & set(ns.args)):
            return print_config_help(ns.command, ns.args)
        return COMMANDS[ns.command](ns.args)
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, _user_errors()):
            print(f"tandem: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        raise
