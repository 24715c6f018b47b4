"""Translation from English, task ``translation``: numbers, dates and names with real references.

No parallel corpus ships on PyPI, so the pairs come from two maintained localisation libraries:
``num2words`` spells numbers out per language (cardinals ``312`` -> "three hundred and twelve"
/ "trois cent douze", ordinals, years) and Babel's CLDR data gives long-form dates ("March 12,
2024" / "12 mars 2024") and the names of countries and languages ("Germany" / "Allemagne").
The English side is the source, the target language's form the reference. Pairs whose
reference equals the source (case-insensitively, e.g. "Canada") are skipped, so copying the
input never scores.

Options (config ``task_options.<key>``):

- ``targets`` (``[fr, de, es]``): target languages, any of ``LANGUAGES``.
- ``kinds`` (all of ``KINDS``): ``number``, ``ordinal``, ``year``, ``date``, ``country``,
  ``language``.
- ``train_size`` (2000), ``eval_size`` (64), ``seed`` (0), ``eval_seed`` (0).
- ``weights`` (``{chrf: 1.0, exact: 0.0}``): reward weights; weight 0 leaves a reward out.
- ``comet_model``: path to a local COMET checkpoint (needs ``unbabel-comet``); adds a
  ``comet`` eval metric. Never needed, never downloaded.

Splits. Items are drawn from a stream seeded per split (kind and target uniformly at random).
Eval keeps the first ``eval_size`` items with distinct sources; train keeps items whose English
source is not an eval source in any target language, so nothing held out is ever trained on.

The answer is read from the completion by ``extract_translation``: the first non-empty line,
or the line after it when the first ends with ``:`` ("Here is the translation:"); a leading
label of one to three words and a colon (``Translation:``, ``In French:``) is dropped; if the line quotes something (``"..."``,
``«...»``, ``“...”``) the last quoted text is taken; then surrounding ``*`` and quotes and
trailing punctuation are stripped.

Rewards: ``chrf`` (sentence chrF / 100) and ``exact``. Eval: ``correct`` = exact match after
normalisation (NFC, case-folded, single spaces), ``chrf`` and ``bleu`` (sacrebleu
sentence-level, case-insensitive, 0-100, averaged over examples; BLEU with effective order, as
short references have few 4-grams).
"""

from __future__ import annotations

import datetime
import functools
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tandemrl.tasks.base import Example, RewardSpec, Task, completion_text, split_seed
from tandemrl.tasks.registry import TaskOptionError, check_options, register_task

__all__ = ["KINDS", "LANGUAGES", "TranslationTask", "extract_translation", "make_pair"]

LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}
KINDS = ("number", "ordinal", "year", "date", "country", "language")
DEFAULT_WEIGHTS = {"chrf": 1.0, "exact": 0.0}
_QUOTED = re.compile(r"\"([^\"]+)\"|«\s*([^»]+?)\s*»|“([^”]+)”")
# "Translation:", "French:", "In German:": a short run of letters and spaces before a colon.
_LABEL = re.compile(r"^[^\W\d_][^\W\d_ ]*(?: [^\W\d_]+){0,2}\s*:\s*")


@functools.cache
def _names(kind: str, lang: str) -> dict[str, str]:
    from babel import Locale

    table = Locale(lang).territories if kind == "country" else Locale(lang).languages
    # Two-letter codes only: countries (not regions like "001") and ISO 639-1 languages.
    return {k: v for k, v in table.items() if len(k) == 2 and k.isalpha()}


def make_pair(kind: str, target: str, rng: random.Random) -> tuple[str, str]:
    """One (English source, reference in ``target``) pair of ``kind``, drawn with ``rng``."""
    if kind in ("number", "ordinal", "year"):
        from num2words import num2words

        if kind == "number":
            digits = rng.randint(1, 4)
            value = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        else:
            value = rng.randint(1, 100) if kind == "ordinal" else rng.randint(1900, 2099)
        to = "cardinal" if kind == "number" else kind
        return num2words(value, lang="en", to=to), num2words(value, lang=target, to=to)
    if kind == "date":
        from babel.dates import format_date

        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randrange(36524))
        return format_date(day, "long", locale="en"), format_date(day, "long", locale=target)
    english, local = _names(kind, "en"), _names(kind, target)
    code = rng.choice(sorted(set(english) & set(local)))
    return english[code], local[code]


def extract_translation(completion: str) -> str:
    """The translation in a completion, by the rules in the module docstring ('' if none)."""
    lines = [line.strip() for line in completion_text(completion).splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    line = _LABEL.sub("", line.strip("*").strip(), count=1)
    quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(line)]
    if quoted:
        line = quoted[-1]
    return line.strip().strip("*\"'`“”«» ").rstrip(" .!;,").strip()


