"""QA tasks: questions with reference answers (and gold passages), asked over a passage corpus.

A QA task is open-domain: every passage of every split stays in the one corpus the retrievers
search. Splits are deterministic and grouped by gold passage, so a test question's gold passage
is never the positive of a train question (the re-ranker cannot memorise it). The built-in `nq`
is built by `frozenlm qa get nq` (see `qa.nq`); user tasks are a questions file (CSV or JSONL:
`question`, `answers`, optionally `gold`) and a passages file (`id`, `text`, optionally `title`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from frozenlm.errors import ConfigError, DataError
from frozenlm.tasks.files import DATA_SUFFIXES, answers_of, cell, read_records
from frozenlm.tasks.spec import SPLITS
from frozenlm.tasks.splits import normalise, split_sizes


@dataclass(frozen=True)
class Passage:
    """One retrievable passage."""

    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """What retrievers index and the reader reads: "title: text" when there is a title."""
        return f"{self.title}: {self.text}" if self.title else self.text


@dataclass(frozen=True)
class QAExample:
    """One question with every acceptable answer.

    `gold` lists the ids of passages known to answer it (may be empty). `extra` holds data some
    analyses need, e.g. `nq`'s counterfactual passage ("swapped_context") in which the answer
    entity was replaced by "swapped_answer".
    """

    id: str
    question: str
    answers: tuple[str, ...]
    gold: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


class Corpus:
    """The passages of a task, in a fixed order (retrievers return positions into it)."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self.passages = tuple(passages)
        self._position: dict[str, int] = {}
        for i, passage in enumerate(self.passages):
            if passage.id in self._position:
                raise DataError(f"the passages hold the id '{passage.id}' twice")
            self._position[passage.id] = i

    def __len__(self) -> int:
        return len(self.passages)

    def __getitem__(self, position: int) -> Passage:
        return self.passages[position]

    def __contains__(self, passage_id: object) -> bool:
        return passage_id in self._position

    def position(self, passage_id: str) -> int:
        return self._position[passage_id]

    def texts(self) -> list[str]:
        return [p.full_text for p in self.passages]

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of every passage's id, title and text: equal fingerprints, equal corpus.
        An index records it and is refused for any other corpus."""
        digest = hashlib.sha256()
        for p in self.passages:
            digest.update(json.dumps([p.id, p.title, p.text]).encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class QATask:
    """Questions split into train / dev / test, and the corpus they are asked over."""

    name: str
    corpus: Corpus
    train: tuple[QAExample, ...]
    dev: tuple[QAExample, ...]
    test: tuple[QAExample, ...]
    source: str = ""

    def split(self, name: str) -> tuple[QAExample, ...]:
        if name not in SPLITS:
            raise ConfigError(f"unknown split '{name}'; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)  # type: ignore[no-any-return]

    def split_sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def split_hash(self) -> str:
        """A short hash of every split's question ids and answers, and of the corpus."""
        digest = hashlib.sha256(self.corpus.fingerprint.encode())
        for name in SPLITS:
            rows = [[ex.id, list(ex.answers), list(ex.gold)] for ex in self.split(name)]
            digest.update(json.dumps([name, rows]).encode())
        return digest.hexdigest()[:16]


def question_id(question: str) -> str:
    """Stable id: the first 12 hex digits of the sha1 of the normalised question."""
    return hashlib.sha1(normalise(question).encode("utf-8")).hexdigest()[:12]


