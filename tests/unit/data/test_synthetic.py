"""The synthetic suite: deterministic, balanced, every family present, answers follow the prompt."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from fedamole.data.prompts import alpaca_prompt
from fedamole.data.synthetic import FAMILIES, generate_synthetic

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip


def _expected(ex) -> str | None:
    """The answer recomputed from the prompt alone (families with a closed-form rule)."""
    text = ex.context or ex.instruction
    if ex.category == "arithmetic":
        a, op, b = text.split()
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if ex.category == "reverse_word":
        return text[::-1]
    if ex.category == "uppercase":
        return text.upper()
    if ex.category == "parity":
        return "even" if int(text) % 2 == 0 else "odd"
    if ex.category == "sort_numbers":
        numbers = [int(x) for x in text.split(":")[1].split(",")]
        return ", ".join(str(n) for n in sorted(numbers))
    if ex.category == "date_format":
        month, day, year = re.match(r"Write (\w+) (\d+), (\d+) in", text).groups()
        return f"{int(year):04d}-{_MONTHS.index(month) + 1:02d}-{int(day):02d}"
    if ex.category == "table_lookup":
        table, key = re.match(r"(.*)\. What is the value of (\w+)\?", text).groups()
        return dict(item.split(": ") for item in table.split(", "))[key]
    return None


def test_same_seed_same_data_other_seed_other_data():
    assert generate_synthetic(200, seed=3) == generate_synthetic(200, seed=3)
    assert generate_synthetic(200, seed=3) != generate_synthetic(200, seed=4)


def test_every_family_present_and_balanced():
    examples = generate_synthetic(1003, seed=0)
    counts = Counter(ex.category for ex in examples)
    assert set(counts) == set(FAMILIES) and len(FAMILIES) >= 8
    assert max(counts.values()) - min(counts.values()) <= 1


def test_choice_families_answer_among_choices_and_free_text_have_none():
    examples = generate_synthetic(600, seed=1)
    choice_families = {ex.category for ex in examples if ex.choices}
    assert choice_families == {"sentiment", "entailment", "parity"}
    for ex in examples:
        assert (ex.response in ex.choices) if ex.choices else ex.choices == ()


def test_answers_follow_from_the_prompt():
    examples = generate_synthetic(2000, seed=2)
    checked = 0
    for ex in examples:
        expected = _expected(ex)
        if expected is not None:
            assert ex.response == expected, ex
            checked += 1
    assert checked > 1000
    answers: dict[str, str] = {}  # every family: one prompt, one answer
    for ex in examples:
        assert answers.setdefault(ex.prompt, ex.response) == ex.response


def test_prompts_use_alpaca_template_and_are_short():
    for ex in generate_synthetic(500, seed=5):
        assert ex.prompt == alpaca_prompt(ex.instruction, ex.context)
        # The template itself is 140-205 characters; the task text adds at most about 75.
        assert len(ex.prompt) < 290 and len(ex.response) < 25


def test_family_subset_and_unknown_family():
    examples = generate_synthetic(10, seed=0, families=("parity", "arithmetic"))
    assert {ex.category for ex in examples} == {"parity", "arithmetic"}
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['nope'\]"):
        generate_synthetic(10, families=("parity", "nope"))


def test_conflicting_families_answer_one_prompt_differently():
    """The topic-code families share instruction and inputs; any two answer most inputs
    differently (at least 3 topics of 4; topic_code_0..3 all 4), each answer is the code of the
    word's topic."""
    from itertools import combinations

    from fedamole.data.synthetic import _TOPICS, CONFLICTING_FAMILIES, TOPIC_CODES

    names = sorted(CONFLICTING_FAMILIES)
    assert len(names) >= 8 and not set(names) & set(FAMILIES)  # opt-in, not in the default ten
    topic_of = {word: topic for topic, words in _TOPICS.items() for word in words}
    answers: dict[str, dict[str, str]] = {}
    for v, name in enumerate(names):
        examples = generate_synthetic(400, seed=7, families=(name,))
        assert examples == generate_synthetic(400, seed=7, families=(name,))
        for ex in examples:
            assert ex.category == name and ex.response in ex.choices
            assert ex.response == TOPIC_CODES[v][topic_of[ex.context]]
            assert answers.setdefault(name, {}).setdefault(ex.prompt, ex.response) == ex.response
    prompts = {p for a in answers.values() for p in a}
    assert len({ex.instruction for ex in generate_synthetic(80, families=tuple(names))}) == 1
    for a, b in combinations(names, 2):
        shared = set(answers[a]) & set(answers[b])
        assert len(shared) > 20  # the same prompts occur in both families
        differ = sum(answers[a][p] != answers[b][p] for p in shared) / len(shared)
        assert differ > 0.6, (a, b)
        if {a, b} <= {f"topic_code_{v}" for v in range(4)}:
            assert differ == 1.0, (a, b)
    assert len(prompts) == 48
