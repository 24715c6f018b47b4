"""Function calling on the Berkeley Function Calling Leaderboard (BFCL) data, task ``bfcl``.

The questions, function documentation and possible answers are the JSON files packaged in
``bfcl-eval`` (``bfcl_eval/data/BFCL_v4_<category>.json`` and ``possible_answer/``). They are
read as files: ``bfcl_eval`` is never imported, so none of its pinned dependencies are needed
(install it with ``pip install --no-deps bfcl-eval``; ``make setup`` does).

Options (config ``task_options.<key>``):

- ``category`` (``simple``): one BFCL category or a list of them. ``simple`` is
  ``simple_python``; also ``multiple`` (pick one of several functions), ``parallel`` (several
  calls), ``parallel_multiple``, and the user-contributed ``live_simple``, ``live_multiple``,
  ``live_parallel``, ``live_parallel_multiple``. Java, JavaScript, multi-turn and relevance
  categories are not offered: their answers are not Python calls.
- ``eval_size`` (64), ``train_size`` (all the rest), ``seed`` (0): the split is by question id.
  Ids are ordered by a hash of ``seed`` and the id; the first ``eval_size`` are held out.
- ``style`` (``python``): the reply format the prompt asks for, ``python`` (``f(a=1)``) or
  ``json`` (``{"name": ..., "arguments": {...}}``). The parser accepts both either way.
- ``few_shot`` (true): start the chat with one demonstration on a made-up function.
- ``weights`` (``{format: 0.1, name: 0.2, args: 1.0, length: 0.0, exact: 0.0}``): reward
  weights; a reward with weight 0 is left out of training. ``length_budget`` (200): see ``length``.
- ``data_dir``: read BFCL-format files from this folder instead (same file layout).

Prompt: a system message with the reply rule (after BFCL's own system text, where a question
has one), then, with ``few_shot``, a user turn listing a made-up ``get_weather`` function and
a question, and the assistant's call; then a user turn ``Functions:`` (the documentation, one
JSON object per line) followed by the question. SmolLM2-135M writes Python function
definitions instead of calls without the demonstration, and JSON echoes of the documentation
with ``style=json``; the default is what measured best for it.

Rewards (TRL-style functions in this module, usable on their own):

- ``format``: 1 when the completion holds at least one well-formed call.
- ``name``: share of expected function names called (as a multiset; extra calls count against).
- ``args``: share of parameters right under the possible-answer rules, best pairing of calls.
- ``length``: 1 for a reply that is only the call(s), falling linearly to 0 with
  ``length_budget`` non-whitespace characters of other text.
- ``exact``: 1 when the reply passes the check below (``exact_call``), else 0. Off by default;
  with ``format`` and ``length`` it gives rewards that can disagree (a correct call wrapped in
  prose vs a bare wrong call), the multi-reward setting of GDPO/GD²PO.

Eval metrics: ``correct`` = ``exact_call`` (BFCL's AST check passes: the right number of calls,
each with the right name and acceptable arguments), plus ``format``, ``name``, ``args``.
Parsing and checking rules are in ``tandemrl.tasks.function_calls``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandemrl.tasks.base import Example, RewardSpec, Task, completion_text
from tandemrl.tasks.function_calls import match_calls, parse_calls
from tandemrl.tasks.registry import TaskOptionError, check_options, register_task

__all__ = [
    "BfclTask",
    "args_reward",
    "exact_reward",
    "format_reward",
    "length_reward",
    "name_reward",
]

CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
ALIASES = {"simple": "simple_python"}
DEFAULT_WEIGHTS = {"format": 0.1, "name": 0.2, "args": 1.0, "length": 0.0, "exact": 0.0}
INSTALL_HINT = "pip install --no-deps bfcl-eval==2026.3.23"

# A one-shot demonstration on a made-up function (not from BFCL): without it SmolLM2-135M
# writes Python function definitions instead of calls (0/16 calls right; with it 3/16).
_DEMO_FUNCTION = {
    "name": "get_weather",
    "description": "Get the weather forecast for a city.",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string", "description": "The city name."},
            "days": {"type": "integer", "description": "Number of days to forecast."},
        },
        "required": ["city"],
    },
}
_DEMO_QUESTION = "What will the weather be in Paris over the next 3 days?"
# style: (the rule in the system message, the demonstration's reply)
STYLES = {
    "python": (
        "Reply with the function call only, in Python syntax with keyword arguments. If the "
        "request needs several calls, write one call per line.",
        'get_weather(city="Paris", days=3)',
    ),
    "json": (
        'Reply with the function call only, as JSON {"name": ..., "arguments": {...}}. If the '
        "request needs several calls, reply with a JSON list of such objects.",
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}',
    ),
}


def _functions_turn(functions: list[dict[str, Any]], question: str) -> dict[str, str]:
    # One function per line: compact, as prompt length is most of the cost on CPU.
    docs = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    return {"role": "user", "content": f"Functions:\n{docs}\n\n{question}"}


def _data_dir(data_dir: str | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    spec = importlib.util.find_spec("bfcl_eval")  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TaskOptionError(f"task 'bfcl' needs the bfcl-eval data: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TaskOptionError(f"task 'bfcl': missing data file {path}")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@functools.cache
def load_category(root: Path, category: str) -> tuple[dict[str, Any], ...]:
    """Rows ``{id, question, function, ground_truth}`` of one category, joined by id."""
    questions = _read_jsonl(root / f"BFCL_v4_{category}.json")
    answers = {
        row["id"]: row for row in _read_jsonl(root / "possible_answer" / f"BFCL_v4_{category}.json")
    }
    missing = [q["id"] for q in questions if q["id"] not in answers]
    if missing:
        raise TaskOptionError(f"task 'bfcl': no possible answer for {missing[0]} in {category}")
    return tuple({**q, "ground_truth": answers[q["id"]]["ground_truth"]} for q in questions)


def _parsed(completions: Sequence[Any]) -> list:
    return [parse_calls(completion_text(c)) for c in completions]


def _match_field(key: str, completions: list, functions: list, ground_truth: list) -> list[float]:
    """One field of ``match_calls`` per completion."""
    return [
        match_calls(p.calls, f, g)[key]
        for p, f, g in zip(_parsed(completions), functions, ground_truth, strict=True)
    ]


def format_reward(prompts: list, completions: list, **_: Any) -> list[float | None]:
    """1.0 when the completion holds at least one well-formed call."""
    return [float(bool(p.calls)) for p in _parsed(completions)]


def name_reward(
    prompts: list, completions: list, functions: list, ground_truth: list, **_: Any
) -> list[float | None]:
    """Share of the expected function names that were called (see ``match_calls``)."""
    return _match_field("name", completions, functions, ground_truth)


def args_reward(
    prompts: list, completions: list, functions: list, ground_truth: list, **_: Any
) -> list[float | None]:
    """Share of parameters right by the possible-answer rules (see ``match_calls``)."""
    return _match_field("args", completions, functions, ground_truth)


def length_reward(
    prompts: list, completions: list, length_budget: list | None = None, **_: Any
) -> list[float | None]:
    """1.0 for a reply that is only calls, down to 0 at ``length_budget`` chars of other text."""
    budgets = length_budget or [200] * len(completions)
    return [
        max(0.0, 1.0 - p.extra_chars / max(1, b)) if p.calls else 0.0
        for p, b in zip(_parsed(completions), budgets, strict=True)
    ]


def exact_reward(
    prompts: list, completions: list, functions: list, ground_truth: list, **_: Any
) -> list[float | None]:
    """1.0 when the calls pass BFCL's check (``exact_call`` of ``match_calls``), else 0.0."""
    return _match_field("exact_call", completions, functions, ground_truth)


