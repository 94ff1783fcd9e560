from __future__ import annotations

import json
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.compare import Budget, CompareConfig, compare
from frozenlm.compare.domain import load_compare_task
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.qa import nq
from frozenlm.qa.data import Corpus, QATask
from frozenlm.qa.retrieve import IndexConfig, build_index, save_index
from frozenlm.qa.text_tasks import (
    TextTaskConfig,
    closed_book_task,
    load_text_task,
    open_book_task,
    parse_text_task,
)

needs_nq = pytest.mark.skipif(
    not nq.is_fetched(), reason="nq is not fetched: run `frozenlm qa get nq`"
)


def test_text_task_names_parse_only_for_built_in_qa_tasks() -> None:
    assert parse_text_task("nq-open", ("nq",)) == ("nq", "open")
    assert parse_text_task("nq-closed", ("nq",)) == ("nq", "closed")
    assert parse_text_task("nq", ("nq",)) is None
    assert parse_text_task("nq-gold", ("nq",)) is None
    assert parse_text_task("tweets-binary", ("nq",)) is None
    with pytest.raises(ConfigError, match="nq-closed, nq-open"):
        load_text_task("trivia-open")
    with pytest.raises(ConfigError, match="passages must be >= 1"):
        TextTaskConfig(passages=0)


def test_closed_book_keeps_every_answer_and_no_passage(toy_qa: QATask) -> None:
    task = closed_book_task(toy_qa, TextTaskConfig(train=5))
    assert task.name == "toy-closed" and task.spec.kind == "generation"
    assert len(task.train) == 5 and len(task.test) == len(toy_qa.test)
    for example, qa in zip(task.test, toy_qa.test, strict=True):
        assert example.fields == {"context": "", "question": qa.question}
        assert example.answers == qa.answers and example.label == qa.answers[0]


def test_open_book_puts_the_retrievers_top_passages_before_the_question(toy_qa: QATask) -> None:
    index = build_index(toy_qa.corpus, IndexConfig(parts=("bm25",)))
    task = open_book_task(toy_qa, index, TextTaskConfig(passages=2))
    assert task.name == "toy-open" and "top 2 bm25 passages" in task.spec.source
    hits = index.retriever("bm25").search([e.question for e in toy_qa.test], 2)
    for example, qa, ranked in zip(task.test, toy_qa.test, hits, strict=True):
        context = example.fields["context"]
        assert context.count("Passage: ") == 2
        first, second = (toy_qa.corpus[p].full_text for p, _ in ranked)
        assert context.index(first) < context.index(second)
        assert example.answers == qa.answers
    # the task is data: the same index gives the same split hash, another one does not
    assert open_book_task(toy_qa, index).split_hash() == task.split_hash()
    one = open_book_task(toy_qa, index, TextTaskConfig(passages=1))
    assert one.split_hash() != task.split_hash()


def test_open_book_refuses_an_index_of_another_corpus(toy_qa: QATask) -> None:
    fewer = Corpus([toy_qa.corpus[i] for i in range(5)])
    index = build_index(fewer, IndexConfig(parts=("bm25",)))
    with pytest.raises(ConfigError, match="another corpus"):
        open_book_task(toy_qa, index)


@needs_nq
def test_nq_open_without_an_index_names_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="frozenlm qa index"):
        load_text_task("nq-open", index_folder=tmp_path / "none")


@needs_nq
def test_compare_runs_the_qa_text_tasks(tiny: Backbone, tmp_path: Path) -> None:
    """nq-closed and nq-open (over a BM25 index built here) through `compare`'s methods."""
    task = nq.load_nq()
    save_index(build_index(task.corpus, IndexConfig(parts=("bm25",))), tmp_path / "index")
    opened = load_text_task("nq-open", index_folder=tmp_path / "index")
    assert opened.name == "nq-open" and len(opened.test) == 1000 and len(opened.train) == 1000
    assert all(e.fields["context"].count("Passage: ") == 2 for e in opened.test[:50])
    closed = load_compare_task("nq-closed")
    assert closed.name == "nq-closed" and closed.test[0].fields["context"] == ""
    budget = Budget("test", steps=2, batch_size=2, eval_every=2, dev_limit=4, test_limit=6,
                    train_sizes=(8,))  # fmt: skip
    config = CompareConfig(tasks=("nq-closed",), methods=("zero-shot", "soft-prompt"),
                           budget=budget, domain_shift=False)  # fmt: skip
    result = compare(tiny, config, tmp_path / "cmp")
    cells = {c["method"]: c for c in result.cells}
    assert {c["status"] for c in cells.values()} == {"done"}
    assert cells["soft-prompt"]["test"]["metric"] == "exact_match"
    assert cells["soft-prompt"]["test"]["n"] == 6
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert {c["task"] for c in saved["cells"]} == {"nq-closed"}
