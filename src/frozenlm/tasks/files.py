"""User tasks: a YAML/JSON task file that points at CSV or JSONL data.

A task file holds `name`, `data` (one CSV/JSONL path, or a mapping with `train`, `test` and
optionally `dev` paths; relative to the task file's folder), `input_fields`, `label_field`,
`labels` (label -> verbalizer; classification only) and `instruction`; optionally `template`,
`kind` ("classification" or "generation") and `metric`. With one data file frozenlm makes the
splits; with a mapping and no `dev`, dev is carved out of train. Inputs that also occur in a
later split (dev or test) are dropped from the earlier one, so no input is in two splits.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from frozenlm.errors import DataError
from frozenlm.tasks.builtin import BUILTIN_TASKS, load_builtin
from frozenlm.tasks.spec import Example, Task, TaskKind, TaskSpec
from frozenlm.tasks.splits import (
    DEV_FRACTION,
    DEV_MAX,
    dedupe,
    make_example,
    make_splits,
    split_off,
)

logger = logging.getLogger(__name__)

TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")
DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson")
REQUIRED_KEYS = ("name", "data", "input_fields", "label_field", "instruction")
OPTIONAL_KEYS = ("labels", "template", "kind", "metric")
METRICS: dict[str, str] = {"classification": "accuracy", "generation": "exact_match"}
_BAD_FIELD_CHARS = set(".[]{}:!")

Record = tuple[int, dict[str, Any]]  # (1-based line of the row in its file, values)


def load_task(name_or_path: str | os.PathLike[str], seed: int = 0) -> Task:
    """A built-in task by name, or a user task from a .yaml/.yml/.json task file."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_TASKS:
        return load_builtin(name_or_path, seed)
    path = Path(name_or_path)
    if not path.exists():
        if path.suffix == "" and len(path.parts) == 1:
            raise DataError(
                f"unknown task '{name_or_path}'; expected a built-in task "
                f"({', '.join(BUILTIN_TASKS)}) or a path to a .yaml/.yml/.json task file"
            )
        raise DataError(f"task file '{path}' does not exist")
    if path.is_dir():
        raise DataError(f"task file '{path}' is a folder, not a file")
    return load_task_file(path, seed=seed)


def load_task_file(path: str | os.PathLike[str], seed: int = 0) -> Task:
    """The user task described by the task file at `path`, with its splits for `seed`."""
    path = Path(path)
    config = _read_task_file(path)
    spec, label_field = _parse_spec(config, path)
    stratify = spec.kind == "classification"
    data = config["data"]
    if isinstance(data, str):
        examples = _load_examples(_data_path(path, data, "data"), spec, label_field)
        train, dev, test = make_splits(examples, seed=seed, stratify=stratify)
    elif isinstance(data, Mapping):
        unknown = sorted(set(data) - {"train", "dev", "test"})
        if unknown or "train" not in data or "test" not in data:
            raise DataError(
                f"task file '{path}': field 'data' must be a path or a mapping with keys "
                f"train, test and optionally dev; found keys {', '.join(map(str, data))}"
            )
        paths = {
            split: _data_path(path, data[split], f"data.{split}")
            for split in ("train", "dev", "test")
            if split in data
        }
        _check_distinct_files(paths, path)
        parts = {
            split: _load_examples(data_path, spec, label_field)
            for split, data_path in paths.items()
        }
        test = tuple(parts["test"])
        seen = {example.id for example in test}
        if "dev" in parts:
            dev = _without(parts["dev"], seen, paths["dev"])
            seen |= {example.id for example in dev}
            train = _without(parts["train"], seen, paths["train"])
        else:
            train = _without(parts["train"], seen, paths["train"])
            size = min(int(len(train) * DEV_FRACTION), DEV_MAX)
            train, dev = split_off(train, size, seed=seed, stratify=stratify)
    else:
        raise DataError(
            f"task file '{path}': field 'data' must be a path or a mapping with train/dev/test "
            f"paths, not {type(data).__name__}"
        )
    logger.info(
        "task '%s' from %s: train %d, dev %d, test %d",
        spec.name,
        path,
        *map(len, (train, dev, test)),
    )
    return Task(spec=spec, train=tuple(train), dev=tuple(dev), test=tuple(test))


def _check_distinct_files(paths: Mapping[str, Path], task_file: Path) -> None:
    """Refuse two splits that name the same data file: every example of the earlier split would
    be dropped as also occurring in the later one."""
    seen: dict[Path, str] = {}
    for split, data_path in paths.items():
        key = data_path.resolve()
        if key in seen:
            raise DataError(
                f"task file '{task_file}': data.{seen[key]} and data.{split} name the same file "
                f"'{data_path}'; give each split its own file, or give 'data' one path and "
                "frozenlm makes the splits"
            )
        seen[key] = split


