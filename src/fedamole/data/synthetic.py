"""The embedded default dataset: a procedurally generated instruction suite
(docs/data.md#synthetic-suite).

Ten task families, each one category, in the Dolly record shape (instruction, context, response,
category) and rendered with the Alpaca template (docs/algorithm.md#prompt-templates). Seven are free
text, scored by generation and ROUGE-L; three are answer-choice (``Example.choices`` set), scored by
per-choice NLL (docs/algorithm.md#evaluation). Six families put their data in the context (the
``### Input:`` template); four put it in the instruction (the shorter template without input) to
keep every prompt short:

===============  =====================================================  =====================
family           instruction / context (example)                        response
===============  =====================================================  =====================
arithmetic       Calculate the result. / ``47 + 18``                    ``65``
reverse_word     Reverse the letters of the word. / ``tolima``          ``amilot``
uppercase        Rewrite the text in capital letters. / ``red fox``     ``RED FOX``
unit_conversion  Convert the quantity to the smaller unit. / ``7 km``   ``7000 m``
sentiment        Is the review positive or negative? / ``The meal was   ``positive`` (choice)
                 really lovely.``
parity           Is the number even or odd? / ``4817``                  ``odd`` (choice)
date_format      Write March 5, 2021 in YYYY-MM-DD format.              ``2021-03-05``
sort_numbers     Sort from smallest to largest: 32, 7, 19               ``7, 19, 32``
table_lookup     plum: 4, kiwi: 7, lime: 2. What is the value of kiwi?  ``7``
entailment       Tom is in Paris. Does it follow that Tom is in         ``yes`` (choice)
                 France? Answer yes, no or maybe.
===============  =====================================================  =====================

Each family has a fixed wording, and its answer is a deterministic function of the prompt in a fixed
format, so a small model learns the format (and, for most families, the rule) within a few dozen
steps. Words to reverse are pronounceable pseudo-words, so reversal cannot be memorized. With the
SmolLM2 (GPT-2-style BPE) tokenizer every prompt is at most 59 tokens (45 of them the Alpaca
template) and every answer at most 10, because the embedded demo trains on two CPU cores.

**Conflicting families** (opt-in: named in ``data.families``, never part of the default ten):
``topic_code_0`` ... ``topic_code_7`` share one instruction and one input vocabulary (48 common
nouns, 12 in each of 4 topics: animals, fruits, vehicles, instruments) and answer with a letter
``A``-``D`` chosen by the noun's topic through a fixed per-family code (``TOPIC_CODES``). Any two
of these families answer at least 3 of the 4 topics differently, and ``topic_code_0`` ... ``_3``
all 4 (a Latin square): a model pooled over two of them is confused, while one trained on more
examples of its own family learns more of its code. (Measured before choosing, local training at
lr 5e-3, 40 steps of 4 on 22 examples: this 4-topic code reached 0.75 test accuracy, chance 0.25;
an 8-topic code with letters or with the topic names permuted stayed at chance.) They exist for
the collaboration benchmark (docs/results/collaboration.md), where whom a client shares with
decides its score. The codes do not depend on ``seed``.

Generation is deterministic in ``seed``: families are interleaved round-robin (sizes differ by at
most one) and the result is shuffled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from fedamole.data.prompts import alpaca_prompt
from fedamole.data.types import Example

__all__ = ["CONFLICTING_FAMILIES", "FAMILIES", "TOPIC_CODES", "generate_synthetic"]


class _Item(NamedTuple):
    instruction: str
    context: str
    response: str
    choices: tuple[str, ...] = ()


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SHORT_WORDS = (
    "red", "fox", "runs", "big", "dog", "sits", "cold", "rain", "falls", "blue", "sky",
    "shines", "old", "cat", "sleeps", "fast", "car", "stops", "warm", "sun", "rises",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_UNITS = (
    ("km", "m", 1000),
    ("kg", "g", 1000),
    ("h", "min", 60),
    ("m", "cm", 100),
    ("min", "s", 60),
    ("L", "mL", 1000),
    ("cm", "mm", 10),
    ("day", "h", 24),
)
_FRUITS = ("plum", "kiwi", "lime", "pear", "fig", "date", "lemon", "mango", "grape", "peach")
_NOUNS = (
    "soup", "movie", "hotel", "service", "book", "room", "song", "meal", "show", "trip", "game",
    "coffee", "cake", "concert", "class", "film", "pizza", "garden", "bus", "museum",
)  # fmt: skip
_POSITIVE = (
    "delicious", "wonderful", "great", "lovely", "excellent", "superb", "pleasant", "amazing",
    "fantastic", "perfect",
)  # fmt: skip
_NEGATIVE = (
    "awful", "terrible", "boring", "horrible", "dreadful", "bad", "disappointing", "poor",
    "dull", "unpleasant",
)  # fmt: skip
_INTENSIFIERS = ("", "really ", "very ", "truly ")
_NAMES = (
    "Tom", "Anna", "Omar", "Lena", "Ravi", "Mia", "Ken", "Sara", "Ivan", "Nora", "Leo", "Eva",
    "Sam", "Yuki", "Ali", "Rosa",
)  # fmt: skip
_CITIES = (
    ("Paris", "France"),
    ("Rome", "Italy"),
    ("Tokyo", "Japan"),
    ("Madrid", "Spain"),
    ("Berlin", "Germany"),
    ("Cairo", "Egypt"),
    ("Lima", "Peru"),
    ("Oslo", "Norway"),
)
_STATES = ("happy", "tired", "hungry", "busy", "late", "bored")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _arithmetic(rng: np.random.Generator) -> _Item:
    a, b = (int(x) for x in rng.integers(10, 100, size=2))
    if rng.random() < 0.5:
        return _Item("Calculate the result.", f"{a} + {b}", str(a + b))
    a, b = max(a, b), min(a, b)
    return _Item("Calculate the result.", f"{a} - {b}", str(a - b))


def _reverse_word(rng: np.random.Generator) -> _Item:
    syllables = int(rng.integers(2, 4))
    word = "".join(_pick(rng, _CONSONANTS) + _pick(rng, _VOWELS) for _ in range(syllables))
    return _Item("Reverse the letters of the word.", word, word[::-1])


def _uppercase(rng: np.random.Generator) -> _Item:
    words = rng.choice(len(_SHORT_WORDS), size=3, replace=False)
    text = " ".join(_SHORT_WORDS[i] for i in words)
    return _Item("Rewrite the text in capital letters.", text, text.upper())


def _unit_conversion(rng: np.random.Generator) -> _Item:
    big, small, factor = _UNITS[int(rng.integers(len(_UNITS)))]
    value = int(rng.integers(1, 200))
    return _Item(
        "Convert the quantity to the smaller unit.", f"{value} {big}", f"{value * factor} {small}"
    )


def _sentiment(rng: np.random.Generator) -> _Item:
    positive = bool(rng.random() < 0.5)
    adjective = _pick(rng, _POSITIVE if positive else _NEGATIVE)
    context = f"The {_pick(rng, _NOUNS)} was {_pick(rng, _INTENSIFIERS)}{adjective}."
    answer = "positive" if positive else "negative"
    return _Item("Is the review positive or negative?", context, answer, ("positive", "negative"))


def _parity(rng: np.random.Generator) -> _Item:
    number = int(rng.integers(100, 10000))
    answer = "even" if number % 2 == 0 else "odd"
    return _Item("Is the number even or odd?", str(number), answer, ("even", "odd"))


def _date_format(rng: np.random.Generator) -> _Item:
    year, month = int(rng.integers(1990, 2031)), int(rng.integers(1, 13))
    day = int(rng.integers(1, 29))
    instruction = f"Write {_MONTHS[month - 1]} {day}, {year} in YYYY-MM-DD format."
    return _Item(instruction, "", f"{year:04d}-{month:02d}-{day:02d}")


def _sort_numbers(rng: np.random.Generator) -> _Item:
    numbers = [int(x) for x in rng.choice(np.arange(1, 100), size=3, replace=False)]
    instruction = f"Sort from smallest to largest: {', '.join(map(str, numbers))}"
    return _Item(instruction, "", ", ".join(map(str, sorted(numbers))))


def _table_lookup(rng: np.random.Generator) -> _Item:
    keys = [_FRUITS[i] for i in rng.choice(len(_FRUITS), size=3, replace=False)]
    values = [int(v) for v in rng.choice(np.arange(1, 10), size=3, replace=False)]
    target = int(rng.integers(3))
    table = ", ".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
    return _Item(f"{table}. What is the value of {keys[target]}?", "", str(values[target]))


def _entailment(rng: np.random.Generator) -> _Item:
    name = _pick(rng, _NAMES)
    city_idx = int(rng.integers(len(_CITIES)))
    city, country = _CITIES[city_idx]
    kind = int(rng.integers(3))
    if kind == 0:
        claim, answer = f"{name} is in {country}", "yes"
    elif kind == 1:
        other = (city_idx + 1 + int(rng.integers(len(_CITIES) - 1))) % len(_CITIES)
        claim, answer = f"{name} is in {_CITIES[other][1]}", "no"
    else:
        claim, answer = f"{name} is {_pick(rng, _STATES)}", "maybe"
    instruction = f"{name} is in {city}. Does it follow that {claim}? Answer yes, no or maybe."
    return _Item(instruction, "", answer, ("yes", "no", "maybe"))


FAMILIES: dict[str, Callable[[np.random.Generator], _Item]] = {
    "arithmetic": _arithmetic,
    "reverse_word": _reverse_word,
    "uppercase": _uppercase,
    "unit_conversion": _unit_conversion,
    "date_format": _date_format,
    "sort_numbers": _sort_numbers,
    "table_lookup": _table_lookup,
    "sentiment": _sentiment,
    "entailment": _entailment,
    "parity": _parity,
}
"""The default families: name -> generator of one item; the name is the example's category."""

