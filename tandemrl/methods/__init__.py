"""Training methods, one file each, selected by `method=<name>`.

A method subclasses `Method`, declares its config dataclass as `Config`, and registers itself
with `@register_method("name")`. A user's method in their own module is picked up with
`method=package.module:ClassName`.
"""

from __future__ import annotations

import difflib
import importlib

from tandemrl.methods.base import Method, RunContext

METHODS: dict[str, type[Method]] = {}


class UnknownMethodError(ValueError):
    pass


def register_method(name: str):
    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorator


def get_method_class(name: str) -> type[Method]:
    _import_builtin_methods()
    if name in METHODS:
        return METHODS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UnknownMethodError(f"cannot import method {name!r}: {err}") from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise UnknownMethodError(f"{name!r} is not a tandemrl.methods.Method subclass")
        return cls
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownMethodError(
        f"unknown method {name!r}{hint}; known: {', '.join(sorted(METHODS))} "
        "(or module:Class for your own)."
    )


def _import_builtin_methods() -> None:
    # Every module of this package registers itself on import: adding a method is adding a file.
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["METHODS", "Method", "RunContext", "get_method_class", "register_method"]
