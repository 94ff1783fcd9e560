from __future__ import annotations

import json
from pathlib import Path

import pytest

from frozenlm.errors import ConfigError, DataError
from frozenlm.qa.tasks import load_qa_task


def test_a_questions_file_loads_with_its_passages(toy_files: tuple[Path, Path]) -> None:
    task = load_qa_task(str(toy_files[0]), toy_files[1])
    assert task.name == "questions" and len(task.corpus) == 36


def test_what_cannot_be_a_qa_task_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown QA task 'trivia'"):
        load_qa_task("trivia")
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "q", "answers": "a"}) + "\n")
    with pytest.raises(ConfigError, match="needs a passages file"):
        load_qa_task(str(tmp_path / "q.jsonl"))
    with pytest.raises(ConfigError, match="brings its own passages"):
        load_qa_task("nq", tmp_path / "p.txt")
