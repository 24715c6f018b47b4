"""Tasks: prompts, held-out eval splits and named reward functions, looked up by name.

>>> from tandemrl.tasks import get_task
>>> task = get_task("arith2", train_size=200, eval_size=16)   # doctest: +SKIP
>>> task.train_examples()[0].messages                          # doctest: +SKIP

Any reasoning-gym dataset name works as a task name; ``arith2`` and ``eq2`` are presets
(``tandemrl.tasks.reasoning_gym.PRESETS``). Beyond maths: ``bfcl`` (function calling),
``translation``, ``rerank`` (passage reranking) and ``jsonl`` (your own data and reward
functions); docs/tasks.md describes each. New tasks register themselves with
``@register_task("name")`` in a module of this package (see ``registry``).
"""

from tandemrl.tasks.base import Example, RewardFn, RewardSpec, Task, TaskInfo, completion_text
from tandemrl.tasks.registry import (
    TaskOptionError,
    TaskProvider,
    UnknownTaskError,
    check_options,
    get_task,
    list_tasks,
    register_provider,
    register_task,
)
from tandemrl.tasks.rewards import RewardFunctionError, load_reward_function, run_reward

__all__ = [
    "Example",
    "RewardFn",
    "RewardFunctionError",
    "RewardSpec",
    "Task",
    "TaskInfo",
    "TaskOptionError",
    "TaskProvider",
    "UnknownTaskError",
    "check_options",
    "completion_text",
    "get_task",
    "list_tasks",
    "load_reward_function",
    "register_provider",
    "register_task",
    "run_reward",
]
