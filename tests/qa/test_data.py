from __future__ import annotations

from pathlib import Path

import pytest

from frozenlm.errors import DataError
from frozenlm.qa.data import (
    Corpus,
    Passage,
    QAExample,
    load_qa_files,
    make_qa_splits,
    read_passages,
)


def test_toy_task_splits_are_disjoint_and_cover_every_question(toy_qa) -> None:
    ids = [e.id for s in ("train", "dev", "test") for e in toy_qa.split(s)]
    assert len(ids) == len(set(ids)) == 24
    assert toy_qa.split_sizes() == {"train": 18, "dev": 2, "test": 4}
    assert len(toy_qa.corpus) == 36
    # every passage stays in the corpus (open domain), whichever split its question is in
    assert all(g in toy_qa.corpus for e in toy_qa.test for g in e.gold)


def test_splits_group_questions_by_gold_passage() -> None:
    examples = [
        QAExample(id=f"q{i}", question=f"q{i}", answers=("a",), gold=(f"p{i // 2}",))
        for i in range(40)
    ]
    train, dev, test = make_qa_splits(examples, seed=3)
    where = {
        e.gold[0]: name
        for name, split in (("train", train), ("dev", dev), ("test", test))
        for e in split
    }
    for name, split in (("train", train), ("dev", dev), ("test", test)):
        assert all(where[e.gold[0]] == name for e in split)
    assert make_qa_splits(examples, seed=3) == (train, dev, test)
    assert make_qa_splits(examples, seed=4) != (train, dev, test)


def test_corpus_fingerprint_changes_with_any_text() -> None:
    a = Corpus([Passage("x", "one"), Passage("y", "two")])
    b = Corpus([Passage("x", "one"), Passage("y", "two!")])
    assert a.fingerprint == Corpus([Passage("x", "one"), Passage("y", "two")]).fingerprint
    assert a.fingerprint != b.fingerprint
    with pytest.raises(DataError, match="twice"):
        Corpus([Passage("x", "one"), Passage("x", "two")])


def test_csv_files_load_like_jsonl(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("id,title,text\na,Alpha,The alpha text.\nb,,Beta text.\n")
    (tmp_path / "q.csv").write_text("question,answers,gold\nWhat is alpha?,alpha,a\nBeta?,beta,\n")
    task = load_qa_files(tmp_path / "q.csv", tmp_path / "p.csv")
    assert task.corpus[0].full_text == "Alpha: The alpha text."
    assert task.corpus[1].full_text == "Beta text."
    every = {e.question: e for s in ("train", "dev", "test") for e in task.split(s)}
    assert every["What is alpha?"].gold == ("a",)
    assert every["Beta?"].gold == ()


@pytest.mark.parametrize(
    ("questions", "passages", "message"),
    [
        (
            '{"question": "q", "answers": "a", "gold": "zz"}\n',
            '{"id": "a", "text": "t"}\n',
            "gold passage 'zz' is not in the passages file",
        ),
        ('{"question": "q"}\n', '{"id": "a", "text": "t"}\n', "no column 'answers'"),
        ('{"question": "q", "answers": ""}\n', '{"id": "a", "text": "t"}\n', "is empty"),
        (
            '{"question": "q", "answers": "a"}\n{"question": "Q ", "answers": "b"}\n',
            '{"id": "a", "text": "t"}\n',
            "repeats the question of line 1",
        ),
        (
            '{"question": "q", "answers": "a"}\n',
            '{"id": "a", "text": "t"}\n{"id": "a", "text": "u"}\n',
            "repeats the passage id 'a' of line 1",
        ),
        ('{"question": "q", "answers": "a"}\n', '{"id": "a"}\n', "no column 'text'"),
        ('{"question": "q", "answers": "a"}\n', '{"id": "a", "text": "  "}\n', "empty text"),
        ('{"question": "q", "answers": "a"}\n', "", "is empty"),
        ("not json\n", '{"id": "a", "text": "t"}\n', "line 1 is not valid JSON"),
    ],
)
def test_bad_files_are_refused_with_the_cause(
    tmp_path: Path, questions: str, passages: str, message: str
) -> None:
    (tmp_path / "q.jsonl").write_text(questions)
    (tmp_path / "p.jsonl").write_text(passages)
    with pytest.raises(DataError, match=message):
        load_qa_files(tmp_path / "q.jsonl", tmp_path / "p.jsonl")


def test_missing_files_and_tasks_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"passages file .* does not exist"):
        read_passages(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match=r"must be a \.csv or \.jsonl or \.ndjson file"):
        read_passages(tmp_path / "p.txt")
