"""Plug-in methods by name: how to build a new one for tasks and how to load a saved one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frozenlm.backbone import Backbone
from frozenlm.codec import from_json
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import Checkpoint, checkpoint_folder, load_checkpoint
from frozenlm.plugins.connector import Connector, ConnectorConfig
from frozenlm.plugins.prefix import DeepPrompt, PrefixConfig
from frozenlm.plugins.prompt_generator import PromptGenerator, PromptGeneratorConfig
from frozenlm.plugins.protocol import Plugin, SoftPosition
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import Task, TaskSpec


@dataclass(frozen=True)
class PluginMethod:
    """How one method of plug-in is made and restored."""

    build: Callable[[Mapping[str, Any], Backbone, Sequence[TaskSpec], int], Plugin]
    """(plugin config JSON, backbone, task specs, seed) -> a new plug-in (fp32, on the CPU;
    `new_plugin` moves it to the backbone's device)."""
    restore: Callable[[Checkpoint, Backbone], Plugin]
    """A saved checkpoint (already checked against the backbone) -> the plug-in."""
    recipe: Mapping[str, Any] = field(default_factory=dict)
    """How this kind trains best, as `TrainConfig` fields that differ from the defaults
    (Lester's soft-prompt recipe); chosen by measurement (docs/results/quality)."""


def _build_soft_prompt(
    config: Mapping[str, Any], backbone: Backbone, specs: Sequence[TaskSpec], seed: int
) -> Plugin:
    prompt_config = from_json(SoftPromptConfig, config, "soft prompt config")
    return SoftPromptSet.from_config(prompt_config, backbone, specs, seed)


def _prompt_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """A soft prompt's or a generator's saved config; those saved before `position` existed
    were trained before everything and get position start."""
    return {"position": SoftPosition.START.value, **checkpoint.meta["plugin_config"]}


def _restore_soft_prompt(checkpoint: Checkpoint, backbone: Backbone) -> Plugin:
    config = from_json(SoftPromptConfig, _prompt_config(checkpoint), "soft prompt config")
    return SoftPromptSet.from_tensors(
        checkpoint.tensors,
        config,
        backbone.hidden_size,
        source=f"checkpoint '{checkpoint.folder}'",
    )


def _build_generator(
    config: Mapping[str, Any], backbone: Backbone, specs: Sequence[TaskSpec], seed: int
) -> Plugin:
    generator_config = from_json(PromptGeneratorConfig, config, "prompt generator config")
    return PromptGenerator.from_config(generator_config, backbone, specs, seed)


def _restore_generator(checkpoint: Checkpoint, backbone: Backbone) -> Plugin:
    config = from_json(PromptGeneratorConfig, _prompt_config(checkpoint), "prompt generator config")
    return PromptGenerator.from_tensors(checkpoint.tensors, config, backbone)


def _build_prefix(
    config: Mapping[str, Any], backbone: Backbone, specs: Sequence[TaskSpec], seed: int
) -> Plugin:
    prefix_config = from_json(PrefixConfig, config, "deep prompt config")
    return DeepPrompt.from_config(prefix_config, backbone, specs, seed)


def _restore_prefix(checkpoint: Checkpoint, backbone: Backbone) -> Plugin:
    config = from_json(PrefixConfig, checkpoint.meta["plugin_config"], "deep prompt config")
    return DeepPrompt.from_tensors(
        checkpoint.tensors, config, backbone, source=f"checkpoint '{checkpoint.folder}'"
    )


def _build_connector(
    config: Mapping[str, Any], backbone: Backbone, specs: Sequence[TaskSpec], seed: int
) -> Plugin:
    connector_config = from_json(ConnectorConfig, config, "connector config")
    return Connector.from_config(connector_config, backbone, specs, seed)


def _restore_connector(checkpoint: Checkpoint, backbone: Backbone) -> Plugin:
    config = from_json(ConnectorConfig, checkpoint.meta["plugin_config"], "connector config")
    return Connector.from_tensors(checkpoint.tensors, config, backbone)


PLUGINS: dict[str, PluginMethod] = {
    "soft-prompt": PluginMethod(
        build=_build_soft_prompt,
        restore=_restore_soft_prompt,
        # by measurement (docs/results/quality/recipe.md): Lester's Adafactor 0.3 collapsed in
        # short runs (quick budget, sentiment 128 rows: 0.338 / 0.775 / 0.713 over 3 seeds
        # against 0.787 / 0.738 / 0.812 with this)
        recipe={"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0},
    ),
    "id-pt": PluginMethod(build=_build_generator, restore=_restore_generator),
    "prefix": PluginMethod(
        build=_build_prefix,
        restore=_restore_prefix,
        recipe={"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0},
    ),
    # the pass-2 prompts at the soft prompt's rate, the network at a hundredth of it
    "recursion": PluginMethod(
        build=_build_connector,
        restore=_restore_connector,
        recipe={"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0},
    ),
}


def recipe(method: str) -> dict[str, Any]:
    """The `TrainConfig` fields `method` trains with unless the user sets them."""
    return dict(plugin_method(method).recipe)


def plugin_method(name: str) -> PluginMethod:
    if name not in PLUGINS:
        raise ConfigError(f"unknown plug-in method '{name}'; expected one of {', '.join(PLUGINS)}")
    return PLUGINS[name]


def new_plugin(
    method: str,
    config: Mapping[str, Any],
    backbone: Backbone,
    specs: Sequence[TaskSpec],
    seed: int,
) -> Plugin:
    """A new plug-in of `method` for the tasks `specs`, on the backbone's device (fp32)."""
    plugin = plugin_method(method).build(config, backbone, specs, seed)
    plugin.to(backbone.device)
    return plugin


def plugin_meta(
    method: str,
    config: Mapping[str, Any],
    backbone: Backbone,
    tasks: Sequence[Task],
    sources: Sequence[str],
) -> dict[str, Any]:
    """What every checkpoint of a plug-in records besides its weights and training state."""
    return {
        "kind": method,  # the checkpoint format's name for the method
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


def load_plugin(
    path: str | Path, backbone: Backbone, *, allow_other_backbone: bool = False
) -> tuple[Plugin, Checkpoint]:
    """Load a saved plug-in for `backbone` (refused if trained on other weights, unless allowed)."""
    checkpoint = load_checkpoint(
        checkpoint_folder(path), backbone=backbone, allow_other_backbone=allow_other_backbone
    )
    method = checkpoint.meta.get("kind")
    if not isinstance(method, str) or method not in PLUGINS:
        raise CheckpointError(
            f"checkpoint '{path}' holds an unknown plug-in method {method!r}; expected one of "
            f"{', '.join(PLUGINS)}"
        )
    if not isinstance(checkpoint.meta.get("plugin_config"), dict):
        raise CheckpointError(
            f"checkpoint '{path}': 'plugin_config' in {checkpoint.folder / 'plugin.json'} must "
            "be a JSON object"
        )
    plugin = PLUGINS[method].restore(checkpoint, backbone)
    plugin.requires_grad_(False)
    plugin.to(backbone.device)  # fp32 weights on the backbone's device, cast at use
    return plugin, checkpoint
