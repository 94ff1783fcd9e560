"""Property: any task file and data file, however malformed, loads as a valid task or fails
with a `FrozenLMError` (one sentence), never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from frozenlm.errors import FrozenLMError
from frozenlm.tasks import load_task

FIELDS = ["text", "label", "question", "answer", "id", "x y", ""]
ENCODINGS = ["utf-8"] * 6 + ["utf-16", "latin-1", "cp1252"]  # mostly the one that is valid
# Text with the characters that break parsers: quotes, separators, newlines, NUL, surrogates.
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from('",\n\r\t\x00;{}[]'),
    max_size=40,
)
VALUE = st.one_of(TEXT, st.integers(-5, 5), st.none(), st.booleans(), st.lists(TEXT, max_size=3))
ROW = st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=4)


def _csv(rows: list[dict[str, Any]], header: list[str]) -> str:
    def cell(value: Any) -> str:
        text = json.dumps(value) if isinstance(value, list) else "" if value is None else str(value)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text

    lines = [",".join(header)] + [",".join(cell(r.get(h)) for h in header) for r in rows]
    return "\n".join(lines) + "\n"


LABELS = {"pos": "yes", "neg": "no", "mid": "maybe"}


@st.composite
def task_files(draw: st.DrawFn) -> dict[str, Any]:
    """A task config and the bytes of its data: well-formed at first, then (often) broken by a
    few random edits of the config, the rows, the encoding or the file's length."""
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    label_rows = st.fixed_dictionaries(
        {"text": TEXT, "label": st.sampled_from([*LABELS] * 4 + ["other"])}
    )
    rows = draw(st.lists(st.one_of(*[label_rows] * 9, ROW), max_size=60))
    config: dict[str, Any] = {
        "name": "toy",
        "data": f"data.{fmt}",
        "input_fields": ["text"],
        "label_field": "label",
        "labels": dict(LABELS),
        "instruction": "Is it good?",
    }
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))  # often none: reach the data
    edits = draw(st.lists(st.sampled_from(EDITS), min_size=count, max_size=count))
    for edit in edits:
        edit(config, draw)
    if fmt == "csv":
        header = (
            ["text", "label"]
            if draw(st.booleans())
            else draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True))
        )
        text = _csv(rows, header)
    else:
        text = "".join(
            (json.dumps(r) if draw(st.integers(0, 19)) else draw(TEXT)) + "\n" for r in rows
        )
    encoding = draw(st.sampled_from(ENCODINGS))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, max(len(data), 1)))]  # truncated mid-file
    task_format = draw(st.sampled_from(["yaml", "json", "json", "broken"]))
    return {"config": config, "data": data, "task_format": task_format}


def _drop_key(config: dict[str, Any], draw: st.DrawFn) -> None:
    config.pop(draw(st.sampled_from(sorted(config))), None)


def _wrong_value(config: dict[str, Any], draw: st.DrawFn) -> None:
    config[draw(st.sampled_from(sorted(config)))] = draw(VALUE)


def _other_kind(config: dict[str, Any], draw: st.DrawFn) -> None:
    config["kind"] = draw(st.sampled_from(["generation", "regression", 3]))
    if config["kind"] == "generation":
        config.pop("labels", None)


def _template(config: dict[str, Any], draw: st.DrawFn) -> None:
    config["template"] = draw(st.sampled_from(["{text}", "{missing}", "{", "Q: {text}!", ""]))


def _split_files(config: dict[str, Any], draw: st.DrawFn) -> None:
    data = config.get("data", "data.jsonl")
    config["data"] = draw(
        st.sampled_from(
            [{"train": data, "test": data}, {"train": data}, [data], {"train": data, "dev": "x"}]
        )
    )


def _labels(config: dict[str, Any], draw: st.DrawFn) -> None:
    config["labels"] = draw(
        st.one_of(st.dictionaries(TEXT, TEXT, max_size=4), st.lists(TEXT, max_size=3), TEXT)
    )


EDITS = [_drop_key, _wrong_value, _other_kind, _template, _split_files, _labels]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(task_files())
def test_any_task_file_loads_or_fails_in_one_sentence(case: dict[str, Any]) -> None:
    with TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("data.csv", "data.jsonl"):
            (root / name).write_bytes(case["data"])
        if case["task_format"] == "yaml":
            (root / "task.yaml").write_text(yaml.safe_dump(case["config"], allow_unicode=True))
            path = root / "task.yaml"
        elif case["task_format"] == "json":
            (root / "task.json").write_text(json.dumps(case["config"]))
            path = root / "task.json"
        else:
            (root / "task.yaml").write_text("name: [unclosed\n  - : :\n")
            path = root / "task.yaml"
        try:
            task = load_task(str(path))
        except FrozenLMError as err:
            event(f"refused: {type(err).__name__}")
            message = str(err)
            assert (message and "\n" not in message.strip()) or "line" in message, message
            return
        event("loaded")
        # A valid task: splits are disjoint and every example has the task's fields.
        ids = [ex.id for split in ("train", "dev", "test") for ex in task.split(split)]
        assert len(ids) == len(set(ids))
        for ex in task.test:
            assert set(task.spec.input_fields) <= set(ex.fields)
            if task.spec.kind == "classification":
                assert ex.label in task.spec.labels
