"""Reading function calls out of a completion and checking them against BFCL possible answers.

Parsing (``parse_calls``) scans the completion left to right and collects every call it finds,
in either of two forms, so that a model is not punished for picking the other one:

- Python syntax with keyword arguments: ``get_weather(city="Paris", days=3)``. Dotted names
  (``math.factorial(number=5)``) are allowed. Argument values must be literals (numbers,
  strings, lists, tuples, dicts, ``True``/``False``/``None``; JSON's ``true``/``false``/``null``
  are accepted too); tuples become lists, as in BFCL's answers. A call with positional or
  non-literal arguments is malformed and skipped (the reason is kept in ``ParsedCalls.error``).
- JSON objects ``{"name": ..., "arguments": {...}}`` (``"parameters"`` is accepted for
  ``"arguments"``, and ``"arguments"`` may be a JSON string), alone or in a list.

Code fences and ``<tool_call>`` tags need no special handling: the scan skips them. Text around
the calls is ignored by the checks and only counted by the optional length reward
(``extra_chars``).

Checking (``check_call`` / ``match_calls``) follows BFCL's possible-answer rules for Python:
each expected parameter lists its acceptable values, and ``""`` among them means the parameter
may be left out. A call passes when the function name is right, every required parameter is
given, no parameter outside the documentation and the answer is given, every given value has
the documented type (an int where a float is expected is fine, also inside arrays) and is
acceptable, and every omitted parameter is optional. Strings compare after lower-casing and
dropping spaces and ``,./-_*^`` (so ``"April 1, 2024"`` matches ``"april 1 2024"``); lists
compare element-wise that way; dicts key by key. When the answer's values have another type
than the documentation says (BFCL's variable names), a value of the answer's type is accepted.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = ["ArgCheck", "Call", "ParsedCalls", "check_call", "match_calls", "parse_calls"]

_CALL_START = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\(")
_NON_CALL_TEXT = re.compile(r"\s|```\w*|</?tool_call>|[\[\],;]")
_LITERAL_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False}
_LITERAL_NAMES["None"] = None
_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
}


@dataclass(frozen=True)
class Call:
    """One function call: its name and keyword arguments."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ParsedCalls:
    """The calls found in a completion, why none were (``error``), and the text around them."""

    calls: tuple[Call, ...]
    error: str | None = None
    extra_chars: int = 0  # non-whitespace characters outside the calls, fences and tags


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _LITERAL_NAMES:
        return _LITERAL_NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"not a literal: {ast.unparse(node)}")


def _python_call(text: str, start: int) -> tuple[Call | None, int, str | None]:
    """The call starting at ``start``: (call, end, error); call is None when malformed."""
    for close in (m.start() for m in re.finditer(r"\)", text[start:])):
        end = start + close + 1
        try:
            tree = ast.parse(text[start:end], mode="eval").body
        except SyntaxError:
            continue
        if not isinstance(tree, ast.Call):
            return None, end, None
        name = ast.unparse(tree.func)
        if tree.args:
            return None, end, f"{name}: positional arguments (use keyword arguments)"
        if any(kw.arg is None for kw in tree.keywords):
            return None, end, f"{name}: **kwargs is not a literal argument"
        try:
            args = {kw.arg: _literal(kw.value) for kw in tree.keywords}
        except ValueError as err:
            return None, end, f"{name}: {err}"
        return Call(name, args), end, None
    return None, start + 1, None


def _json_calls(value: Any) -> list[Call] | None:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append(Call(item["name"], args))
    return calls or None


def parse_calls(text: str) -> ParsedCalls:
    """Every well-formed call in ``text``, in order; see the module docstring for the forms."""
    decoder = json.JSONDecoder()
    calls: list[Call] = []
    spans: list[tuple[int, int]] = []
    error: str | None = None
    i = 0
    while i < len(text):
        if text[i] in "[{":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as err:
                if text[i] == "{" and error is None:
                    error = f"invalid JSON at character {i}: {err.msg}"
            else:
                found = _json_calls(value)
                if found:
                    calls.extend(found)
                    spans.append((i, end))
                    i = end
                    continue
        match = _CALL_START.match(text, i)
        if match:
            call, end, problem = _python_call(text, i)
            if call is not None:
                calls.append(call)
                spans.append((i, end))
                i = end
                continue
            error = error or problem
            i = match.end()
            continue
        i += 1
    outside = "".join(text[a:b] for a, b in _gaps(spans, len(text)))
    extra = len(_NON_CALL_TEXT.sub("", outside))
    if not calls:
        return ParsedCalls((), error or "no function call found", extra)
    return ParsedCalls(tuple(calls), None, extra)


