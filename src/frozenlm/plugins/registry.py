"""Plug-in kinds by name: how to build a new one for tasks and how to load a saved one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from frozenlm.backbone import Backbone
from frozenlm.checkpoint import Checkpoint, load_checkpoint
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.prompt_generator import PromptGenerator, PromptGeneratorConfig
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import Task, TaskSpec


@dataclass(frozen=True)
class PluginKind:
    """How one kind of plug-in is made and restored."""

    build: Callable[[Mapping[str, Any], Backbone, Sequence[TaskSpec], int], nn.Module]
    """(plugin config JSON, backbone, task specs, seed) -> a new plug-in."""
    restore: Callable[[Checkpoint, Backbone], nn.Module]
    """A saved checkpoint (already checked against the backbone) -> the plug-in."""


def _build_soft_prompt(
    config: Mapping[str, Any], backbone: Backbone, specs: Sequence[TaskSpec], seed: int
) -> nn.Module:
    return SoftPromptSet.from_config(SoftPromptConfig.from_json(config), backbone, specs, seed)


def _restore_soft_prompt(checkpoint: Checkpoint, backbone: Backbone) -> nn.Module:
    config = SoftPromptConfig.from_json(checkpoint.meta["plugin_config"])
    return SoftPromptSet.from_tensors(checkpoint.tensors, config)


def _build_generator(
    config: Mapping[str, Any], backbone: Backbone, specs: Sequence[TaskSpec], seed: int
) -> nn.Module:
    return PromptGenerator.from_config(
        PromptGeneratorConfig.from_json(config), backbone, specs, seed
    )


def _restore_generator(checkpoint: Checkpoint, backbone: Backbone) -> nn.Module:
    config = PromptGeneratorConfig.from_json(checkpoint.meta["plugin_config"])
    return PromptGenerator.from_tensors(checkpoint.tensors, config, backbone)


PLUGINS: dict[str, PluginKind] = {
    "soft-prompt": PluginKind(build=_build_soft_prompt, restore=_restore_soft_prompt),
    "id-pt": PluginKind(build=_build_generator, restore=_restore_generator),
}


def plugin_kind(name: str) -> PluginKind:
    if name not in PLUGINS:
        raise ConfigError(f"unknown plug-in method '{name}'; expected one of {', '.join(PLUGINS)}")
    return PLUGINS[name]


def plugin_meta(
    kind: str,
    config: Mapping[str, Any],
    backbone: Backbone,
    tasks: Sequence[Task],
    sources: Sequence[str],
) -> dict[str, Any]:
    """What every checkpoint of a plug-in records besides its weights and training state."""
    return {
        "kind": kind,
        "plugin_config": dict(config),
        "tasks": {task.name: task.spec.to_json() for task in tasks},
        "task_sources": {task.name: source for task, source in zip(tasks, sources, strict=True)},
        "split_hashes": {task.name: task.split_hash() for task in tasks},
        "backbone": {
            "name": backbone.name,
            "source": backbone.source,
            "fingerprint": backbone.fingerprint,
            "hidden_size": backbone.hidden_size,
        },
    }


def checkpoint_folder(path: str | Path) -> Path:
    """A checkpoint folder, or the `best/` checkpoint inside a training output folder."""
    folder = Path(path)
    if (folder / "best" / "plugin.json").is_file() and not (folder / "plugin.json").is_file():
        return folder / "best"
    return folder


def load_plugin(
    path: str | Path, backbone: Backbone, *, allow_other_backbone: bool = False
) -> tuple[nn.Module, Checkpoint]:
    """Load a saved plug-in for `backbone` (refused if trained on other weights, unless allowed)."""
    checkpoint = load_checkpoint(
        checkpoint_folder(path), backbone=backbone, allow_other_backbone=allow_other_backbone
    )
    kind = checkpoint.meta.get("kind")
    if kind not in PLUGINS:
        raise CheckpointError(f"checkpoint '{path}' holds an unknown plug-in kind '{kind}'")
    plugin = PLUGINS[kind].restore(checkpoint, backbone)
    plugin.requires_grad_(False)
    return plugin, checkpoint


def export_peft_plugin(
    folder: str | Path, out: str | Path, backbone: Backbone, task: str | None = None
) -> str:
    """`frozenlm export-peft`: one task's soft prompt of a saved plug-in as a PEFT adapter.
    Returns the task exported."""
    from frozenlm.peft_interop import export_peft

    plugin, checkpoint = load_plugin(folder, backbone)
    if not isinstance(plugin, SoftPromptSet):
        raise ConfigError(f"'{folder}' holds a {checkpoint.meta['kind']}, not a soft prompt")
    names = plugin.task_names
    if task is None and len(names) > 1:
        raise ConfigError(f"'{folder}' has prompts for {', '.join(names)}; choose one with --task")
    name = task or names[0]
    export_peft(plugin.prompt(name), backbone, out)
    return name


def import_peft_plugin(
    peft_dir: str | Path, out: str | Path, backbone: Backbone, task_ref: str
) -> None:
    """`frozenlm import-peft`: a PEFT prompt-tuning adapter as a frozenlm soft-prompt checkpoint
    for the task `task_ref` (a built-in name or task file)."""
    from frozenlm.checkpoint import save_checkpoint
    from frozenlm.peft_interop import import_peft
    from frozenlm.tasks import load_task

    prompt = import_peft(peft_dir, backbone)  # [P, D]
    task = load_task(task_ref)
    config = SoftPromptConfig(length=int(prompt.shape[0]))
    plugin = SoftPromptSet({task.name: prompt}, config)
    meta = plugin_meta("soft-prompt", config.to_json(), backbone, [task], [task_ref])
    meta["imported_from"] = str(Path(peft_dir).resolve())
    save_checkpoint(out, plugin.tensors(), meta)
