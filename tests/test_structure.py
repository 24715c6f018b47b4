"""The house rules a test can check: floors (nothing imports a floor above its own), one step
skeleton (no method overrides `Method.step`), and functions short enough to read in one go."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tandemrl.methods import METHODS, Method, get_method_class

PACKAGE = Path(__file__).resolve().parents[1] / "tandemrl"

# docs/architecture.md: the ground floor imports nothing of ours above it; each floor may use
# the floors below it and its own package, never a package on its own floor or above.
FLOORS = {
    "errors": 0,
    "algos": 1,
    "tasks": 1,
    "models": 1,
    "rollout": 2,
    "runtime": 3,
    "methods": 4,
    "loop": 5,
    "bench": 6,
    "api": 7,  # tandemrl.train(...), the Python API
    "cli": 8,  # `tandem ...` over the API, and `tandem bench`
    "__init__": 9,  # the package's own entry points
    "__main__": 9,
}
MAX_FUNCTION_LINES = 80
SHORT_FUNCTION_PACKAGES = ("methods", "loop", "runtime")


def _top(module: str) -> str:
    """`tandemrl.methods.grpo` -> `methods`; `tandemrl` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `tandemrl` import in `path`, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("tandemrl")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tandemrl"):
            if node.module == "tandemrl":  # `from tandemrl import algos`
                found += [(node.lineno, f"tandemrl.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_floor():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert tops <= set(FLOORS), tops - set(FLOORS)


def test_nothing_imports_a_floor_above_its_own():
    wrong = []
    for path in _modules():
        here = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for line, module in _imports(path):
            there = _top(module)
            if there != here and FLOORS[there] >= FLOORS[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_floor_check_catches_a_method_importing_the_loop(tmp_path):
    """The scan sees imports inside functions too (where cycles are usually hidden)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tandemrl.loop.trainer import train\n")
    assert _imports(bad) == [(2, "tandemrl.loop.trainer")]
    assert FLOORS[_top("tandemrl.loop.trainer")] > FLOORS["methods"]


def test_no_registered_method_overrides_step():
    get_method_class("grpo")  # imports the built-in methods
    assert METHODS
    for name, cls in METHODS.items():
        assert cls.step is Method.step, f"method {name} overrides step"


def test_a_method_that_overrides_step_is_refused():
    with pytest.raises(TypeError, match="overrides Method.step; fill its hooks"):

        class Rogue(Method):  # noqa: F841
            def step(self, step, examples):
                return {}


@pytest.mark.parametrize("package", SHORT_FUNCTION_PACKAGES)
def test_functions_fit_on_a_screen(package):
    long = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.name} ({lines})")
    assert not long, long