_TOPICS: dict[str, tuple[str, ...]] = {
    "animal": ("tiger", "horse", "rabbit", "eagle", "shark", "monkey", "sheep", "snake", "wolf",
               "camel", "frog", "zebra"),
    "fruit": ("apple", "banana", "cherry", "mango", "peach", "lemon", "grape", "melon", "plum",
              "orange", "pear", "kiwi"),
    "vehicle": ("truck", "bicycle", "train", "bus", "boat", "taxi", "tractor", "scooter", "van",
                "ship", "tram", "plane"),
    "instrument": ("guitar", "piano", "violin", "drum", "flute", "trumpet", "harp", "cello",
                   "banjo", "organ", "clarinet", "saxophone"),
}  # fmt: skip
_CODE_LETTERS = ("A", "B", "C", "D")
_CODE_INSTRUCTION = "Which letter is the code of this word? Answer A, B, C or D."
# Eight permutations of the four letters, all even: any two differ in at least 3 of 4 places
# (two even permutations never differ by one swap), and within each half, the Klein group and its
# coset by a 3-cycle, in all 4 (Latin squares).
_KLEIN = ((0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0))
_CODE_PERMUTATIONS = _KLEIN + tuple(tuple((1, 2, 0, 3)[k] for k in v) for v in _KLEIN)
_CODE_SEED = 20261206  # fixes which letter starts where; independent of the data seed


