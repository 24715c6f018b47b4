"""Name -> function registries, so a config string selects an algorithm piece.

A config names a registered function (``"grpo"``) or any importable function by path
(``"my_pkg.my_mod:my_adv"``); the second form lets users plug in their own advantage, loss,
KL estimator or aggregation without editing tandemrl. Every function in one registry shares one
signature, written in that registry's ``signature`` string.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UnknownNameError(KeyError):
    """A name that is neither registered nor an import path ``"module:attr"``."""

    def __str__(self) -> str:
        # KeyError.__str__ repr()-quotes its argument, which mangles a multi-part message.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[F]):
    """A small named collection of interchangeable functions.

    >>> ADV = Registry("advantage estimator")
    >>> @ADV.register("mine")
    ... def mine(rewards, group_ids, **options): ...
    >>> ADV.get("mine") is mine
    True

    ``get`` also accepts ``"package.module:function"`` (imported on demand, dotted attributes
    allowed after the colon) or a callable, returned unchanged.
    """

    def __init__(self, kind: str, signature: str = "") -> None:
        self.kind = kind
        self.signature = signature
        self._entries: dict[str, F] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; re-registering needs ``overwrite=True``."""
        if not name or ":" in name:
            raise ValueError(f"invalid {self.kind} name {name!r} (empty or contains ':')")

        def decorator(fn: F) -> F:
            if name in self._entries and not overwrite and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return decorator

    def unregister(self, name: str) -> F:
        """Remove and return an entry (e.g. a temporary one registered in a test)."""
        return self._entries.pop(name)

    def get(self, name: str | F) -> F:
        """Look up a registered name, an import path ``"module:attr"``, or pass a callable through."""
        if callable(name):
            return name
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} must be a name or a callable, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._import(name)
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}; "
            "or give an import path 'package.module:function'."
        )

    def _import(self, path: str) -> F:
        module_name, _, attr_path = path.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(
                f"{self.kind} {path!r}: cannot import {module_name!r}: {err}"
            ) from err
        for part in attr_path.split("."):
            if not hasattr(obj, part):
                raise UnknownNameError(
                    f"{self.kind} {path!r}: {module_name!r} has no {attr_path!r}"
                )
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{self.kind} {path!r} is not callable")
        return obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
