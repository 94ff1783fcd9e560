"""Dedupe, ids and seeded, stratified, order-independent splits."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter

import pytest

from frozenlm.tasks.spec import Example
from frozenlm.tasks.splits import (
    dedupe,
    example_id,
    make_example,
    make_splits,
    normalise,
    split_off,
)


def _examples(counts: dict[str, int]) -> list[Example]:
    return [
        make_example({"text": f"{label} example number {i}"}, label, ("text",))
        for label, n in counts.items()
        for i in range(n)
    ]


def _ids(examples: tuple[Example, ...]) -> list[str]:
    return [example.id for example in examples]


def test_example_id_is_sha1_of_normalised_input() -> None:
    expected = hashlib.sha1(b"hello world").hexdigest()[:12]
    assert example_id({"text": "  Hello \n World "}, ("text",)) == expected
    assert normalise("  A\tB  c ") == "a b c"
    two = example_id({"q": "A", "c": "B"}, ("q", "c"))
    assert two == hashlib.sha1(b"a\nb").hexdigest()[:12]
    assert two != example_id({"q": "A", "c": "B"}, ("c", "q"))


def test_dedupe_drops_duplicates_conflicts_and_empty_inputs() -> None:
    rows = [
        make_example({"text": "Great film"}, "pos", ("text",)),
        make_example({"text": "great   FILM"}, "pos", ("text",)),
        make_example({"text": "Odd film"}, "pos", ("text",)),
        make_example({"text": "odd film"}, "neg", ("text",)),
        make_example({"text": "   "}, "neg", ("text",)),
        make_example({"text": "Bad film"}, "neg", ("text",)),
    ]
    kept = dedupe(rows)
    assert sorted(ex.fields["text"] for ex in kept) == ["Bad film", "Great film"]
    assert _ids(tuple(kept)) == sorted(_ids(tuple(kept)))
    # The copy kept does not depend on the input order.
    assert dedupe(list(reversed(rows))) == kept


def test_conflicting_labels_are_reported_once_at_warning_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = [
        make_example({"text": "Odd film"}, "pos", ("text",)),
        make_example({"text": "odd film"}, "neg", ("text",)),
        make_example({"text": "odd  FILM"}, "neg", ("text",)),
        make_example({"text": "Mixed film"}, "pos", ("text",)),
        make_example({"text": "mixed film"}, "neg", ("text",)),
        make_example({"text": "Bad film"}, "neg", ("text",)),
    ]
    with caplog.at_level(logging.WARNING, logger="frozenlm.tasks.splits"):
        kept = dedupe(rows, what="d.csv")
    assert [ex.fields["text"] for ex in kept] == ["Bad film"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "d.csv: dropped 5 rows: 2 inputs occur with different labels, so no copy is kept"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="frozenlm.tasks.splits"):
        dedupe(rows[-1:], what="d.csv")
    assert not caplog.records  # no conflict, no warning


def test_split_sizes_follow_fractions_and_caps() -> None:
    train, dev, test = make_splits(_examples({"a": 600, "b": 400}), seed=0)
    assert (len(train), len(dev), len(test)) == (700, 100, 200)
    train, dev, test = make_splits(_examples({"a": 9000, "b": 3000}), seed=0)
    assert (len(train), len(dev), len(test)) == (10500, 500, 1000)


def test_splits_are_stratified_and_disjoint() -> None:
    examples = _examples({"a": 700, "b": 250, "c": 47, "d": 3})
    train, dev, test = make_splits(examples, seed=0)
    assert Counter(ex.label for ex in test) == {"a": 140, "b": 50, "c": 9, "d": 1}
    # "d" needs one dev example, so "c" (4.7 by share) gives up its rounded-up one.
    assert Counter(ex.label for ex in dev) == {"a": 70, "b": 25, "c": 4, "d": 1}
    assert Counter(ex.label for ex in train) == {"a": 490, "b": 175, "c": 34, "d": 1}
    ids = _ids(train) + _ids(dev) + _ids(test)
    assert len(set(ids)) == len(ids) == len(examples)


def test_tiny_class_stays_out_of_dev_and_test_when_below_three() -> None:
    train, dev, test = make_splits(_examples({"a": 50, "b": 2, "c": 1}), seed=3)
    assert Counter(ex.label for ex in train)["c"] == 1
    assert Counter(ex.label for ex in train)["b"] >= 1
    assert len(test) == 10 and len(dev) == 5


def test_splits_ignore_input_order_and_depend_on_seed() -> None:
    examples = _examples({"a": 300, "b": 200})
    shuffled = list(examples)
    random.Random(42).shuffle(shuffled)
    first = make_splits(examples, seed=0)
    assert make_splits(shuffled, seed=0) == first
    other = make_splits(examples, seed=1)
    assert set(_ids(other[2])) != set(_ids(first[2]))
    assert len(other[2]) == len(first[2])


def test_labels_are_mixed_inside_each_split() -> None:
    train, _, _ = make_splits(_examples({"a": 500, "b": 500}), seed=0)
    assert {ex.label for ex in train[:20]} == {"a", "b"}


def test_unstratified_splits_for_generation() -> None:
    examples = [
        make_example({"question": f"question {i}?"}, f"answer {i % 7}", ("question",), ("x",))
        for i in range(261)
    ]
    train, dev, test = make_splits(examples, seed=0, stratify=False)
    assert (len(train), len(dev), len(test)) == (183, 26, 52)
    assert make_splits(list(reversed(examples)), seed=0, stratify=False) == (train, dev, test)


def test_split_off_takes_a_stratified_sample() -> None:
    examples = _examples({"a": 80, "b": 20})
    rest, taken = split_off(examples, 10, seed=0)
    assert Counter(ex.label for ex in taken) == {"a": 8, "b": 2}
    assert len(rest) == 90
    assert not set(_ids(rest)) & set(_ids(taken))
