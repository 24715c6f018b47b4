"""Pure pieces of the benchmarks: step statistics, ratios, the FLOP estimate, the result JSON
and its Markdown tables. No torch, no subprocesses: everything here is unit-tested by hand.

A *run* is one training process (one framework, one configuration, one repeat); it is a dict

    {"name", "framework", "config", "repeat", "peak_rss_mb", "wall_s",
     "per_step": [{"step", "step_s", "generate_s", "reward_s", "logprob_s", "update_s",
                   "completion_tokens", ...}, ...], ...}

Step 1 of every run is warm-up (first calls allocate, pick kernels, fill caches) and is
left out of every statistic; the steps 2..N of all repeats of a (framework, config) pair are
pooled before taking medians.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

PHASES = ("generate_s", "reward_s", "logprob_s", "update_s")
RESULT_KEYS = ("benchmark", "command", "date", "machine", "versions", "settings", "runs", "summary")


def measured_steps(per_step: Sequence[dict[str, Any]], warmup: int = 1) -> list[dict[str, Any]]:
    """The steps that count: all but the first `warmup` (all of them if that leaves none)."""
    return list(per_step[warmup:]) or list(per_step)


def finite_values(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers and finite (None, NaN and inf dropped), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def median(values: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    finite = finite_values(values)
    return statistics.median(finite) if finite else math.nan


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is 0."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def pool(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the measured steps of `runs` (repeats of one framework and config).

    `tokens_per_s` is the median over steps of completion tokens / step time; `peak_rss_mb`
    is the largest peak over the repeats (each run is its own process)."""
    steps = [s for run in runs for s in measured_steps(run["per_step"])]
    out: dict[str, Any] = {
        "runs": len(runs),
        "measured_steps": len(steps),
        "step_s": median(s["step_s"] for s in steps),
    }
    for phase in PHASES:
        out[phase] = median(s.get(phase, math.nan) for s in steps)
    out["completion_tokens"] = median(s.get("completion_tokens", math.nan) for s in steps)
    out["tokens_per_s"] = median(
        ratio(s.get("completion_tokens", math.nan), s["step_s"]) for s in steps
    )
    out["peak_rss_mb"] = max((run["peak_rss_mb"] for run in runs), default=math.nan)
    return out


def update_flops(
    *,
    body_params: float,
    head_params: float,
    adapter_params: float,
    tokens: float,
    head_tokens: float,
    base_trained: bool,
) -> float:
    """FLOPs of one update (forward + backward over the batch), the usual 2-4-6 count.

    A matmul with a weight of N parameters costs 2·N FLOPs per token forward; backward costs
    2·N for the activation gradient (needed in every layer below a trained one: with LoRA in
    every layer, that is all of them) and 2·N for the weight gradient (only if the weight is
    trained). So, with T = `tokens` through the decoder and T_h = `head_tokens` through the LM
    head (only response positions are scored):

        forward   F = 2·(N_body·T + N_head·T_h + N_adapter·T)
        backward  F (activation grads) + 2·N_adapter·T + [base trained]·2·(N_body·T + N_head·T_h)

    Full fine-tune (no adapter): 6·(N_body·T + N_head·T_h), the familiar 6·N·T.
    LoRA: 4·(N_body·T + N_head·T_h) + 6·N_adapter·T.
    N_body counts the decoder's weight matrices (the input embedding is a lookup, no FLOPs);
    N_head = vocab x hidden. Attention scores (about 4·d·context per token and layer, ~1-2 %
    at 80-token sequences), norms, softmax and the optimizer are left out: this is a lower
    bound of the work done, as is counting only useful (unpadded) tokens.
    """
    matmul = body_params * tokens + head_params * head_tokens
    forward = 2.0 * (matmul + adapter_params * tokens)
    backward = forward + 2.0 * adapter_params * tokens + (2.0 * matmul if base_trained else 0.0)
    return forward + backward


def generate_flops(
    *,
    body_params: float,
    head_params: float,
    adapter_params: float,
    tokens: float,
    head_tokens: float,
) -> float:
    """FLOPs of sampling with a KV cache: one forward over every prompt and sampled token,
    2·(N_body + N_adapter)·T, plus the LM head for each sampled token, 2·N_head·T_h (the
    prefill keeps only the last position's logits). Same omissions as `update_flops`; the
    attention over the cache grows with the context but stays ~1-2 % at these lengths."""
    return 2.0 * ((body_params + adapter_params) * tokens + head_params * head_tokens)


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers to `digits` places, NaN/None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A GitHub Markdown table; floats with `digits` places (a cell may be a preformatted str)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(cell, digits) for cell in row) + " |")
    return "\n".join(lines)


def speed_rows(speed: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Rows of the framework table: one per framework and config, then the ratio row."""
    rows: list[list[Any]] = []
    for entry in speed:
        for fw in ("tandem", "trl"):
            r = entry[fw]
            rows.append(
                [
                    entry["config"],
                    entry.get(f"{fw}_name", fw),
                    r["step_s"],
                    r["generate_s"],
                    r["logprob_s"],
                    r["update_s"],
                    r["tokens_per_s"],
                    r["peak_rss_mb"],
                ]
            )
        q = entry["ratio"]
        rows.append(
            [
                entry["config"],
                f"**{entry.get('tandem_name', 'tandem')} / {entry.get('trl_name', 'TRL')}**",
                f"**{fmt(q['step_s'], 2)}x**",
                fmt(q["generate_s"], 2) + "x",
                fmt(q["logprob_s"], 2) + "x",
                fmt(q["update_s"], 2) + "x",
                fmt(q["tokens_per_s"], 2) + "x",
                fmt(q["peak_rss_mb"], 2) + "x",
            ]
        )
    return rows


SPEED_HEADER = (
    "config",
    "framework",
    "step s",
    "generate s",
    "logprob/prep s",
    "update s",
    "tokens/s",
    "peak RSS MB",
)


def compare_frameworks(
    tandem: dict[str, Any],
    trl: dict[str, Any],
    config: str,
    names: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """One config's pooled figures for both frameworks and the tandem/TRL ratios; `names`
    labels the two runs when there are several of a framework (rollout engines)."""
    keys = ("step_s", *PHASES, "tokens_per_s", "peak_rss_mb")
    labels = {} if names is None else {"tandem_name": names[0], "trl_name": names[1]}
    return {
        "config": config,
        **labels,
        "tandem": tandem,
        "trl": trl,
        "ratio": {k: ratio(tandem[k], trl[k]) for k in keys},
    }


def compare_methods(method: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Step time and peak memory of a method relative to its GRPO baseline."""
    return {
        "time_ratio": ratio(method["step_s"], baseline["step_s"]),
        "memory_ratio": ratio(method["peak_rss_mb"], baseline["peak_rss_mb"]),
    }


def target(name: str, value: float, limit: float) -> dict[str, Any]:
    """A target `value <= limit`; `met` is None when the value was not measured."""
    met = None if value is None or not math.isfinite(value) else bool(value <= limit)
    return {"name": name, "value": value, "limit": limit, "met": met}


def check_result(result: dict[str, Any]) -> None:
    """Raise ValueError if `result` lacks a top-level key or a run lacks its per-step data."""
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"result is missing {missing}")
    for run in result["runs"]:
        for key in ("name", "framework", "config", "per_step", "peak_rss_mb"):
            if key not in run:
                raise ValueError(f"run {run.get('name')!r} is missing {key!r}")
        for step in run["per_step"]:
            if "step_s" not in step:
                raise ValueError(f"run {run['name']!r} has a step without step_s")
