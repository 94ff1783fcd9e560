"""User task files (YAML/JSON) over CSV/JSONL data, and one test per kind of bad input."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from frozenlm.errors import DataError
from frozenlm.tasks import load_task

LABELS = {"pos": "positive", "neg": "negative"}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_task(folder: Path, **fields: Any) -> Path:
    config = {
        "name": "reviews",
        "data": "data.csv",
        "input_fields": ["text"],
        "label_field": "label",
        "labels": LABELS,
        "instruction": "Is this review positive or negative?",
    }
    config.update(fields)
    config = {key: value for key, value in config.items() if value is not None}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {"text": f"Review number {i}", "label": "pos" if i % 4 else "neg"}
        for i in range(start, start + n)
    ]


@pytest.fixture
def csv_task(tmp_path: Path) -> Path:
    _write_csv(tmp_path / "data.csv", _rows(100))
    return _write_task(tmp_path)


def test_csv_task_gets_spec_and_stratified_splits(csv_task: Path) -> None:
    task = load_task(csv_task)
    assert task.spec.name == "reviews"
    assert task.spec.kind == "classification"
    assert task.spec.metric == "accuracy"
    assert dict(task.spec.labels) == LABELS
    assert task.spec.template == "Text: {text}"
    assert task.spec.source == str(csv_task)
    assert task.split_sizes() == {"train": 70, "dev": 10, "test": 20}
    assert Counter(ex.label for ex in task.test) == {"pos": 15, "neg": 5}
    assert task.spec.format_input(task.test[0]).startswith("Text: Review number ")
    again = load_task(str(csv_task))
    assert again.split_hash() == task.split_hash()
    assert load_task(csv_task, seed=5).split_hash() != task.split_hash()


def test_csv_row_order_does_not_change_splits(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data.csv", _rows(100))
    first = load_task(_write_task(tmp_path)).split_hash()
    _write_csv(tmp_path / "data.csv", list(reversed(_rows(100))))
    assert load_task(_write_task(tmp_path)).split_hash() == first


def test_csv_duplicates_are_dropped_and_template_is_used(tmp_path: Path) -> None:
    rows = [*_rows(40), {"text": "  review NUMBER 3 ", "label": "pos"}]
    _write_csv(tmp_path / "data.csv", rows)
    task = load_task(_write_task(tmp_path, template="Review: {text}"))
    assert sum(task.split_sizes().values()) == 40
    assert task.spec.format_input(task.train[0]).startswith("Review: ")


def test_jsonl_task_with_train_dev_test_files(tmp_path: Path, monkeypatch: Any) -> None:
    folder = tmp_path / "task"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", _rows(30) + _rows(2, start=40))
    _write_jsonl(folder / "dev.jsonl", _rows(5, start=30))
    _write_jsonl(folder / "test.jsonl", _rows(10, start=35))  # 40 and 41 also in train
    path = _write_task(
        folder, data={"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}
    )
    monkeypatch.chdir(tmp_path)  # data paths are relative to the task file, not the cwd
    task = load_task(path)
    assert task.split_sizes() == {"train": 30, "dev": 5, "test": 10}
    assert sorted(ex.fields["text"] for ex in task.test) == sorted(
        f"Review number {i}" for i in range(35, 45)
    )


def test_jsonl_task_without_dev_carves_it_from_train(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "train.jsonl", _rows(80))
    _write_jsonl(tmp_path / "test.jsonl", _rows(20, start=80))
    task = load_task(_write_task(tmp_path, data={"train": "train.jsonl", "test": "test.jsonl"}))
    assert task.split_sizes() == {"train": 72, "dev": 8, "test": 20}
    assert Counter(ex.label for ex in task.dev) == {"pos": 6, "neg": 2}


def test_json_generation_task_with_several_answers(tmp_path: Path) -> None:
    rows = [
        {"question": f"What is {i} + 1?", "answer": [str(i + 1), f"#{i + 1}"]} for i in range(50)
    ]
    _write_jsonl(tmp_path / "qa.jsonl", rows)
    config = {
        "name": "sums",
        "kind": "generation",
        "data": "qa.jsonl",
        "input_fields": ["question"],
        "label_field": "answer",
        "instruction": "Answer with a number.",
    }
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    task = load_task(path)
    assert (task.spec.kind, task.spec.metric, dict(task.spec.labels)) == (
        "generation",
        "exact_match",
        {},
    )
    assert task.split_sizes() == {"train": 35, "dev": 5, "test": 10}
    every = task.train + task.dev + task.test
    example = next(ex for ex in every if ex.fields["question"] == "What is 6 + 1?")
    assert (example.label, example.answers) == ("7", ("7", "#7"))
    assert task.spec.template == "Question: {question}"


def test_jsonl_integer_labels_match_yaml_integer_keys(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "y": i % 2} for i in range(20)])
    task = load_task(
        _write_task(tmp_path, data="d.jsonl", label_field="y", labels={0: "no", 1: "yes"})
    )
    assert dict(task.spec.labels) == {"0": "no", "1": "yes"}
    assert {ex.label for ex in task.train} == {"0", "1"}


# ---- bad input: one clear DataError naming the file, line or field ----


def _raises(match: str) -> Any:
    return pytest.raises(DataError, match=match)


def test_missing_task_file(tmp_path: Path) -> None:
    with _raises(r"task file '.*nope\.yaml' does not exist"):
        load_task(tmp_path / "nope.yaml")


def test_unknown_name_lists_builtins() -> None:
    expected = "unknown task 'reviews'; expected a built-in task (sentiment, topic, trec, tweets"
    with _raises(re.escape(expected)):
        load_task("reviews")


def test_empty_task_file(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("\n", encoding="utf-8")
    with _raises(r"task file '.*task\.yaml' is empty"):
        load_task(path)


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("name: x\ndata: [unclosed\ninput_fields: a\n", encoding="utf-8")
    with _raises(r"task file '.*task\.yaml' is not valid YAML at line \d"):
        load_task(path)


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_text('{"name": "x",\n "data": }', encoding="utf-8")
    with _raises(r"task file '.*task\.json' is not valid JSON at line 2"):
        load_task(path)


def test_missing_required_key(csv_task: Path) -> None:
    path = _write_task(csv_task.parent, label_field=None)
    with _raises(r"task file '.*task\.yaml' has no 'label_field' field"):
        load_task(path)


def test_unknown_key_in_task_file(csv_task: Path) -> None:
    path = _write_task(csv_task.parent, lables={"a": "b"})
    with _raises(r"unknown field\(s\) lables"):
        load_task(path)


def test_missing_data_file(tmp_path: Path) -> None:
    with _raises(r"data file '.*data\.csv' \(field 'data' of '.*task\.yaml'\) does not exist"):
        load_task(_write_task(tmp_path))


def test_empty_csv(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("", encoding="utf-8")
    with _raises(r"data file '.*data\.csv' is empty"):
        load_task(_write_task(tmp_path))


def test_csv_without_data_rows(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("text,label\n", encoding="utf-8")
    with _raises(r"data file '.*data\.csv' has no data rows"):
        load_task(_write_task(tmp_path))


def test_missing_csv_column(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("review,label\ngood,pos\n", encoding="utf-8")
    with _raises(r"data\.csv has no column 'text'; columns found: review, label"):
        load_task(_write_task(tmp_path))


def test_missing_jsonl_key_names_line(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b"}])
    with _raises(r"d\.jsonl line 2 has no column 'label'; columns found: text"):
        load_task(_write_task(tmp_path, data="d.jsonl"))


def test_unknown_label_names_line_and_allowed_labels(tmp_path: Path) -> None:
    _write_csv(tmp_path / "data.csv", [*_rows(3), {"text": "meh", "label": "neutral"}])
    with _raises(r"data\.csv line 5 has the label 'neutral'.*allowed labels: pos, neg"):
        load_task(_write_task(tmp_path))


def test_empty_input_names_line(tmp_path: Path) -> None:
    # The quoted multi-line value makes the empty row start on line 4, not row 3.
    (tmp_path / "data.csv").write_text('text,label\n"two\nlines",pos\n"  ",neg\n', encoding="utf-8")
    with _raises(r"data\.csv line 4: the input field 'text' is empty"):
        load_task(_write_task(tmp_path))


def test_undecodable_bytes_name_offset(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_bytes(b"text,label\ncaf\xe9 au lait,pos\n")
    with _raises(r"data\.csv is not valid UTF-8: byte 0xe9 at offset 14 \(line 2\)"):
        load_task(_write_task(tmp_path))


def test_invalid_jsonl_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text(
        '{"text": "a", "label": "pos"}\n\n{"text": "b",\n', encoding="utf-8"
    )
    with _raises(r"d\.jsonl line 3 is not valid JSON"):
        load_task(_write_task(tmp_path, data="d.jsonl"))


def test_wrong_number_of_csv_values(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("text,label\ngood,pos\nbad,neg,extra\n", encoding="utf-8")
    with _raises(r"data\.csv line 3 has 3 values but the header has 2 columns"):
        load_task(_write_task(tmp_path))


def test_equal_verbalizers_name_both_labels(csv_task: Path) -> None:
    path = _write_task(csv_task.parent, labels={"pos": "Good", "great": " good ", "neg": "bad"})
    with _raises(r"labels 'pos' and 'great' have the same verbalizer"):
        load_task(path)


def test_template_with_unknown_field(csv_task: Path) -> None:
    path = _write_task(csv_task.parent, template="Review: {review}")
    with _raises(re.escape("field 'template' uses {review}, which is not one of the input_fields")):
        load_task(path)


def test_generation_task_rejects_labels(csv_task: Path) -> None:
    path = _write_task(csv_task.parent, kind="generation")
    with _raises(r"task file '.*task\.yaml': a generation task takes no 'labels' field"):
        load_task(path)


def test_train_and_test_naming_the_same_file_is_refused(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "all.jsonl", _rows(40))
    path = _write_task(tmp_path, data={"train": "all.jsonl", "test": "./all.jsonl"})
    with _raises(r"task file '.*task\.yaml': data\.train and data\.test name the same file"):
        load_task(path)


def test_a_train_file_wholly_inside_test_is_refused(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "train.jsonl", _rows(10))
    _write_jsonl(tmp_path / "test.jsonl", _rows(20))
    path = _write_task(tmp_path, data={"train": "train.jsonl", "test": "test.jsonl"})
    with _raises(r"data file '.*train\.jsonl': every input also occurs in a later split"):
        load_task(path)


def test_a_folder_given_as_data_is_called_a_folder(tmp_path: Path) -> None:
    (tmp_path / "data.csv").mkdir()
    with _raises(r"data file '.*data\.csv' \(field 'data' of '.*task\.yaml'\) is a folder, not"):
        load_task(_write_task(tmp_path))


def test_a_folder_given_as_task_file_is_called_a_folder(tmp_path: Path) -> None:
    (tmp_path / "task.yaml").mkdir()
    with _raises(r"task file '.*task\.yaml' is a folder, not a file"):
        load_task(tmp_path / "task.yaml")


def test_a_duplicated_yaml_key_names_line_and_key(csv_task: Path) -> None:
    text = csv_task.read_text(encoding="utf-8")
    csv_task.write_text(text + "name: other\n", encoding="utf-8")
    line = text.count("\n") + 1
    with _raises(rf"task file '.*task\.yaml' is not valid YAML at line {line}: the key 'name' "):
        load_task(csv_task)


def test_a_duplicated_key_in_a_nested_yaml_mapping_is_refused(csv_task: Path) -> None:
    path = csv_task.parent / "task.yaml"
    path.write_text(
        "name: reviews\ndata: data.csv\ninput_fields: [text]\nlabel_field: label\n"
        "labels:\n  pos: positive\n  pos: negative\n  neg: negative\ninstruction: Classify.\n",
        encoding="utf-8",
    )
    with _raises(r"not valid YAML at line 7: the key 'pos' appears twice"):
        load_task(path)


def test_a_duplicated_json_key_is_refused(csv_task: Path) -> None:
    config = yaml.safe_load(csv_task.read_text(encoding="utf-8"))
    body = json.dumps(config)[:-1] + ', "label_field": "text"}'
    path = csv_task.parent / "task.json"
    path.write_text(body, encoding="utf-8")
    with _raises(r"task file '.*task\.json' is not valid: the key 'label_field' appears twice"):
        load_task(path)


def test_a_csv_field_longer_than_the_csv_default_loads_like_jsonl(tmp_path: Path) -> None:
    long_text = "word " * 40_000  # 200,000 characters, over csv's 131,072 default
    rows = [*_rows(20), {"text": long_text, "label": "pos"}]
    _write_csv(tmp_path / "data.csv", rows)
    _write_jsonl(tmp_path / "data.jsonl", rows)
    from_csv = load_task(_write_task(tmp_path))
    from_jsonl = load_task(_write_task(tmp_path, data="data.jsonl"))
    assert from_csv.train + from_csv.dev + from_csv.test == (
        from_jsonl.train + from_jsonl.dev + from_jsonl.test
    )
    assert any(
        ex.fields["text"] == long_text for ex in from_csv.train + from_csv.dev + from_csv.test
    )
    assert csv.field_size_limit() == 131_072  # the process-wide limit is given back
