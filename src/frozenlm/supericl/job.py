"""A whole SuperICL run as the CLI does it: choose the demonstrations, get the plug-in (train it
with the demonstrations left out, reuse a matching saved one, or load the user's), run."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from frozenlm.errors import ConfigError
from frozenlm.supericl.backends import Backend
from frozenlm.supericl.run import SuperICLConfig, SuperICLResult, pick_demos, run_supericl
from frozenlm.supericl.small_classifier import MARKER, ClassifierTrainConfig, SmallClassifier
from frozenlm.tasks.spec import Example, Task

log = logging.getLogger(__name__)


def plugin_identity(
    task: Task, excluded: list[str], train: ClassifierTrainConfig, encoder: str | None
) -> dict[str, Any]:
    """What makes a trained plug-in reusable for a run: the same data, exclusions and recipe."""
    return {
        "task": task.name,
        "split_hash": task.split_hash(),
        "excluded_ids": sorted(excluded),
        "config": asdict(train),
        "encoder": encoder or "default",
    }


def get_plugin(
    task: Task,
    demos: list[Example],
    config: SuperICLConfig,
    *,
    plugin: str = "default",
    train: ClassifierTrainConfig = ClassifierTrainConfig(),
    save_to: str | Path | None = None,
    encoder: str | None = None,
) -> SmallClassifier:
    """The user's plug-in folder (`plugin` = a path), or the default MiniLM plug-in: loaded from
    `save_to` when it was trained the same way, else trained and saved there."""
    if plugin != "default":
        path = Path(plugin)
        if not path.exists():
            raise ConfigError(f"--plugin '{plugin}' is neither 'default' nor an existing folder")
        return SmallClassifier.load(path, task.spec)
    excluded = [] if config.in_sample_demos else [d.id for d in demos]
    identity = plugin_identity(task, excluded, train, encoder)
    if save_to is not None and (Path(save_to) / MARKER).is_file():
        saved = json.loads((Path(save_to) / MARKER).read_text())
        if saved.get("identity") == identity:
            log.warning("reusing the plug-in trained earlier in %s", save_to)
            return SmallClassifier.load(save_to, task.spec)
    trained = SmallClassifier.train(task, train, exclude=excluded, encoder=encoder)
    trained.info["identity"] = identity
    if save_to is not None:
        trained.save(save_to)
    return trained


def supericl_job(
    task: Task,
    backend: Backend,
    tokenizer: Any,
    config: SuperICLConfig,
    *,
    plugin: str = "default",
    train: ClassifierTrainConfig = ClassifierTrainConfig(),
    save_plugin_to: str | Path | None = None,
    max_tokens: int | None = None,
) -> SuperICLResult:
    demos = pick_demos(task, config)
    classifier = get_plugin(task, demos, config, plugin=plugin, train=train, save_to=save_plugin_to)
    return run_supericl(task, backend, classifier, demos, tokenizer, config, max_tokens)