_REWARDS = {
    "exact": exact_reward,
    "format": format_reward,
    "name": name_reward,
    "args": args_reward,
    "length": length_reward,
}


@register_task("bfcl")
class BfclTask(Task):
    """BFCL questions with their function docs; rewards and eval from the AST-style check."""

    source = "bfcl-eval"

    def __init__(
        self,
        category: str | list[str] = "simple",
        *,
        eval_size: int = 64,
        train_size: int | None = None,
        seed: int = 0,
        style: str = "python",
        few_shot: bool = True,
        weights: dict[str, float] | None = None,
        length_budget: int = 200,
        data_dir: str | None = None,
    ) -> None:
        categories = [category] if isinstance(category, str) else list(category)
        check_options("bfcl", dict.fromkeys(categories), [*CATEGORIES, *ALIASES], kind="category")
        self.categories = [ALIASES.get(c, c) for c in categories]
        if style not in STYLES:
            raise TaskOptionError(
                f"task 'bfcl': style must be one of {', '.join(STYLES)}, got {style!r}"
            )
        if not isinstance(few_shot, bool):
            raise TaskOptionError(f"task 'bfcl': few_shot must be true or false, got {few_shot!r}")
        weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        check_options("bfcl", weights, DEFAULT_WEIGHTS, kind="reward weight")
        for key, value in (
            ("eval_size", eval_size),
            ("train_size", 0 if train_size is None else train_size),
            ("seed", seed),
            ("length_budget", length_budget),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TaskOptionError(f"task 'bfcl': {key} must be an integer >= 0, got {value!r}")
        self.name = "bfcl"
        self.description = (
            f"function calling, BFCL v4 {'+'.join(self.categories)} (exact-call accuracy)"
        )
        self.style, self.few_shot, self.length_budget = style, few_shot, length_budget
        self.rewards = [RewardSpec(k, _REWARDS[k], float(w)) for k, w in weights.items() if w]
        root = _data_dir(data_dir)
        rows = [row for c in self.categories for row in load_category(root, c)]
        rows.sort(key=lambda row: hashlib.sha256(f"{seed}/{row['id']}".encode()).hexdigest())
        if eval_size >= len(rows):
            raise TaskOptionError(
                f"task 'bfcl': eval_size {eval_size} leaves no training questions of {len(rows)}"
            )
        rest = rows[eval_size:] if train_size is None else rows[eval_size : eval_size + train_size]
        self._eval = tuple(self._example(row) for row in rows[:eval_size])
        self._train = tuple(self._example(row) for row in rest)

    def _example(self, row: dict[str, Any]) -> Example:
        rule, demo_reply = STYLES[self.style]
        turn = row["question"][0]  # single-turn categories only
        system = "\n\n".join(
            [m["content"].strip() for m in turn if m["role"] == "system"]
            + ["You call functions. " + rule]
        )
        messages = [{"role": "system", "content": system}]
        if self.few_shot:
            messages.append(_functions_turn([_DEMO_FUNCTION], _DEMO_QUESTION))
            messages.append({"role": "assistant", "content": demo_reply})
        question = "\n".join(m["content"] for m in turn if m["role"] == "user")
        messages.append(_functions_turn(row["function"], question))
        columns = {
            "functions": row["function"],
            "ground_truth": row["ground_truth"],
            "length_budget": self.length_budget,
        }
        return Example(id=f"bfcl/{row['id']}", messages=messages, columns=columns)

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``correct`` = ``exact_call``; also ``format``, ``name``, ``args`` (see module doc)."""
        parsed = parse_calls(completion_text(completion))
        match = match_calls(
            parsed.calls, example.columns["functions"], example.columns["ground_truth"]
        )
        return {"correct": match["exact_call"], "format": float(bool(parsed.calls)), **match}

    def metric_names(self) -> list[str]:
        return ["correct", "exact_call", "format", "name", "args"]