def _without(examples: list[Example], ids: set[str], path: Path) -> tuple[Example, ...]:
    """`examples` (read from `path`) without those whose input also occurs in a later split."""
    kept = tuple(example for example in examples if example.id not in ids)
    if not kept:
        raise DataError(
            f"data file '{path}': every input also occurs in a later split (dev or test), so "
            "nothing is left for this split; it needs inputs the later splits do not hold"
        )
    if len(kept) < len(examples):
        logger.warning(
            "%s: dropped %d examples whose input also occurs in a later split",
            path,
            len(examples) - len(kept),
        )
    return kept


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping naming a key twice is an error (plain YAML
    silently keeps the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader reports it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"the key '{key}' appears twice (YAML would silently keep the last value)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DataError(
                f"task file '{path}' is not valid: the key '{key}' appears twice in one object "
                "(JSON would silently keep the last value)"
            )
        result[key] = value
    return result


def _read_task_file(path: Path) -> dict[str, Any]:
    if path.suffix.lower() not in TASK_FILE_SUFFIXES:
        raise DataError(f"task file '{path}' must end in .yaml, .yml or .json")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"task file '{path}' cannot be read: {error.strerror}") from None
    text = _decode(raw, path)
    if not text.strip():
        raise DataError(
            f"task file '{path}' is empty; expected a mapping with {', '.join(REQUIRED_KEYS)}"
        )
    try:
        if path.suffix.lower() == ".json":
            config = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
        else:
            config = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as error:
        raise DataError(
            f"task file '{path}' is not valid JSON at line {error.lineno}: {error.msg}"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "parse error"
        raise DataError(f"task file '{path}' is not valid YAML{where}: {problem}") from None
    if not isinstance(config, dict):
        raise DataError(
            f"task file '{path}' must hold a mapping with {', '.join(REQUIRED_KEYS)}, "
            f"not a {type(config).__name__}"
        )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise DataError(
                f"task file '{path}' has no '{key}' field; expected {', '.join(REQUIRED_KEYS)}"
            )
    unknown = sorted(str(key) for key in config if key not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        raise DataError(
            f"task file '{path}' has unknown field(s) {', '.join(unknown)}; allowed fields are "
            f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
        )
    return config


def _parse_spec(config: Mapping[str, Any], path: Path) -> tuple[TaskSpec, str]:
    """The TaskSpec and label field described by a task file, validated field by field."""

    def text(key: str) -> str:
        value = config[key]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"task file '{path}': field '{key}' must be a non-empty string")
        return value.strip()

    kind = config.get("kind", "classification")
    if kind not in METRICS:
        raise DataError(
            f"task file '{path}': field 'kind' must be classification or generation, not {kind!r}"
        )
    fields = config["input_fields"]
    if (
        not isinstance(fields, list)
        or not fields
        or not all(isinstance(name, str) and name.strip() for name in fields)
    ):
        raise DataError(
            f"task file '{path}': field 'input_fields' must be a non-empty list of column names"
        )
    for name in fields:
        if _BAD_FIELD_CHARS & set(name) or fields.count(name) > 1:
            raise DataError(
                f"task file '{path}': input field {name!r} must be unique and contain none of "
                f"{''.join(sorted(_BAD_FIELD_CHARS))}"
            )
    template = config.get("template") or "\n".join(
        f"{name.replace('_', ' ')[:1].upper()}{name.replace('_', ' ')[1:]}: {{{name}}}"
        for name in fields
    )
    _check_template(template, fields, path)
    metric = config.get("metric", METRICS[kind])
    if metric != METRICS[kind]:
        raise DataError(
            f"task file '{path}': field 'metric' must be {METRICS[kind]} for a {kind} task, "
            f"not {metric!r}"
        )
    labels = _parse_labels(config.get("labels"), kind, path)
    spec = TaskSpec(
        name=text("name"),
        kind=_kind(kind),
        input_fields=tuple(fields),
        instruction=text("instruction"),
        template=template,
        labels=labels,
        metric=metric,
        source=str(path),
    )
    return spec, text("label_field")


def _kind(kind: str) -> TaskKind:
    return "generation" if kind == "generation" else "classification"


def _check_template(template: Any, fields: list[str], path: Path) -> None:
    if not isinstance(template, str) or not template.strip():
        raise DataError(f"task file '{path}': field 'template' must be a non-empty string")
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise DataError(
            f"task file '{path}': field 'template' is not a valid format string ({error})"
        ) from None
    unknown = sorted(used - set(fields))
    if unknown:
        raise DataError(
            f"task file '{path}': field 'template' uses {{{unknown[0]}}}, which is not one of "
            f"the input_fields ({', '.join(fields)})"
        )


def _parse_labels(labels: Any, kind: str, path: Path) -> dict[str, str]:
    if kind == "generation":
        if labels:
            raise DataError(f"task file '{path}': a generation task takes no 'labels' field")
        return {}
    if not isinstance(labels, Mapping) or len(labels) < 2:
        raise DataError(
            f"task file '{path}': field 'labels' must map at least two labels to their "
            "verbalizer text"
        )
    parsed: dict[str, str] = {}
    seen: dict[str, str] = {}
    for label, verbalizer in labels.items():
        if not isinstance(verbalizer, str) or not verbalizer.strip():
            raise DataError(
                f"task file '{path}': label '{label}' needs a non-empty verbalizer string"
            )
        key = " ".join(verbalizer.lower().split())
        if key in seen:
            raise DataError(
                f"task file '{path}': labels '{seen[key]}' and '{label}' have the same "
                f"verbalizer '{key}' (ignoring case and spaces); each label needs its own"
            )
        seen[key] = str(label)
        parsed[str(label)] = verbalizer.strip()
    return parsed


def _data_path(task_file: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"task file '{task_file}': field '{key}' must be a path to a CSV or JSONL file"
        )
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = task_file.parent / path
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(
            f"data file '{path}' (field '{key}' of '{task_file}') must be .csv or .jsonl"
        )
    if path.is_dir():
        raise DataError(
            f"data file '{path}' (field '{key}' of '{task_file}') is a folder, not a file"
        )
    if not path.is_file():
        raise DataError(f"data file '{path}' (field '{key}' of '{task_file}') does not exist")
    return path


def _load_examples(path: Path, spec: TaskSpec, label_field: str) -> list[Example]:
    """Validated, deduplicated examples of one data file."""
    columns = (*spec.input_fields, label_field)
    records = read_records(path, columns)
    rows: list[Example] = []
    for line, record in records:
        fields = {name: cell(record[name], path, line, name) for name in spec.input_fields}
        for name, value in fields.items():
            if not value.strip():
                raise DataError(f"{path} line {line}: the input field '{name}' is empty")
        answers = answers_of(record[label_field], path, line, label_field)
        label = answers[0]
        if spec.kind == "classification":
            if len(answers) != 1 or label not in spec.labels:
                raise DataError(
                    f"{path} line {line} has the label {record[label_field]!r}, which is not "
                    f"in labels; allowed labels: {', '.join(spec.labels)}"
                )
            answers = ()
        rows.append(make_example(fields, label, spec.input_fields, answers))
    if not rows:
        raise DataError(f"data file '{path}' has no data rows")
    return dedupe(rows, what=str(path))


def cell(value: Any, path: Path, line: int, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(
            f"{path} line {line}: '{column}' must be a string or number, not {json.dumps(value)}"
        )
    return str(value)


def answers_of(value: Any, path: Path, line: int, column: str) -> tuple[str, ...]:
    """The label as a tuple of acceptable answers (a JSONL list gives several)."""
    values = value if isinstance(value, list) else [value]
    answers = tuple(cell(item, path, line, column).strip() for item in values)
    if not answers or not all(answers):
        raise DataError(f"{path} line {line}: the label field '{column}' is empty")
    return answers


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start} "
            f"(line {line}) cannot be decoded; save the file as UTF-8"
        ) from None


