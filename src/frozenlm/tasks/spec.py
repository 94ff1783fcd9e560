"""What a task is: its spec (how to prompt and score it) and its labelled examples."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

TaskKind = Literal["classification", "generation"]
SplitName = Literal["train", "dev", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """One labelled example.

    `fields` holds the input fields named by the task spec. For classification `label` is a key
    of `TaskSpec.labels`; for generation it is the reference answer and `answers` lists every
    acceptable answer (the reference included).
    """

    id: str
    fields: Mapping[str, str]
    label: str
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """How a task is prompted and scored.

    `template` formats the input fields with `str.format` (e.g. "Review: {text}").
    `labels` maps each label to its verbalizer, the text the model is scored on (classification
    only; empty for generation). `metric` is the headline metric: "accuracy" or "exact_match".
    """

    name: str
    kind: TaskKind
    input_fields: tuple[str, ...]
    instruction: str
    template: str
    labels: Mapping[str, str] = field(default_factory=dict)
    metric: str = "accuracy"
    source: str = "built-in"

    def format_input(self, example: Example) -> str:
        """The example's input fields rendered through the template."""
        return self.template.format(**example.fields)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "input_fields": list(self.input_fields),
            "instruction": self.instruction,
            "template": self.template,
            "labels": dict(self.labels),
            "metric": self.metric,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: str) -> TaskSpec:
        """The spec `to_json` wrote (a checkpoint's "tasks" entry); `where` names the file in
        the one-sentence error a malformed entry gets."""
        from frozenlm.errors import DataError

        try:
            kind = data["kind"]
            fields, labels = data["input_fields"], data.get("labels") or {}
            if kind not in ("classification", "generation"):
                raise ValueError(f"kind {kind!r}")
            if not isinstance(fields, list) or not isinstance(labels, dict):
                raise ValueError("input_fields must be a list and labels an object")
            return cls(
                name=str(data["name"]),
                kind="classification" if kind == "classification" else "generation",
                input_fields=tuple(str(f) for f in fields),
                instruction=str(data["instruction"]),
                template=str(data["template"]),
                labels={str(k): str(v) for k, v in labels.items()},
                metric=str(data.get("metric", "accuracy")),
                source=str(data.get("source", "built-in")),
            )
        except (KeyError, ValueError) as err:
            raise DataError(f"{where}: a task spec is malformed ({err})") from None


@dataclass(frozen=True)
class Task:
    """A spec with its deterministic train/dev/test splits."""

    spec: TaskSpec
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    def split(self, name: str) -> tuple[Example, ...]:
        if name not in SPLITS:
            from frozenlm.errors import ConfigError

            raise ConfigError(f"unknown split '{name}'; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def split_sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def split_hash(self) -> str:
        """A short hash of every split's example ids and labels: equal hashes, equal data."""
        digest = hashlib.sha256()
        for name in SPLITS:
            rows = [[ex.id, ex.label, dict(ex.fields)] for ex in self.split(name)]
            digest.update(json.dumps([name, rows], sort_keys=True).encode())
        return digest.hexdigest()[:16]
