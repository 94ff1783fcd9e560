"""`frozenlm tasks`: the built-in tasks, for people and for machines."""

import json

import pytest

from frozenlm.cli.main import main
from frozenlm.tasks import task_summaries


def test_tasks_lists_built_ins_with_split_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"sentiment", "topic", "trec", "tweets", "trivia"}
    assert rows["trec"]["test"] == 1000 and rows["trivia"]["kind"] == "generation"


def test_the_table_has_one_row_per_task_with_its_verbalizers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = task_summaries()
    assert len(lines) == 2 + len(rows) and lines[0].startswith("task ")
    trec = next(line for line in lines if line.startswith("trec "))
    assert " 1000  " in trec
    assert "(generation: exact_match, f1)" in next(x for x in lines if x.startswith("trivia "))