@contextmanager
def _any_field_size() -> Iterator[None]:
    """Let the csv module read fields of any length (its default limit is 131,072 characters),
    so a long CSV field loads as the same text in JSONL does; the prompter then truncates it to
    the context budget, with one warning, whichever file it came from. The previous limit
    is restored afterwards: it is process-wide."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # the largest a C long takes on every platform
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def read_records(path: Path, columns: tuple[str, ...]) -> list[Record]:
    """Rows of a CSV or JSONL data file, as (line, values), each holding every one of `columns`;
    DataError naming the file and line (and the missing column) for anything malformed."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path, columns)  # its header names every column
    records = list(_read_jsonl(path))
    for line, record in records:
        for column in columns:
            if column not in record:
                raise DataError(
                    f"{path} line {line} has no column '{column}'; columns found: "
                    f"{', '.join(map(str, record))}"
                )
    return records


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[Record]:
    """Rows of a UTF-8 CSV file whose header names `columns`, as (line, {column: value})."""
    with _any_field_size():
        return list(_parse_csv(path, columns))


def _parse_csv(path: Path, columns: tuple[str, ...]) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(_decode(path.read_bytes(), path), newline=""))
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise DataError(f"data file '{path}' is empty; expected a header line and data rows")
        header = [cell.strip() for cell in header]
        for column in header:
            if header.count(column) > 1:
                raise DataError(f"{path} line 1 names the column '{column}' twice")
        for column in columns:
            if column not in header:
                raise DataError(
                    f"{path} has no column '{column}'; columns found: {', '.join(header)}"
                )
        last_line = reader.line_num
        for row in reader:
            line, last_line = last_line + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path} line {line} has {len(row)} values but the header has "
                    f"{len(header)} columns"
                )
            yield line, dict(zip(header, row, strict=True))
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num} is not valid CSV: {error}") from None


def _read_jsonl(path: Path) -> Iterator[Record]:
    """Objects of a JSONL file (one JSON object per line), as (line, object)."""
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        raise DataError(f"data file '{path}' is empty; expected one JSON object per line")
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {line} is not valid JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path} line {line} must be a JSON object, not {type(record).__name__}"
            )
        yield line, record
