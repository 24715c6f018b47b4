"""``reward=duality``: the DuPO paper's label-free reward from a dual task, with any method
(docs/duality.md; unrelated to the dual-policy method, ``methods/dual_policy.py``).

DuPO (arXiv 2508.14460) scores a response y to input x = x_k ⊕ x_u by how well the policy
reconstructs the hidden part x_u from (y, x_k): r(y) = exp(−λ·d(x_u, x̂_u)).

- Maths (``MathDualityReward``): x_u is one number of the problem (``tandemrl.tasks.duality``
  picks and masks it). Per prompt the distinct final answers of its G responses are the
  candidates; each candidate's dual questions are sampled ``samples`` times and scored 1 when
  the hidden number comes back; the unknown-component filter keeps a question only when
  exactly one candidate recovers it; a question whose hidden number equals the candidate's
  answer is not scored for it (the question would state the number it asks for);
  r_i = mean backward accuracy over the kept questions
  (formulas in ``tandemrl.tasks.duality_score``). No answer in y: r = 0. A problem with no
  usable number, or whose questions the filter drops: r = None (abstain).
- Translation (``TranslationDualityReward``): back-translate the extracted translation into
  English ``samples`` times; r = mean exp(−λ·(1 − chrF/100)) against the source
  (``metric=bleu``, ``form=linear`` configurable). The reference is never read.

``gold_weight`` > 0 adds the task's own (labelled) rewards with that weight. Metrics, per
step: ``dual/generate_s`` (seconds sampling reconstructions, inside ``time/reward_s``),
``dual/samples`` (reconstructions sampled), ``dual/samples_per_response``, ``dual/prompts``,
``dual/backward_acc``, ``dual/leak_frac`` (questions whose hidden number is the answer
itself, left unscored), ``dual/skipped_frac`` (rows whose problem had no dual question),
``dual/filtered_frac`` (questions the filter dropped), ``dual/unparsed_frac``. When the data
has an ``answer`` column, ``dual/reward_if_correct`` and ``dual/reward_if_wrong`` show how the
reward separates right from wrong answers; the label is read for these two numbers only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tandemrl.errors import ConfigError
from tandemrl.tasks.base import RewardSpec, Task, completion_text
from tandemrl.tasks.duality import (
    EQUATION_TEMPLATE,
    NUMBER_INSTRUCTION,
    PAPER_TEMPLATE,
    SOLVED_TEMPLATE,
    DualQuestion,
    DualSet,
    build_dual_questions,
)
from tandemrl.tasks.duality_score import (
    accuracy_matrix,
    distance_reward,
    duality_rewards,
    keep_questions,
    text_distance,
)
from tandemrl.tasks.extraction import extract_number
from tandemrl.tasks.reward_sources import Generate, register_reward_source
from tandemrl.tasks.verify import numbers_equal

__all__ = ["DualityConfig", "MathDualityReward", "TranslationDualityReward", "problem_text"]

BACK_TRANSLATION = "Translate into English. Reply with the English text only.\n\n{text}"


@dataclass
class DualityConfig:
    """The ``duality:`` section (used when ``reward=duality``, and by ``tandem rerank``)."""

    kind: Literal["auto", "math", "translation"] = "auto"  # auto: translation task or maths
    samples: int = 1  # reconstructions per dual question (K)
    temperature: float = 0.0  # of the reconstructions; 0 = greedy
    max_new_tokens: int = 32
    filter: bool = True  # the paper's unknown-component selection
    threshold: float = 0.5  # backward accuracy at which a candidate "recovers" the number
    max_questions: int = 2  # dual questions per problem (its first usable numbers)
    variable: str = "x"
    template: str = PAPER_TEMPLATE
    equation_template: str = EQUATION_TEMPLATE
    # equation (the paper's): "x - 54 = -28. What is x?"; solved: "Calculate -28 + 54."
    dual_form: Literal["equation", "solved"] = "equation"
    solved_template: str = SOLVED_TEMPLATE
    instruction: str = NUMBER_INSTRUCTION
    metric: Literal["chrf", "bleu"] = "chrf"  # translation distance d = 1 - metric/100
    form: Literal["exp", "linear"] = "exp"  # exp(-lam * d) or 1 - d
    lam: float = 1.0
    weight: float = 1.0
    gold_weight: float = 0.0  # > 0: add the task's own rewards with this weight
    timeout_s: float = 1800.0  # time limit of one reward call (it generates); 0 = none

    def prompt(self, question: DualQuestion, answer: str) -> str:
        """``question`` written for primal answer ``answer`` with this config's templates."""
        return question.prompt(
            answer,
            template=self.template,
            equation_template=self.equation_template,
            instruction=self.instruction,
            solved_template=self.solved_template if self.dual_form == "solved" else None,
        )

    def check(self) -> None:
        checks = [
            (self.samples >= 1, "duality.samples must be >= 1"),
            (self.max_new_tokens >= 1, "duality.max_new_tokens must be >= 1"),
            (self.max_questions >= 1, "duality.max_questions must be >= 1"),
            (0 < self.threshold <= 1, "duality.threshold must be in (0, 1]"),
            (self.temperature >= 0, "duality.temperature must be >= 0"),
            (self.gold_weight >= 0, "duality.gold_weight must be >= 0"),
            (self.timeout_s >= 0, "duality.timeout_s must be >= 0 (0 = none)"),
            (bool(self.variable.strip()), "duality.variable must not be empty"),
            (
                self.dual_form in ("equation", "solved"),
                f"duality.dual_form must be equation or solved, not {self.dual_form!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _seed(texts: Sequence[str]) -> int:
    """A seed fixed by what is generated, so a resumed run draws what the first one drew."""
    return int.from_bytes(hashlib.sha256("\n\0".join(texts).encode()).digest()[:4], "big")


def problem_text(messages: Any, entry: Any = None) -> str:
    """The problem a dual question is built from: reasoning-gym's ``entry["question"]`` when
    present, else the last user message without trailing ``End your reply with...`` lines."""
    if isinstance(entry, dict) and isinstance(entry.get("question"), str):
        return entry["question"]
    content = completion_text(messages) if not isinstance(messages, str) else messages
    lines = content.rstrip().splitlines()
    while lines and lines[-1].strip().lower().startswith("end your reply with"):
        lines.pop()
    return "\n".join(lines).strip()


class _DualReward:
    """Shared plumbing: the bound generator, timing and metric accumulation."""

    __name__ = "duality"
    __qualname__ = "duality"

    def __init__(self, cfg: DualityConfig) -> None:
        self.cfg = cfg
        self.timeout_s = cfg.timeout_s
        self.generate: Generate | None = None
        self._sums: dict[str, float] = {}

    def bind_policy(self, generate: Generate) -> None:
        self.generate = generate

    def _add(self, **values: float) -> None:
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value

    def _sample(self, texts: list[str], temperature: float | None = None) -> list[str]:
        if self.generate is None:
            raise RuntimeError("the duality reward has no policy bound (bind_policy)")
        if not texts:
            return []
        t = time.perf_counter()
        out = self.generate(
            [[{"role": "user", "content": text}] for text in texts],
            self.cfg.samples,
            temperature=self.cfg.temperature if temperature is None else temperature,
            max_new_tokens=self.cfg.max_new_tokens,
            seed=_seed(texts),
        )
        self._add(generate_s=time.perf_counter() - t, samples=len(out), prompts=len(texts))
        return out

    def pop_metrics(self) -> dict[str, float]:
        s, self._sums = self._sums, {}
        rows = s.get("rows", 0.0)
        if not rows:
            return {}
        out = {
            "dual/generate_s": s.get("generate_s", 0.0),
            "dual/samples": s.get("samples", 0.0),
            "dual/prompts": s.get("prompts", 0.0),
            "dual/samples_per_response": s.get("samples", 0.0) / rows,
            "dual/unparsed_frac": s.get("unparsed", 0.0) / rows,
        }
        for key, total in (("backward_acc", "acc_n"), ("filtered_frac", "questions")):
            if s.get(total):
                out[f"dual/{key}"] = s.get(key, 0.0) / s[total]
        if s.get("prompts"):
            out["dual/leak_frac"] = s.get("leaks", 0.0) / s["prompts"]
        if "skipped" in s:
            out["dual/skipped_frac"] = s["skipped"] / rows
        for key in ("correct", "wrong"):
            if s.get(f"n_{key}"):
                out[f"dual/reward_if_{key}"] = s[f"r_{key}"] / s[f"n_{key}"]
        return out

    def _log_gold(self, rewards: list[float | None], said: list[Any], gold: list | None) -> None:
        if gold is None:
            return
        for r, a, g in zip(rewards, said, gold, strict=True):
            if r is None or g is None:
                continue
            key = "correct" if a is not None and numbers_equal(a, g) else "wrong"
            self._add(**{f"n_{key}": 1.0, f"r_{key}": r})


class MathDualityReward(_DualReward):
    """``duality`` reward for problems with a numeric answer (see the module docstring)."""

    def __call__(
        self,
        prompts: list,
        completions: list,
        entry: list | None = None,
        answer: list | None = None,
        **_: Any,
    ) -> list[float | None]:
        cfg = self.cfg
        entries = entry or [None] * len(prompts)
        problems = [problem_text(p, e) for p, e in zip(prompts, entries, strict=True)]
        said = [extract_number(completion_text(c)) for c in completions]
        groups: dict[str, list[int]] = {}
        for i, problem in enumerate(problems):
            groups.setdefault(problem, []).append(i)
        plans: list[tuple[list[int], DualSet, list[str]]] = []
        texts: list[str] = []
        for problem, rows in groups.items():
            duals = build_dual_questions(
                problem, variable=cfg.variable, max_questions=cfg.max_questions
            )
            candidates = list(dict.fromkeys(said[i] for i in rows if said[i] is not None))
            plans.append((rows, duals, candidates))
            for answer_text in candidates:
                texts.extend(cfg.prompt(q, answer_text) for q in duals.questions)
        recon = self._sample(texts)
        k = cfg.samples
        rewards: list[float | None] = [None] * len(completions)
        cursor = skipped = 0
        for rows, duals, candidates in plans:
            if not duals.usable:
                skipped += len(rows)
                continue
            hidden = [q.hidden for q in duals.questions]
            width = len(candidates) * len(hidden)
            acc = accuracy_matrix(candidates, hidden, recon[cursor * k : (cursor + width) * k], k)
            cursor += width
            keep = keep_questions(acc, cfg.threshold) if cfg.filter and acc else None
            per_candidate = dict(zip(candidates, duality_rewards(acc, keep), strict=True))
            for i in rows:
                rewards[i] = 0.0 if said[i] is None else per_candidate[said[i]]
            scored = [a for r in acc for a in r if a is not None]
            self._add(
                acc_n=float(len(scored)),
                backward_acc=float(sum(scored)),
                leaks=float(sum(a is None for r in acc for a in r)),
                questions=float(len(duals.questions)) if keep is not None else 0.0,
                filtered_frac=float(keep.count(False)) if keep is not None else 0.0,
            )
        unparsed = sum(a is None for a in said)
        self._add(rows=float(len(completions)), skipped=float(skipped), unparsed=float(unparsed))
        self._log_gold(rewards, said, answer)
        return rewards


class TranslationDualityReward(_DualReward):
    """``duality`` reward for translation: back-translation scored against the source."""

    def __call__(
        self, prompts: list, completions: list, source: list | None = None, **_: Any
    ) -> list[float | None]:
        from tandemrl.tasks.translation import extract_translation

        cfg = self.cfg
        sources = source or [problem_text(p).split("\n\n")[-1] for p in prompts]
        hyps = [extract_translation(c) for c in completions]
        distinct = list(dict.fromkeys(h for h in hyps if h))
        back = self._sample([BACK_TRANSLATION.format(text=h) for h in distinct])
        k = cfg.samples
        by_hyp = {h: back[j * k : (j + 1) * k] for j, h in enumerate(distinct)}
        rewards: list[float | None] = []
        for hyp, src in zip(hyps, sources, strict=True):
            if not hyp:
                rewards.append(0.0)
                continue
            scores = [
                distance_reward(
                    text_distance(extract_translation(b), src, cfg.metric), cfg.lam, cfg.form
                )
                for b in by_hyp[hyp]
            ]
            rewards.append(sum(scores) / len(scores))
        self._add(rows=float(len(completions)), unparsed=float(sum(not h for h in hyps)))
        return rewards


DUAL_REWARDS: dict[str, type[_DualReward]] = {
    "math": MathDualityReward,
    "translation": TranslationDualityReward,
}


def dual_kind(cfg: DualityConfig, task: Task) -> str:
    """``cfg.kind``, with ``auto`` read as translation for the translation task, else maths."""
    if cfg.kind != "auto":
        return cfg.kind
    return "translation" if getattr(task, "name", "") == "translation" else "math"


@register_reward_source("duality")
def duality_specs(config: Any, task: Task) -> list[RewardSpec]:
    """``reward=duality``: the duality reward, plus the task's rewards × ``gold_weight``."""
    cfg: DualityConfig = config.duality
    cfg.check()
    specs = [RewardSpec("duality", DUAL_REWARDS[dual_kind(cfg, task)](cfg), cfg.weight)]
    if cfg.gold_weight > 0:
        specs += [RewardSpec(s.name, s.fn, s.weight * cfg.gold_weight) for s in task.rewards]
    return specs
