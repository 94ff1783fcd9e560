"""Example ids, deduplication and seeded, stratified, deterministic train/dev/test splits.

Split sizes: test = min(20 % of the examples, 1000), dev = min(10 %, 500), the rest is train.
Stratified splits keep each label's share in every split (largest-remainder rounding) and put at
least one example of every label with >= 3 examples in each split. Splits depend only on the
examples and the seed, never on the order the examples came in: examples are sorted by id and
then shuffled with `random.Random(seed)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence

from frozenlm.tasks.spec import Example

logger = logging.getLogger(__name__)

TEST_FRACTION, TEST_MAX = 0.2, 1000
DEV_FRACTION, DEV_MAX = 0.1, 500

Splits = tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]


def normalise(text: str) -> str:
    """Lowercase with every run of whitespace collapsed to one space (the dedupe key)."""
    return " ".join(text.lower().split())


def example_id(fields: Mapping[str, str], input_fields: Sequence[str]) -> str:
    """Stable id: the first 12 hex digits of the sha1 of the normalised input fields."""
    key = "\n".join(normalise(fields[name]) for name in input_fields)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def make_example(
    fields: Mapping[str, str],
    label: str,
    input_fields: Sequence[str],
    answers: Sequence[str] = (),
) -> Example:
    """An Example whose id is derived from its input fields."""
    return Example(
        id=example_id(fields, input_fields),
        fields=dict(fields),
        label=label,
        answers=tuple(answers),
    )


def dedupe(examples: Iterable[Example], *, what: str = "examples") -> list[Example]:
    """Examples with empty inputs, duplicates and conflicting labels removed, sorted by id.

    Examples are equal when their normalised input fields are equal (same id). When all copies
    agree on the (normalised) label one copy is kept, chosen independently of input order;
    when they disagree every copy is dropped. `what` names the data in log messages.
    """
    groups: dict[str, list[Example]] = {}
    empty = 0
    total = 0
    for example in examples:
        total += 1
        if any(not value.strip() for value in example.fields.values()):
            empty += 1
            continue
        groups.setdefault(example.id, []).append(example)
    kept: list[Example] = []
    conflicts = 0
    conflicting_rows = 0
    for key in sorted(groups):
        copies = groups[key]
        if len({normalise(copy.label) for copy in copies}) > 1:
            conflicts += 1
            conflicting_rows += len(copies)
            continue
        kept.append(min(copies, key=_sort_key))
    duplicates = total - empty - conflicting_rows - len(kept)
    if conflicts:
        logger.warning(
            "%s: dropped %d rows: %d inputs occur with different labels, so no copy is kept",
            what,
            conflicting_rows,
            conflicts,
        )
    logger.info(
        "%s: %d rows -> %d examples (%d duplicates, %d inputs with conflicting labels dropped, "
        "%d empty inputs dropped)",
        what,
        total,
        len(kept),
        duplicates,
        conflicts,
        empty,
    )
    return kept


def split_sizes(n: int) -> tuple[int, int]:
    """(dev, test) target sizes for `n` examples."""
    return min(int(n * DEV_FRACTION), DEV_MAX), min(int(n * TEST_FRACTION), TEST_MAX)


def make_splits(examples: Sequence[Example], *, seed: int = 0, stratify: bool = True) -> Splits:
    """Deterministic (train, dev, test) splits of deduplicated examples.

    With `stratify` (classification) every label keeps its share in each split, and every
    label with >= 3 examples appears in each split (which may make dev/test a few examples
    larger than the target on tiny data). Without it (generation) the splits are plain
    slices of one seeded shuffle.
    """
    rng = random.Random(seed)
    groups = _shuffled_groups(examples, rng, stratify)
    counts = {label: len(group) for label, group in groups.items()}
    dev_size, test_size = split_sizes(len(examples))
    # Test first, leaving room for one dev and one train example of every label with >= 3.
    test_quota = _quota(
        counts,
        test_size,
        lower={c: int(n >= 3) for c, n in counts.items()},
        upper={c: n - 2 if n >= 3 else max(n - 1, 0) for c, n in counts.items()},
    )
    rest = {c: counts[c] - test_quota[c] for c in counts}
    dev_quota = _quota(
        counts,
        dev_size,
        lower={c: int(counts[c] >= 3) for c in counts},
        upper={c: max(rest[c] - 1, 0) for c in counts},
    )
    train: list[Example] = []
    dev: list[Example] = []
    test: list[Example] = []
    for label, group in groups.items():
        n_test, n_dev = test_quota[label], dev_quota[label]
        test.extend(group[:n_test])
        dev.extend(group[n_test : n_test + n_dev])
        train.extend(group[n_test + n_dev :])
    for part in (train, dev, test):  # mix the labels inside each split
        rng.shuffle(part)
    return tuple(train), tuple(dev), tuple(test)


def split_off(
    examples: Sequence[Example], size: int, *, seed: int = 0, stratify: bool = True
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(rest, taken): `size` examples taken out of `examples`, stratified and seeded as above.

    Used to carve a dev split out of a user's train file when the task gives no dev file.
    """
    rng = random.Random(seed)
    groups = _shuffled_groups(examples, rng, stratify)
    counts = {label: len(group) for label, group in groups.items()}
    quota = _quota(
        counts,
        size,
        lower={c: int(n >= 2) for c, n in counts.items()},
        upper={c: max(n - 1, 0) for c, n in counts.items()},
    )
    rest: list[Example] = []
    taken: list[Example] = []
    for label, group in groups.items():
        taken.extend(group[: quota[label]])
        rest.extend(group[quota[label] :])
    rng.shuffle(rest)
    rng.shuffle(taken)
    return tuple(rest), tuple(taken)


