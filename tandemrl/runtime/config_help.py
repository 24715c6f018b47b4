"""`tandem train --help`: every config key with its default and meaning, read from the config
dataclasses themselves (a field's meaning is the comment beside it or the comment lines right
above it), so the help cannot drift from the code."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from typing import Any

from tandemrl.runtime.config import TrainConfig
from tandemrl.runtime.config_parse import to_dict


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in `cls`'s source (trailing, else the lines just above);
    inherited fields come from the base classes."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        out.update(_comments_in(source, {f.name for f in dataclasses.fields(klass)}))
    return out


def _comments_in(source: str, names: set[str]) -> dict[str, str]:
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if name not in names or ":" not in line or line.strip().startswith("#"):
            continue
        if number in comments and not line.strip().startswith("#"):
            out[name] = comments[number]
            continue
        above, k = [], number - 1
        while k in comments and lines[k - 1].strip().startswith("#"):
            above.insert(0, comments[k])
            k -= 1
        if above:
            out[name] = " ".join(above)
    return out


def _rows(obj: Any, prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    comments = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if f.name in ("method_config",):
            continue
        if dataclasses.is_dataclass(value):
            rows += _rows(value, f"{key}.")
        else:
            rows.append((key, repr(to_dict(value)), comments.get(f.name, "")))
    return rows


def config_help(config: TrainConfig) -> str:
    """The keys of `config` (and of its method's section) with defaults and meanings."""
    rows = _rows(config, "")
    rows += _rows(config.method_config, f"{config.method_section}.")
    width = max(len(k) for k, _, _ in rows)
    lines = []
    for key, default, meaning in rows:
        text = f"  {key:<{width}}  {default}"
        lines.append(f"{text}  # {meaning}" if meaning else text)
    return "\n".join(lines)
