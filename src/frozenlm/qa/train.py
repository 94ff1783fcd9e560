"""`frozenlm qa train-reader`: a plug-in (soft prompt or deep prompt) trained to read packed
passages, through the one training loop.

The train and dev questions get their contexts exactly as the reader will see them at test
time — retrieved (or re-ranked) passages packed into the budget, zero-shot (the plug-in takes
the demonstrations' place) — and become the reader's generation task; `training.loop.train`
then trains the plug-in on the reference answers like any generation task. The checkpoint
records which QA task, retriever and budget it was trained with (`meta["qa"]`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from frozenlm.atomic import check_output_folder, remove_folder
from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.qa.data import QAExample, QATask
from frozenlm.qa.reader import ContextPacker, ReaderConfig, as_example, reader_spec, reader_task
from frozenlm.qa.rerank import Reranker
from frozenlm.qa.retrieve import Index
from frozenlm.tasks.spec import Task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import TrainResult, check_run_folder, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderTrainConfig:
    """Which contexts the reader is trained on."""

    questions: int = 1000
    """Train questions (the first of the train split's seeded order; 0: all)."""
    dev_questions: int = 64
    """Dev questions packed for the training loop's dev evaluations."""
    retriever: str = "hybrid"
    order: Literal["retrieved", "reranked"] = "retrieved"
    """The passages' order when packing: the retriever's, or the re-ranker's (costs a
    re-ranking of every train question)."""
    depth: int = 20
    """Passages retrieved (and re-ranked) per question before packing."""
    reader: ReaderConfig = field(
        default_factory=lambda: ReaderConfig(method="zero-shot", budget=384)
    )
    """The reader's prompt: zero-shot, as the trained plug-in reads at test time."""


def _contexts(
    backbone: Backbone,
    task: QATask,
    examples: list[QAExample],
    index: Index,
    reranker: Reranker | None,
    config: ReaderTrainConfig,
) -> list[str]:
    hits = index.retriever(config.retriever).search([e.question for e in examples], config.depth)
    if config.order == "reranked":
        if reranker is None:
            raise ConfigError("packing train contexts in re-ranked order needs a re-ranker")
        hits = reranker.rerank([e.question for e in examples], hits, task.corpus, config.depth)
    packer = ContextPacker(backbone, reader_task(task, [], []), config.reader)
    return [
        packer.pack(e, [p for p, _ in h], task.corpus).context
        for e, h in zip(examples, hits, strict=True)
    ]


def reader_training_task(
    backbone: Backbone,
    task: QATask,
    index: Index,
    reranker: Reranker | None = None,
    config: ReaderTrainConfig = ReaderTrainConfig(),
) -> Task:
    """The reader's generation task with packed contexts on train and dev (no test)."""
    train_examples = list(task.train[: config.questions or None])
    dev_examples = list(task.dev[: config.dev_questions or None])
    if not train_examples or not dev_examples:
        raise ConfigError(f"QA task '{task.name}' needs train and dev questions to train a reader")
    splits = {}
    for name, examples in (("train", train_examples), ("dev", dev_examples)):
        contexts = _contexts(backbone, task, examples, index, reranker, config)
        splits[name] = tuple(as_example(e, c) for e, c in zip(examples, contexts, strict=True))
    return Task(spec=reader_spec(task.name), train=splits["train"], dev=splits["dev"], test=())


def train_reader(
    backbone: Backbone,
    task: QATask,
    index: Index,
    method: str,
    plugin_config: dict[str, Any],
    train_config: TrainConfig,
    out: str | Path,
    *,
    reranker: Reranker | None = None,
    config: ReaderTrainConfig = ReaderTrainConfig(),
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Pack the train and dev contexts and train a `method` plug-in to read them (`out`,
    `resume` and `overwrite` as `training.loop.train_plugin` takes them)."""
    from frozenlm.plugins.registry import new_plugin, plugin_meta, plugin_method

    out = check_output_folder(out, "out")
    plugin_method(method)
    found = check_run_folder(out, resume=resume, overwrite=overwrite)
    if config.reader.method != "zero-shot":
        raise ConfigError("a trained reader reads zero-shot: its plug-in replaces the examples")
    start = time.perf_counter()
    # the contexts are packed for the prompt the training rows are rendered in
    config = replace(
        config, reader=replace(config.reader, chat_template=train_config.chat_template)
    )
    reading = reader_training_task(backbone, task, index, reranker, config)
    log.info(
        "packed %d train and %d dev contexts in %.0f s",
        len(reading.train),
        len(reading.dev),
        time.perf_counter() - start,
    )
    meta = plugin_meta(method, plugin_config, backbone, [reading], [f"qa:{task.name}"])
    meta["qa"] = {
        "task": task.name,
        "split_hash": task.split_hash(),
        "config": asdict(config),
    }
    plugin = new_plugin(method, plugin_config, backbone, [reading.spec], train_config.seed)
    plugin.train()
    if found and overwrite:
        log.warning("--overwrite: deleting the run in '%s'", out)
        remove_folder(out)
    return train(backbone, plugin, [reading], train_config, out, meta=meta, resume=resume)