def _topic_codes() -> tuple[dict[str, str], ...]:
    """The eight codes topic -> letter: ``_CODE_PERMUTATIONS`` relabelled by a fixed shuffle of
    the letters (so that code 0 is not alphabetical)."""
    letters = [_CODE_LETTERS[int(i)] for i in np.random.default_rng(_CODE_SEED).permutation(4)]
    return tuple(
        {topic: letters[perm[t]] for t, topic in enumerate(_TOPICS)} for perm in _CODE_PERMUTATIONS
    )


TOPIC_CODES: tuple[dict[str, str], ...] = _topic_codes()
"""``TOPIC_CODES[v]``: topic -> answer letter of family ``topic_code_<v>``."""


def _topic_code(code: dict[str, str]) -> Callable[[np.random.Generator], _Item]:
    def generate(rng: np.random.Generator) -> _Item:
        topic = _pick(rng, tuple(_TOPICS))
        return _Item(_CODE_INSTRUCTION, _pick(rng, _TOPICS[topic]), code[topic], _CODE_LETTERS)

    return generate


CONFLICTING_FAMILIES: dict[str, Callable[[np.random.Generator], _Item]] = {
    f"topic_code_{v}": _topic_code(code) for v, code in enumerate(TOPIC_CODES)
}
"""Opt-in families that answer one shared prompt differently (see the module docstring)."""

_ALL_FAMILIES = FAMILIES | CONFLICTING_FAMILIES


def generate_synthetic(
    num_examples: int, *, seed: int = 0, families: Sequence[str] = ()
) -> list[Example]:
    """Generate the synthetic instruction suite.

    Args:
        num_examples: how many examples in total; families get equal shares (differing by <= 1).
        seed: the generator seed; the same seed always gives the same list.
        families: the family names to use (:data:`FAMILIES`, :data:`CONFLICTING_FAMILIES`);
            empty means the ten of :data:`FAMILIES`.

    Returns:
        ``num_examples`` examples in shuffled order, prompts rendered with the Alpaca template.

    Raises:
        ValueError: ``num_examples`` < 1 or an unknown family name.
    """
    if num_examples < 1:
        raise ValueError(f"`data.num_examples` ({num_examples}) must be >= 1")
    unknown = [name for name in families if name not in _ALL_FAMILIES]
    if unknown:
        raise ValueError(
            f"`data.families` has unknown name(s) {unknown}; choose from {sorted(_ALL_FAMILIES)} "
            "or leave it empty for the default ten"
        )
    names = list(dict.fromkeys(families)) or list(FAMILIES)
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(num_examples):
        name = names[i % len(names)]
        item = _ALL_FAMILIES[name](rng)
        examples.append(
            Example(
                prompt=alpaca_prompt(item.instruction, item.context),
                response=item.response,
                category=name,
                choices=item.choices,
                instruction=item.instruction,
                context=item.context,
            )
        )
    order = rng.permutation(num_examples)
    return [examples[i] for i in order]