def make_qa_splits(
    examples: Sequence[QAExample], *, seed: int = 0
) -> tuple[tuple[QAExample, ...], tuple[QAExample, ...], tuple[QAExample, ...]]:
    """(train, dev, test): questions grouped by their first gold passage (a question without one
    is its own group), groups in a seeded shuffle, test filled first, then dev, the rest train.
    Sizes follow the classification splits (test 20 % up to 1,000, dev 10 % up to 500)."""
    groups: dict[str, list[QAExample]] = defaultdict(list)
    for ex in sorted(examples, key=lambda e: e.id):
        groups[ex.gold[0] if ex.gold else f"question:{ex.id}"].append(ex)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    dev_size, test_size = split_sizes(len(examples))
    test: list[QAExample] = []
    dev: list[QAExample] = []
    train: list[QAExample] = []
    for key in keys:
        group = groups[key]
        if len(test) < test_size:
            test.extend(group)
        elif len(dev) < dev_size:
            dev.extend(group)
        else:
            train.extend(group)
    return tuple(train), tuple(dev), tuple(test)


# -- user files --------------------------------------------------------------------------------


def _data_file(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise DataError(f"{what} '{path}' is a folder, not a file")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(
            f"{what} '{path}' must be a {' or '.join(DATA_SUFFIXES)} file, not '{path.suffix}'"
        )
    return path


def read_passages(path: str | os.PathLike[str]) -> Corpus:
    """The passages of a CSV or JSONL file with columns `id`, `text` and optionally `title`."""
    path = _data_file(path, "passages file")
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    for line, record in read_records(path, ("id", "text")):
        pid = cell(record["id"], path, line, "id").strip()
        text = " ".join(cell(record["text"], path, line, "text").split())
        title = " ".join(cell(record.get("title", ""), path, line, "title").split())
        if not pid:
            raise DataError(f"{path} line {line}: the passage id is empty")
        if not text:
            raise DataError(f"{path} line {line}: the passage '{pid}' has an empty text")
        if pid in seen:
            raise DataError(
                f"{path} line {line} repeats the passage id '{pid}' of line {seen[pid]}"
            )
        seen[pid] = line
        passages.append(Passage(id=pid, text=text, title=title))
    if not passages:
        raise DataError(f"passages file '{path}' has no data rows")
    return Corpus(passages)


def _gold_ids(value: Any, path: Path, line: int) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(cell(v, path, line, "gold").strip() for v in values)


def read_questions(path: str | os.PathLike[str], corpus: Corpus) -> list[QAExample]:
    """Questions of a CSV or JSONL file: `question`, `answers` (a string, or in JSONL a list of
    acceptable answers) and optionally `gold` (passage ids in `corpus`). Repeated questions
    (same normalised text) are refused."""
    path = _data_file(path, "questions file")
    examples: list[QAExample] = []
    seen: dict[str, int] = {}
    for line, record in read_records(path, ("question", "answers")):
        question = " ".join(cell(record["question"], path, line, "question").split())
        if not question:
            raise DataError(f"{path} line {line}: the question is empty")
        answers = answers_of(record["answers"], path, line, "answers")
        gold = _gold_ids(record.get("gold"), path, line)
        for pid in gold:
            if pid not in corpus:
                raise DataError(
                    f"{path} line {line}: the gold passage '{pid}' is not in the passages file"
                )
        qid = question_id(question)
        if qid in seen:
            raise DataError(f"{path} line {line} repeats the question of line {seen[qid]}")
        seen[qid] = line
        examples.append(QAExample(id=qid, question=question, answers=answers, gold=gold))
    if not examples:
        raise DataError(f"questions file '{path}' has no data rows")
    return examples


def load_qa_files(
    questions: str | os.PathLike[str],
    passages: str | os.PathLike[str],
    *,
    seed: int = 0,
    name: str | None = None,
) -> QATask:
    """A user QA task: the questions file asked over the passages file, split for `seed`."""
    corpus = read_passages(passages)
    examples = read_questions(questions, corpus)
    train, dev, test = make_qa_splits(examples, seed=seed)
    return QATask(
        name=name or Path(questions).stem,
        corpus=corpus,
        train=train,
        dev=dev,
        test=test,
        source=f"{questions} over {passages}",
    )


def write_jsonl(rows: Iterator[Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as JSONL bytes (UTF-8, one object per line)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