def _gaps(spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    edges = [0] + [x for span in spans for x in span] + [length]
    return list(zip(edges[::2], edges[1::2], strict=True))


# -- checking ------------------------------------------------------------------------------


def _standardize(value: Any) -> Any:
    if isinstance(value, str):
        return re.sub(r"[ ,./\-_*^]", "", value).lower().replace("'", '"')
    if isinstance(value, list):
        return [_standardize(v) for v in value]
    return value


def _dict_ok(value: dict, candidates: list) -> bool:
    for candidate in candidates:
        if not isinstance(candidate, dict):
            continue  # "" (may be omitted) is handled by the caller
        if any(k not in candidate for k in value):
            continue
        if any(_standardize(v) not in _standardize(candidate[k]) for k, v in value.items()):
            continue
        if all(k in value or "" in options for k, options in candidate.items()):
            return True
    return False


def _type_ok(value: Any, expected: type | None, item_type: type | None) -> bool:
    if expected is None:
        return True
    if type(value) is not expected:
        return False
    if item_type is None or not isinstance(value, list):
        return True
    return all(type(v) is item_type or (item_type is float and type(v) is int) for v in value)


def _value_ok(value: Any, doc: dict, acceptable: list) -> bool:
    declared = doc.get("type")
    expected = _TYPES.get(declared)
    items = doc.get("items") if isinstance(doc.get("items"), dict) else {}
    item_type = _TYPES.get(items.get("type")) if declared in ("array", "tuple") else None
    if expected is float and type(value) is int:
        value = float(value)
    answer_type = next((type(a) for a in acceptable if a != ""), None)
    # BFCL writes a variable's name (a string) where the documented type is e.g. a dict.
    variable = answer_type not in (None, expected) and type(value) is answer_type
    if not (variable or _type_ok(value, expected, item_type)):
        return False
    if isinstance(value, dict):
        return _dict_ok(value, acceptable)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        lists = [a for a in acceptable if isinstance(a, list) and len(a) == len(value)]
        return any(all(_dict_ok(v, [c]) for v, c in zip(value, a, strict=True)) for a in lists)
    if isinstance(value, str | list):
        return _standardize(value) in [_standardize(a) for a in acceptable if a != ""]
    return any(value == a and type(a) is not str for a in acceptable)


@dataclass(frozen=True)
class ArgCheck:
    """The outcome of checking one call against one expected call."""

    name_ok: bool
    passed: int  # parameters that are right (given and acceptable, or rightly omitted)
    total: int  # parameters expected or given
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.name_ok and self.passed == self.total

    @property
    def fraction(self) -> float:
        if not self.name_ok:
            return 0.0
        return self.passed / self.total if self.total else 1.0


def check_call(call: Call, functions: list[dict], expected: dict[str, dict[str, list]]) -> ArgCheck:
    """Check ``call`` against one BFCL ground-truth entry ``{name: {param: [acceptable]}}``."""
    ((name, answer),) = expected.items()
    if call.name != name:
        return ArgCheck(False, 0, len(answer), f"called {call.name!r}, expected {name!r}")
    doc = next((f for f in functions if f.get("name") == name), {})
    spec = doc.get("parameters", {})
    props, required = spec.get("properties", {}), set(spec.get("required", []))
    params = sorted(set(answer) | set(call.args))
    passed, reason = 0, None
    for param in params:
        if param not in call.args:
            ok = param not in required and "" in answer[param]
            problem = f"missing {param!r}"
        elif param not in answer or param not in props:
            ok, problem = False, f"unexpected argument {param!r}"
        else:
            ok = _value_ok(call.args[param], props[param], answer[param])
            problem = f"{param}={call.args[param]!r} not acceptable ({answer[param]!r})"
        passed += ok
        reason = reason or (None if ok else problem)
    return ArgCheck(True, passed, len(params), reason)


def match_calls(
    calls: tuple[Call, ...] | list[Call], functions: list[dict], ground_truth: list[dict]
) -> dict[str, float]:
    """Compare the model's calls with every expected call; order does not matter.

    Returns ``exact_call`` (1 when the calls pair up one to one and every pair passes),
    ``name`` (expected names found, as a multiset, over the larger of the two counts) and
    ``args`` (argument fraction of the best pairs, picked greedily, over the same count).
    """
    size = max(len(calls), len(ground_truth), 1)
    found = Counter(c.name for c in calls)
    wanted = Counter(next(iter(g)) for g in ground_truth)
    name = sum((found & wanted).values()) / size
    checks = [[check_call(c, functions, g) for g in ground_truth] for c in calls]
    pairs = sorted(
        (
            (checks[i][j].fraction, i, j)
            for i in range(len(calls))
            for j in range(len(ground_truth))
        ),
        reverse=True,
    )
    used_calls: set[int] = set()
    used_truth: set[int] = set()
    args = 0.0
    for fraction, i, j in pairs:
        if i not in used_calls and j not in used_truth:
            used_calls.add(i)
            used_truth.add(j)
            args += fraction
    exact = len(calls) == len(ground_truth) and _perfect_matching(
        [[check.ok for check in row] for row in checks]
    )
    return {"exact_call": float(exact), "name": name, "args": args / size}


def _perfect_matching(ok: list[list[bool]]) -> bool:
    """Whether every row can be paired with its own column where ``ok`` (augmenting paths)."""
    owner: dict[int, int] = {}

    def place(row: int, seen: set[int]) -> bool:
        for col, fits in enumerate(ok[row]):
            if fits and col not in seen:
                seen.add(col)
                if col not in owner or place(owner[col], seen):
                    owner[col] = row
                    return True
        return False

    return all(place(row, set()) for row in range(len(ok)))
