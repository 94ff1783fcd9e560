"""What a server serves: the frozen backbone, and the plug-ins loaded on it, each by name.

A plug-in folder (any trained kind: soft prompt, ID-PT generator, deep prompt, connector) is
served once per task it was trained for: as its name when it has one task, as NAME/TASK when it
has several. A request for a plug-in model sends the task's *input*; it is rendered with the
task's prompt exactly as `frozenlm eval` renders it (same format, same chat-template choice as
in training), so a served answer equals the evaluated one.

Plug-ins are data: `ModelTable` loads them at start or at run time (only from folders under a
plug-in root given at start: no path out of it, no symlink out of it), keeps at most
`max_loaded` plug-ins' weights in memory (the least recently used is evicted, and reloaded from
its folder on its next request) and unloads them on request; every checkpoint check of
`load_plugin` applies. A plug-in that does not read its input (a soft prompt, a deep prompt)
gives every row of its task the same soft tokens, so their keys and values, with the text
before them, are computed once and kept warm (`prefix`).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import Row
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.splice import Piece
from frozenlm.errors import FrozenLMError
from frozenlm.evaluation.evaluate import EvalConfig, label_candidates
from frozenlm.plugins.checkpoint import checkpoint_folder
from frozenlm.plugins.protocol import NONE, Conditioning, Plugin, inference_conditioning
from frozenlm.plugins.registry import load_plugin
from frozenlm.prompts.render import Prompter, RenderedPrompt
from frozenlm.tasks import Example, TaskSpec

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A served plug-in's name."""


class ServeError(FrozenLMError):
    """A request the server refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServedModel:
    """One name in /v1/models: the bare backbone, or one task of a loaded plug-in."""

    name: str
    backbone: Backbone
    task: TaskSpec | None = None
    """The task whose inputs a plug-in model reads (None: the bare backbone, raw text)."""
    folder: Path | None = None
    chat_template: bool = True
    """The prompt format the plug-in was trained with."""
    kind: str = "backbone"
    """The plug-in method ("soft-prompt", "id-pt", ...) or "backbone"."""
    group: str = ""
    """The plug-in folder's name: models of one folder share its weights."""
    plugin: Plugin | None = None
    """The weights (None for the backbone, and while evicted)."""
    removed: bool = False
    """Unloaded: requests still queued for it are answered with an error."""
    _prompters: dict[int, Prompter] = field(default_factory=dict)
    _warm: dict[tuple[int, ...], PrefixCache] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Its /v1/models entry."""
        entry: dict[str, Any] = {"id": self.name, "object": "model", "owned_by": "frozenlm"}
        entry["kind"] = self.kind
        entry["backbone"] = self.backbone.name
        if self.task is not None:
            entry["task"] = {"name": self.task.name, "kind": self.task.kind}
            entry["task"]["input_fields"] = list(self.task.input_fields)
            if self.task.labels:
                entry["task"]["labels"] = list(self.task.labels)
        return entry

    def prompter(self, answer_tokens: int | None) -> Prompter:
        """The task's prompter with room for `answer_tokens` (None: its longest label)."""
        if self.task is None:
            raise ServeError(400, f"model '{self.name}' is the bare backbone: it has no task")
        key = -1 if answer_tokens is None else answer_tokens
        if key not in self._prompters:
            config = EvalConfig(chat_template=self.chat_template)
            self._prompters[key] = Prompter(
                self.task,
                self.backbone.tokenizer,
                config.prompt_config(),
                max_tokens=min(config.max_prompt_tokens, self.backbone.max_length),
                answer_tokens=answer_tokens,
            )
        return self._prompters[key]

    def candidates(self) -> list[list[int]]:
        """Each label's verbalizer ids (classification plug-ins), in the task's label order."""
        if self.task is None or self.task.kind != "classification":
            raise ServeError(
                400, f"model '{self.name}' is not a classification plug-in: /v1/classify needs one"
            )
        return label_candidates(self.task, self.prompter(None))

    def example(self, fields: str | dict[str, str]) -> Example:
        """A request's input as an example of the task (a text fills its one input field)."""
        assert self.task is not None
        names = self.task.input_fields
        if isinstance(fields, str):
            if len(names) != 1:
                raise ServeError(
                    400,
                    f"task '{self.task.name}' reads the fields {', '.join(names)}: send an "
                    "object with each of them",
                )
            fields = {names[0]: fields}
        missing = [n for n in names if n not in fields]
        extra = sorted(set(fields) - set(names))
        if missing or extra:
            what = f"lacks {', '.join(missing)}" if missing else f"has unknown {', '.join(extra)}"
            raise ServeError(400, f"the input of task '{self.task.name}' {what}")
        return Example(id="request", fields=dict(fields), label="")

    def render(self, example: Example, answer_tokens: int | None) -> RenderedPrompt:
        """The prompt for `example`, refused (400) when its input does not fit uncut."""
        prompter = self.prompter(answer_tokens)
        if not prompter.fits(example):
            raise ServeError(
                400,
                f"the input does not fit model '{self.name}': its prompt must stay within "
                f"{prompter.max_tokens} tokens with {prompter.answer_tokens} reserved for the "
                "answer; shorten it (or lower max_tokens)",
            )
        return prompter.render(example)

    def warm_row(self, conditioning: Conditioning, prompt: RenderedPrompt) -> Row:
        """The engine row of `prompt`. What every input of the model starts with (the text
        before the input, with the plug-in's key/value prefix, and its soft tokens when they do
        not depend on the input) is a key/value prefix computed once and kept warm, so rows of
        different models in one batch each compute only their own input."""
        row = conditioning.row(prompt.ids, prompt.input_start)
        if self.plugin is None:
            return row
        shared_soft = row.soft is not None and not self.plugin.reads_input
        end = prompt.input_start if row.soft is None or shared_soft else row.soft_at
        end = min(end, len(row.ids) - 1)  # the row keeps a token of its own
        if (end <= 0 and not shared_soft) or (shared_soft and end < row.soft_at):
            return row
        key = tuple(row.ids[:end])
        prefix = self._warm.get(key)
        if prefix is None:
            pieces: list[Piece] = []
            if shared_soft and row.soft is not None:
                head, tail = list(row.ids[: row.soft_at]), list(row.ids[row.soft_at : end])
                pieces = [*([head] if head else []), row.soft, *([tail] if tail else [])]
            else:
                pieces = [list(key)]
            prefix = PrefixCache.compute(self.backbone, pieces, after=row.kv)
            self._warm[key] = prefix
        if shared_soft or row.soft is None:
            return Row(row.ids[end:], kv=prefix)
        return Row(row.ids[end:], row.soft, prefix, soft_at=row.soft_at - end)