def _sort_key(example: Example) -> tuple[str, str, str]:
    return example.id, example.label, json.dumps(dict(example.fields), sort_keys=True)


def _shuffled_groups(
    examples: Sequence[Example], rng: random.Random, stratify: bool
) -> dict[str, list[Example]]:
    """Examples grouped by label (one group without `stratify`), each sorted then shuffled."""
    groups: dict[str, list[Example]] = {}
    for example in sorted(examples, key=_sort_key):
        groups.setdefault(example.label if stratify else "", []).append(example)
    for label in sorted(groups):
        rng.shuffle(groups[label])
    return {label: groups[label] for label in sorted(groups)}


def _quota(
    counts: Mapping[str, int],
    total: int,
    *,
    lower: Mapping[str, int],
    upper: Mapping[str, int],
) -> dict[str, int]:
    """How many of `total` each group gives: proportional to `counts`, within [lower, upper].

    Largest-remainder rounding; ties go to the label that sorts first. The lower bounds win
    over `total` when they add up to more.
    """
    n = sum(counts.values())
    if n == 0:
        return {c: 0 for c in counts}
    exact = {c: counts[c] * total / n for c in counts}
    quota = {c: min(upper[c], max(lower[c], math.floor(exact[c]))) for c in counts}
    while sum(quota.values()) < total:
        room = [c for c in sorted(counts) if quota[c] < upper[c]]
        if not room:
            break
        best = max(room, key=lambda c: exact[c] - quota[c])  # first label wins ties
        quota[best] += 1
    while sum(quota.values()) > total:
        spare = [c for c in sorted(counts) if quota[c] > lower[c]]
        if not spare:
            break
        best = max(spare, key=lambda c: quota[c] - exact[c])
        quota[best] -= 1
    return quota


def balanced_sample(examples: Sequence[Example], size: int | None, seed: int) -> list[Example]:
    """At most `size` examples (all if None or more), the same count per label as far as each
    label's examples allow, in a seeded order."""
    if size is None or size >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    for group in by_label.values():
        rng.shuffle(group)
    picked: list[Example] = []
    groups = [by_label[k] for k in sorted(by_label)]
    while len(picked) < size:
        for group in groups:
            if group and len(picked) < size:
                picked.append(group.pop())
    rng.shuffle(picked)
    return picked
