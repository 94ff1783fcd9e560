"""`frozenlm qa` end to end on a toy QA task with the tiny backbone: index, train the re-ranker
and a reading soft prompt, evaluate every stage, ask one question; bad input exits 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import write_toy_qa
from frozenlm.cli.main import main


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("qa-cli")
    questions, passages = write_toy_qa(folder)
    index = folder / "index"
    task = ["--task", str(questions), "--passages", str(passages)]
    assert main(["--no-record", "qa", "index", *task, "--out", str(index)]) == 0
    return {"questions": str(questions), "passages": str(passages), "index": str(index),
            "folder": str(folder)}  # fmt: skip


def _task(toy: dict[str, str]) -> list[str]:
    return ["--task", toy["questions"], "--passages", toy["passages"], "--index", toy["index"]]


def test_index_train_reranker_eval_and_ask(
    toy: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reranker = tmp_path / "reranker"
    argv = ["qa", "train-reranker", *_task(toy), "--out", str(reranker), "--questions", "0",
            "--epochs", "1", "--batch-size", "8", "--max-length", "64"]  # fmt: skip
    assert main(argv) == 0
    assert (reranker / "reranker.json").is_file() and (reranker / "model.safetensors").is_file()
    assert "trained the re-ranker on 72 pairs" in capsys.readouterr().out

    out = tmp_path / "eval.json"
    argv = ["qa", "eval", *_task(toy), "--reranker", str(reranker), "--backbone", "tiny",
            "--limit", "2", "--budget", "200", "--max-new-tokens", "4", "--shots", "2",
            "--contexts", "closed,retrieved,reranked,gold", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["retrieval"]) == {"bm25", "dense", "hybrid"}
    assert set(data["reader"]) == {"closed", "retrieved", "reranked", "gold"}
    assert data["n_read"] == 2 and data["reranked"]["gold@5"]["value"] <= 1.0
    assert data["config"]["reader"]["method"] == "few-shot"
    tables = out.with_suffix(".md").read_text()
    assert "| re-ranked |" in tables and "| gold |" in tables and "| hybrid |" in tables
    printed = capsys.readouterr().out
    assert "re-ranked:" in printed and "record:" in printed

    # the run record replays on another backbone like any other run's
    from frozenlm.runs.records import list_records

    (recorded,) = list_records(kind="qa-eval")
    assert main(["rerun", recorded.id, "--backbone", "tiny"]) == 0
    replayed = json.loads((tmp_path / "eval.tiny.json").read_text())
    assert replayed["reader"]["gold"]["f1"] == data["reader"]["gold"]["f1"]
    assert replayed["predictions"] == data["predictions"]
    capsys.readouterr()

    argv = ["qa", "ask", "Which river does the town of Corvo lie on?", *_task(toy),
            "--reranker", str(reranker), "--backbone", "tiny", "--budget", "200"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("answer:")
    assert "in re-ranker order" in printed
    read = int(printed.split("read ")[1].split(" ")[0])
    assert read >= 1 and len(re.findall(r"^  \[[pd]\d\d\] \(-?\d", printed, re.M)) == read


def test_train_reader_then_eval_with_it(toy: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "reader"
    argv = ["--no-record", "qa", "train-reader", *_task(toy), "--out", str(out), "--backbone",
            "tiny", "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--eval-limit",
            "2", "--prompt-length", "3", "--budget", "160", "--questions", "6",
            "--dev-questions", "2", "--retriever", "bm25"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "best" / "plugin.json").read_text())
    assert meta["kind"] == "soft-prompt"
    assert meta["qa"]["config"]["reader"]["budget"] == 160
    assert meta["train_config"]["chat_template"] is False
    assert list(meta["tasks"]) == ["questions-reader"]

    report = tmp_path / "eval.json"
    argv = ["--no-record", "qa", "eval", *_task(toy), "--plugin", str(out), "--backbone", "tiny",
            "--limit", "2", "--contexts", "retrieved", "--retrievers", "bm25", "--retriever",
            "bm25", "--out", str(report)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(report.read_text())
    assert data["config"]["reader"]["method"] == "zero-shot"
    assert data["config"]["reader"]["budget"] == 160  # the prompt it was trained with


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["qa", "eval", "--task", "nope"], "unknown QA task 'nope'"),
        (
            ["qa", "index", "--task", "missing.jsonl", "--passages", "p.jsonl", "--out", "x"],
            "passages file 'p.jsonl' does not exist",
        ),
        (["qa", "eval", "--contexts", "oracle"], "unknown reader context"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--no-record", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_index_of_another_corpus_is_refused(
    toy: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write_toy_qa(tmp_path / "other")
    lines = other[1].read_text().splitlines()
    other[1].write_text("\n".join(lines[:-1]) + "\n")  # one distractor fewer
    argv = ["--no-record", "qa", "ask", "Which river?", "--task", str(other[0]), "--passages",
            str(other[1]), "--index", toy["index"], "--backbone", "tiny"]  # fmt: skip
    assert main(argv) == 2
    assert "was built for another corpus" in capsys.readouterr().err