@dataclass(frozen=True)
class Prompted:
    """One row a request asks for: the model, the example (plug-ins) and its rendered prompt."""

    model: ServedModel
    prompt: RenderedPrompt
    example: Example | None = None


def engine_rows(items: Sequence[Prompted]) -> list[Row]:
    """Engine rows of rows of any models: each plug-in conditions its rows once per batch (an
    ID-PT generator writes a whole group's prompts in one forward)."""
    plugged: list[tuple[int, tuple[Plugin, TaskSpec, Example]]] = []
    for i, item in enumerate(items):
        model = item.model
        if model.plugin is not None and model.task is not None and item.example is not None:
            plugged.append((i, (model.plugin, model.task, item.example)))
    made = inference_conditioning([row for _, row in plugged])
    conditioning = [NONE] * len(items)
    for (i, _), c in zip(plugged, made, strict=True):
        conditioning[i] = c
    return [
        item.model.warm_row(c, item.prompt) for item, c in zip(items, conditioning, strict=True)
    ]


class ModelTable:
    """The backbone and the plug-ins served on it, by name (thread-safe)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        backbone_name: str | None = None,
        root: str | Path | None = None,
        max_loaded: int = 16,
    ) -> None:
        if max_loaded < 1:
            raise ServeError(400, f"max_loaded must be at least 1, got {max_loaded}")
        self.backbone = backbone
        self.root = None if root is None else Path(root).resolve()
        self.max_loaded = max_loaded
        self.base = ServedModel(backbone_name or backbone.name, backbone)
        self._models: dict[str, ServedModel] = {self.base.name: self.base}
        self._groups: OrderedDict[str, list[ServedModel]] = OrderedDict()  # LRU order
        self._lock = threading.RLock()

    def models(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def get(self, name: str) -> ServedModel:
        """The model `name` (404 if unknown), its weights loaded (an evicted plug-in reloads)."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                known = ", ".join(self._models)
                raise ServeError(404, f"model '{name}' is not served here; served: {known}")
            if model.group:
                self._groups.move_to_end(model.group)
                if model.plugin is None:
                    self._reload(model.group)
            return model

    def add(self, folder: str | Path, name: str | None = None) -> list[ServedModel]:
        """Serve the plug-in saved in `folder` (any path: the operator's choice at start)."""
        return self._add(checkpoint_folder(folder), name)

    def load(self, relative: str, name: str | None = None) -> list[ServedModel]:
        """Serve the plug-in in the folder `relative` under the plug-in root (run time)."""
        return self._add(self._under_root(relative), name)

    def unload(self, name: str) -> list[str]:
        """Stop serving the plug-in `name` (a folder's name, or one of its models' names)."""
        with self._lock:
            group = name if name in self._groups else None
            if group is None and name in self._models and self._models[name].group:
                group = self._models[name].group
            if group is None:
                raise ServeError(404, f"no plug-in '{name}' is loaded")
            gone = self._groups.pop(group)
            for model in gone:
                model.removed = True
                model.plugin = None
                del self._models[model.name]
            return [m.name for m in gone]

    # ------------------------------------------------------------------ internals
    def _under_root(self, relative: str) -> Path:
        if self.root is None:
            raise ServeError(403, "loading at run time needs a plug-in root (--plugin-root)")
        if not relative or Path(relative).is_absolute() or "\x00" in relative:
            raise ServeError(400, "give the plug-in's folder relative to the plug-in root")
        try:
            target = (self.root / relative).resolve()
            if not target.is_relative_to(self.root):
                raise ServeError(403, f"'{relative}' leads outside the plug-in root")
            if not target.is_dir():
                raise ServeError(404, f"no folder '{relative}' under the plug-in root")
            folder = checkpoint_folder(target)
            for path in folder.iterdir():
                if not path.resolve().is_relative_to(self.root):
                    where = f"'{relative}/{path.name}'"
                    raise ServeError(403, f"{where} leads outside the plug-in root")
        except OSError as err:  # a name too long for the file system, a loop of links...
            raise ServeError(400, f"'{relative[:200]}' cannot be read: {err.strerror}") from None
        return folder

    def _read(self, folder: Path) -> tuple[Plugin, dict[str, Any]]:
        try:
            plugin, checkpoint = load_plugin(folder, self.backbone)
        except FileNotFoundError as err:
            raise ServeError(404, f"no checkpoint in '{folder}': {err}") from None
        except OSError as err:
            raise ServeError(400, f"checkpoint '{folder}' cannot be read: {err.strerror}") from None
        except FrozenLMError as err:
            raise ServeError(400, str(err)) from None
        return plugin, checkpoint.meta

    def _add(self, folder: Path, name: str | None) -> list[ServedModel]:
        group = name or (folder.parent.name if folder.name == "best" else folder.name)
        if not NAME.fullmatch(group):
            raise ServeError(400, f"'{group}' is not a usable name: letters, digits, . _ -")
        plugin, meta = self._read(folder)
        specs = meta.get("tasks")
        if not isinstance(specs, dict) or not specs:
            raise ServeError(400, f"checkpoint '{folder}' names no tasks in its plugin.json")
        chat = bool(meta.get("train_config", {}).get("chat_template", True))
        tasks = [TaskSpec.from_json(spec, str(folder / "plugin.json")) for spec in specs.values()]
        names = [group] if len(tasks) == 1 else [f"{group}/{t.name}" for t in tasks]
        models = [
            ServedModel(n, self.backbone, t, folder, chat, str(plugin.method), group, plugin)
            for n, t in zip(names, tasks, strict=True)
        ]
        with self._lock:
            taken = [n for n in [group, *names] if n in self._models or n in self._groups]
            if taken:
                raise ServeError(409, f"a model named '{taken[0]}' is already served")
            self._groups[group] = models
            for model in models:
                self._models[model.name] = model
            self._evict()
        return models

    def _reload(self, group: str) -> None:
        models = self._groups[group]
        folder = models[0].folder
        assert folder is not None
        plugin, _ = self._read(folder)
        for model in models:
            model.plugin = plugin
            model._warm.clear()
        self._evict()

    def _evict(self) -> None:
        """Drop the least recently used plug-ins' weights beyond `max_loaded`."""
        loaded = [g for g, models in self._groups.items() if models[0].plugin is not None]
        for group in loaded[: max(0, len(loaded) - self.max_loaded)]:
            for model in self._groups[group]:
                model.plugin = None
                model._warm.clear()
