"""Task registry: names to factories, plus providers that resolve whole families of names.

A task is added by writing one module in ``tandemrl/tasks/`` that decorates a factory::

    @register_task("my_task")
    def my_task(*, train_size: int = 100, seed: int = 0) -> Task: ...

Every module in the package is imported on the first lookup, so no list of tasks needs
editing. Options passed to ``get_task`` are checked against the factory's keyword parameters;
a factory that takes ``**options`` validates them itself (``check_options`` helps). Task modules
must import heavy optional dependencies inside their factories so that listing stays cheap.

Providers (``register_provider``) resolve names that are not registered one by one, e.g. every
reasoning-gym dataset. Explicit registrations win over providers.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tandemrl.tasks.base import Task

__all__ = [
    "TaskOptionError",
    "TaskProvider",
    "UnknownTaskError",
    "check_options",
    "get_task",
    "list_tasks",
    "register_provider",
    "register_task",
]

TaskFactory = Callable[..., Task]
F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, TaskFactory] = {}
_PROVIDERS: list[TaskProvider] = []
_builtins_loaded = False
# Modules of this package that hold no tasks; everything else is imported to register.
_NOT_TASK_MODULES = {"base", "registry", "extraction", "verify", "rewards", "function_calls"}


class UnknownTaskError(ValueError):
    """An unknown task name. ``str()`` is one line with a suggestion and how to list tasks."""


class TaskOptionError(ValueError):
    """An unknown or invalid task option. ``str()`` is one line naming the allowed options."""


@dataclass(frozen=True)
class TaskProvider:
    """Resolves a family of task names: ``names()`` lists them, ``factory(name)`` builds one."""

    source: str
    names: Callable[[], Iterable[str]]
    factory: Callable[[str], TaskFactory]


def register_task(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Decorator registering a task factory (function or ``Task`` subclass) under ``name``."""

    def decorate(factory: F) -> F:
        if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
            raise ValueError(f"task {name!r} is already registered; pass replace=True to override")
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_provider(provider: TaskProvider) -> None:
    """Add a provider consulted, in registration order, for names not registered directly."""
    if all(p.source != provider.source for p in _PROVIDERS):
        _PROVIDERS.append(provider)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import tandemrl.tasks as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name not in _NOT_TASK_MODULES:
            importlib.import_module(f"{package.__name__}.{module.name}")


def list_tasks(*, include_providers: bool = True) -> list[str]:
    """All known task names, sorted; ``include_providers=False`` keeps only registered ones."""
    _load_builtins()
    names = set(_REGISTRY)
    if include_providers:
        for provider in _PROVIDERS:
            names.update(provider.names())
    return sorted(names)


def _resolve(name: str) -> TaskFactory | None:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for provider in _PROVIDERS:
        if name in set(provider.names()):
            return provider.factory(name)
    return None


def _unknown_task(name: str) -> UnknownTaskError:
    known = list_tasks()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return UnknownTaskError(
        f"unknown task {name!r}{hint}; run `tandem tasks` to list the {len(known)} known tasks"
    )


def check_options(
    task: str, options: Mapping[str, Any], allowed: Iterable[str], *, kind: str = "option"
) -> None:
    """Raise ``TaskOptionError`` naming any key of ``options`` not in ``allowed``.

    ``kind`` names what the keys are in the message (e.g. ``"reasoning-gym config key"``).
    """
    allowed = sorted(allowed)
    unknown = sorted(k for k in options if k not in allowed)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise TaskOptionError(
        f"unknown {kind}{'s' if len(unknown) > 1 else ''} for task {task!r}: {', '.join(hints)}; "
        f"allowed: {', '.join(allowed) if allowed else 'none'}"
    )


def _keyword_options(factory: TaskFactory) -> list[str] | None:
    """Keyword parameters of ``factory``, or None when it takes ``**kwargs`` (checks itself)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def get_task(name: str, **options: Any) -> Task:
    """Build the task called ``name`` with ``options`` (from config ``task_options``)."""
    _load_builtins()
    factory = _resolve(name)
    if factory is None:
        raise _unknown_task(name)
    allowed = _keyword_options(factory)
    if allowed is not None:
        check_options(name, options, allowed)
    return factory(**options)