def normalize(text: str) -> str:
    """NFC, case-folded, single-spaced: the form exact matches compare."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


@functools.cache
def _metrics() -> tuple[Any, Any]:
    from sacrebleu.metrics import BLEU, CHRF

    # Case-insensitive: references are fragments, so a capital at the start means nothing.
    return CHRF(lowercase=True), BLEU(lowercase=True, effective_order=True)


def chrf_reward(prompts: list, completions: list, reference: list, **_: Any) -> list[float | None]:
    """Sentence chrF of the extracted translation against ``reference``, scaled to [0, 1]."""
    chrf = _metrics()[0]
    return [
        chrf.sentence_score(extract_translation(c), [r]).score / 100.0
        for c, r in zip(completions, reference, strict=True)
    ]


def exact_reward(prompts: list, completions: list, reference: list, **_: Any) -> list[float | None]:
    """1.0 when the extracted translation equals ``reference`` after ``normalize``."""
    return [
        float(normalize(extract_translation(c)) == normalize(r))
        for c, r in zip(completions, reference, strict=True)
    ]


_REWARDS: dict[str, Callable[..., list]] = {"chrf": chrf_reward, "exact": exact_reward}


@register_task("translation")
class TranslationTask(Task):
    """English -> ``targets`` translation of numbers, dates and names (see module docstring)."""

    name = "translation"
    source = "num2words + babel (CLDR)"

    def __init__(
        self,
        *,
        targets: Sequence[str] = ("fr", "de", "es"),
        kinds: Sequence[str] = KINDS,
        train_size: int = 2000,
        eval_size: int = 64,
        seed: int = 0,
        eval_seed: int = 0,
        weights: dict[str, float] | None = None,
        comet_model: str | None = None,
    ) -> None:
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        check_options(self.name, dict.fromkeys(self.targets), LANGUAGES, kind="target language")
        check_options(self.name, dict.fromkeys(self.kinds), KINDS, kind="kind")
        if not self.targets or not self.kinds:
            raise TaskOptionError("task 'translation': targets and kinds must not be empty")
        weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        check_options(self.name, weights, DEFAULT_WEIGHTS, kind="reward weight")
        for key, value in (("train_size", train_size), ("eval_size", eval_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TaskOptionError(f"task 'translation': {key} must be an integer >= 0")
        self.rewards = [RewardSpec(k, _REWARDS[k], float(w)) for k, w in weights.items() if w]
        self.description = (
            f"English -> {', '.join(self.targets)}: {', '.join(self.kinds)} (chrF, BLEU)"
        )
        self._sizes = (train_size, eval_size)
        self._seeds = (seed, eval_seed)
        self._comet = _load_comet(comet_model) if comet_model else None

    def _draw(self, split: str, count: int, skip: set[str]) -> list[Example]:
        rng = random.Random(split_seed("translation", split, self._seeds[split == "eval"]))
        seen, out = set(skip), []
        for index in range(50 * count + 100):
            if len(out) == count:
                break
            kind, target = rng.choice(self.kinds), rng.choice(self.targets)
            source, reference = make_pair(kind, target, rng)
            key = normalize(source)
            if key in seen or key == normalize(reference):
                continue
            if split == "eval":
                seen.add(key)
            prompt = (
                f"Translate into {LANGUAGES[target]}. Reply with the {LANGUAGES[target]} text "
                f"only.\n\n{source}"
            )
            columns = {"reference": reference, "source": source, "target": target, "kind": kind}
            out.append(
                Example(
                    f"translation/{split}/{index}", [{"role": "user", "content": prompt}], columns
                )
            )
        if len(out) < count:
            raise TaskOptionError(
                f"task 'translation': only {len(out)} {split} pairs found; lower {split}_size "
                "or add kinds"
            )
        return out

    @functools.cached_property
    def _eval(self) -> tuple[Example, ...]:
        return tuple(self._draw("eval", self._sizes[1], set()))

    @functools.cached_property
    def _train(self) -> tuple[Example, ...]:
        held_out = {normalize(ex.columns["source"]) for ex in self._eval}
        return tuple(self._draw("train", self._sizes[0], held_out))

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``correct`` (normalised exact match), ``chrf`` and ``bleu`` (0-100), ``comet``."""
        chrf, bleu = _metrics()
        hypothesis, reference = extract_translation(completion), example.columns["reference"]
        out = {
            "correct": float(normalize(hypothesis) == normalize(reference)),
            "chrf": chrf.sentence_score(hypothesis, [reference]).score,
            "bleu": bleu.sentence_score(hypothesis, [reference]).score,
        }
        if self._comet is not None:
            data = [{"src": example.columns["source"], "mt": hypothesis, "ref": reference}]
            out["comet"] = float(self._comet.predict(data, batch_size=1, gpus=0).scores[0])
        return out

    def metric_names(self) -> list[str]:
        return ["correct", "chrf", "bleu"] + (["comet"] if self._comet is not None else [])


def _load_comet(path: str) -> Any:
    if not Path(path).exists():
        raise TaskOptionError(f"task 'translation': comet_model {path!r} does not exist")
    try:
        from comet import load_from_checkpoint
    except ImportError as err:
        raise TaskOptionError(
            "task 'translation': comet_model needs the unbabel-comet package"
        ) from err
    return load_from_checkpoint(path)
