"""Passage reranking, task ``rerank``: order candidate passages by relevance, NDCG@10 and MRR.

No reranking corpus ships offline, so queries are built by a seeded generator
(``build_query``) about made-up towns, whose names carry no world knowledge. Each town has
facts (founding year, population, river, mayor, export, altitude, festival, twin town); a
query asks for one fact of one town, and its ``candidates`` passages (10) are graded:

- 2: states the asked fact of the asked town (one passage, or two phrasings of it);
- 1: another fact of the same town (three passages);
- 0: facts of other towns, at least two of them the asked kind of fact (hard negatives).

Passages are shuffled and numbered ``[1]``..``[k]``; the model replies with an ordering such as
``[3] > [1] > [2]``. The same seed always builds the same queries: regenerate or inspect them
with ``get_task("rerank").eval_examples()`` (each example's ``columns`` holds the passages
and grades).

Options: ``train_size`` (2000), ``eval_size`` (64), ``seed`` (0), ``eval_seed`` (0),
``candidates`` (10, from 8 to 20), ``weights`` (``{ndcg: 1.0, format: 0.1}``). The held-out
towns never appear in training queries, not even as distractors.

Parsing (``parse_ranking``): the ids written as ``[n]``, in order; when there are none, the
bare integers. Repeats after the first mention and ids outside ``1..k`` are dropped (and make
the ranking malformed). An empty ranking scores 0. Passages left out are treated as not
retrieved, as in NDCG over a cut-off list.

Metrics: ``ndcg@10`` (gain ``2**grade - 1``, discount ``log2(rank + 1)``, normalised by the
ideal order of all candidates), ``mrr`` (1 / rank of the first grade-2 passage, 0 if absent),
``correct`` (the top-ranked passage is grade 2), ``format`` (every candidate exactly once).
Rewards: ``ndcg`` (NDCG@10) and ``format``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tandemrl.tasks.base import Example, RewardSpec, Task, completion_text, split_seed
from tandemrl.tasks.registry import TaskOptionError, check_options, register_task

__all__ = ["RerankTask", "build_query", "mrr", "ndcg_at", "parse_ranking"]

DEFAULT_WEIGHTS = {"ndcg": 1.0, "format": 0.1}


def _words(text: str) -> list[str]:
    return text.split()


_ONSETS = _words("b br d dr f g gr h k kl l m n p r s st t tr v z")
_VOWELS = _words("a e i o u ae ia ou")
_CODAS = ["", *_words("n r l s th nd rk")]
_ENDINGS = _words("ia ora heim ford stad ville mouth ara grad wick")
_GOODS = ["copper", "wool", "salt", "timber", "glass", "cheese", "olive oil", "silk", "tin", "rice"]
_FIRST = _words("Anna Boris Clara Dmitri Elena Farid Greta Hugo Ines Jonas")
_LAST = _words("Albescu Brandt Castell Dorval Eklund Ferro Grahl Hollis Ivanic")
_FESTIVALS = _words("lantern harvest kite river music bread snow flower")

# fact: question | passage stating it | another phrasing ({town}, {value} are filled in).
_FACT_TABLE = """
founded: When was {town} founded? | {town} was founded in {value}. | Settlers established {town} in {value}, around a small market square.
population: How many people live in {town}? | {town} has a population of about {value}. | Roughly {value} residents call {town} home.
river: Which river flows through {town}? | The {value} river flows through {town}. | {town} was built on both banks of the {value}.
mayor: Who is the mayor of {town}? | The mayor of {town} is {value}. | {value} was elected to lead the town council of {town}.
export: What is the main export of {town}? | The main export of {town} is {value}. | Most of what {town} sells abroad is {value}.
altitude: How high above sea level is {town}? | {town} lies {value} metres above sea level. | At {value} metres of altitude, {town} has cool summers.
festival: Which festival is {town} known for? | {town} is known for its {value} festival. | Every autumn the {value} festival fills the streets of {town}.
twin: Which town is {town} twinned with? | {town} is twinned with {value}. | Since 1990 {town} and {value} have been partner towns.
"""
FACTS: dict[str, tuple[str, tuple[str, ...]]] = {
    fact: (parts[0], tuple(parts[1:]))
    for fact, _, rest in (line.partition(": ") for line in _FACT_TABLE.strip().splitlines())
    for parts in [[part.strip() for part in rest.split(" | ")]]
}


def _name(rng: random.Random) -> str:
    stem = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
    return (stem + rng.choice(_ENDINGS)).capitalize()


def _fact_value(fact: str, rng: random.Random) -> str:
    return {
        "founded": lambda: str(rng.randint(1100, 1950)),
        "population": lambda: f"{rng.randint(2, 400) * 250:,}",
        "river": lambda: _name(rng).removesuffix("ia").removesuffix("a"),
        "mayor": lambda: f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
        "export": lambda: rng.choice(_GOODS),
        "altitude": lambda: str(rng.randint(5, 2400)),
        "festival": lambda: rng.choice(_FESTIVALS),
        "twin": lambda: _name(rng),
    }[fact]()


@dataclass(frozen=True)
class Query:
    """One reranking item: the question, numbered passages and their grades."""

    question: str
    passages: list[str]
    grades: list[int]
    towns: list[str]


def build_query(rng: random.Random, candidates: int = 10) -> Query:
    """A query about a made-up town with ``candidates`` graded passages (see module doc)."""
    town, asked = _name(rng), rng.choice(sorted(FACTS))
    others: list[str] = []
    while len(others) < candidates - 4:  # distinct, so no distractor shares the asked town
        other = _name(rng)
        if other != town and other not in others:
            others.append(other)
    value = _fact_value(asked, rng)
    phrasings = FACTS[asked][1][: rng.choice((1, 2))]
    pool = [(p.format(town=town, value=value), 2) for p in phrasings]
    for fact in rng.sample([f for f in sorted(FACTS) if f != asked], 3):
        template = rng.choice(FACTS[fact][1])
        pool.append((template.format(town=town, value=_fact_value(fact, rng)), 1))
    for i, other in enumerate(others[: candidates - len(pool)]):
        fact = asked if i < 2 else rng.choice(sorted(FACTS))
        template = rng.choice(FACTS[fact][1])
        pool.append((template.format(town=other, value=_fact_value(fact, rng)), 0))
    rng.shuffle(pool)
    return Query(
        FACTS[asked][0].format(town=town),
        [p for p, _ in pool],
        [g for _, g in pool],
        [town, *others],
    )


def parse_ranking(text: str, count: int) -> tuple[list[int], bool]:
    """(1-based ids in ranked order, well_formed); rules in the module docstring."""
    raw = [int(n) for n in re.findall(r"\[\s*(\d+)\s*\]", text)]
    if not raw:
        raw = [int(n) for n in re.findall(r"(?<![\w.])(\d+)(?![\w.])", text)]
    ranking = list(dict.fromkeys(n for n in raw if 1 <= n <= count))
    well_formed = len(raw) == count and sorted(raw) == list(range(1, count + 1))
    return ranking, well_formed


def ndcg_at(ranking: Sequence[int], grades: Sequence[int], k: int = 10) -> float:
    """NDCG@k of 1-based ``ranking`` with graded gains ``2**grade - 1``; 0 when empty."""

    def dcg(gains: Sequence[int]) -> float:
        return sum((2**g - 1) / math.log2(rank + 2) for rank, g in enumerate(gains[:k]))

    ideal = dcg(sorted(grades, reverse=True))
    return dcg([grades[i - 1] for i in ranking]) / ideal if ideal > 0 else 0.0


def mrr(ranking: Sequence[int], grades: Sequence[int], relevant: int = 2) -> float:
    """1 / rank of the first passage with grade >= ``relevant``; 0 when none is ranked."""
    for rank, i in enumerate(ranking, start=1):
        if grades[i - 1] >= relevant:
            return 1.0 / rank
    return 0.0


def ndcg_reward(prompts: list, completions: list, grades: list, **_: Any) -> list[float | None]:
    """NDCG@10 of the ranking in each completion."""
    return [
        ndcg_at(parse_ranking(completion_text(c), len(g))[0], g)
        for c, g in zip(completions, grades, strict=True)
    ]


def format_reward(prompts: list, completions: list, grades: list, **_: Any) -> list[float | None]:
    """1.0 when the ranking lists every candidate exactly once and nothing else."""
    return [
        float(parse_ranking(completion_text(c), len(g))[1])
        for c, g in zip(completions, grades, strict=True)
    ]


_REWARDS = {"ndcg": ndcg_reward, "format": format_reward}


@register_task("rerank")
class RerankTask(Task):
    """Rank made-up passages for a question; graded relevance, NDCG@10 (module docstring)."""

    name = "rerank"
    description = "rank 10 passages about made-up towns by relevance (NDCG@10, MRR)"

    def __init__(
        self,
        *,
        train_size: int = 2000,
        eval_size: int = 64,
        seed: int = 0,
        eval_seed: int = 0,
        candidates: int = 10,
        weights: dict[str, float] | None = None,
    ) -> None:
        for key, value in (
            ("train_size", train_size),
            ("eval_size", eval_size),
            ("seed", seed),
            ("eval_seed", eval_seed),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TaskOptionError(
                    f"task 'rerank': {key} must be an integer >= 0, got {value!r}"
                )
        if (
            not isinstance(candidates, int)
            or isinstance(candidates, bool)
            or not 8 <= candidates <= 20
        ):
            raise TaskOptionError(f"task 'rerank': candidates must be 8 to 20, got {candidates!r}")
        weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        check_options(self.name, weights, DEFAULT_WEIGHTS, kind="reward weight")
        self.rewards = [RewardSpec(k, _REWARDS[k], float(w)) for k, w in weights.items() if w]
        self.candidates = candidates
        eval_rng = random.Random(split_seed("rerank", "eval", eval_seed))
        self._eval = tuple(
            self._example("eval", i, build_query(eval_rng, candidates)) for i in range(eval_size)
        )
        held_out = {town for ex in self._eval for town in ex.columns["towns"]}
        train_rng = random.Random(split_seed("rerank", "train", seed))
        train: list[Example] = []
        while len(train) < train_size:
            query = build_query(train_rng, candidates)
            if held_out.isdisjoint(query.towns):
                train.append(self._example("train", len(train), query))
        self._train = tuple(train)

    @staticmethod
    def _example(split: str, index: int, query: Query) -> Example:
        listing = "\n".join(f"[{i}] {p}" for i, p in enumerate(query.passages, start=1))
        prompt = (
            f"Question: {query.question}\n\nPassages:\n{listing}\n\n"
            "Rank the passages from most to least relevant to the question. Reply with the "
            "passage numbers only, most relevant first, like: [2] > [1] > [3]"
        )
        columns = {"grades": query.grades, "passages": query.passages, "towns": query.towns}
        return Example(f"rerank/{split}/{index}", [{"role": "user", "content": prompt}], columns)

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``correct`` (top passage is grade 2), ``ndcg@10``, ``mrr``, ``format``."""
        grades = example.columns["grades"]
        ranking, well_formed = parse_ranking(completion_text(completion), len(grades))
        top = bool(ranking) and grades[ranking[0] - 1] == 2
        return {
            "correct": float(top),
            "ndcg@10": ndcg_at(ranking, grades),
            "mrr": mrr(ranking, grades),
            "format": float(well_formed),
        }

    def metric_names(self) -> list[str]:
        return ["correct", "ndcg@10", "mrr", "format"]
