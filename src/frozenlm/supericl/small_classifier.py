"""The SuperICL plug-in: a small sequence classifier fine-tuned on the task, whose prediction and
confidence go into the large model's context.

By default it is the packaged all-MiniLM-L6-v2 encoder with a fresh classification head; any
local Hugging Face sequence-classification folder can be used instead (`SmallClassifier.load`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    get_linear_schedule_with_warmup,
)

from frozenlm.atomic import build_folder
from frozenlm.backbone import quiet_loading
from frozenlm.devices import seeded_rng
from frozenlm.errors import CheckpointError, ConfigError, DataError
from frozenlm.progress import progress
from frozenlm.prompts.demos import default_encoder_path
from frozenlm.tasks.spec import Example, Task, TaskSpec
from frozenlm.tasks.splits import balanced_sample

log = logging.getLogger(__name__)

MARKER = "frozenlm-plugin.json"
"""Written last into a saved plug-in folder: its task, labels and training record."""


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How the plug-in classifier is fine-tuned (BERT-style recipe: AdamW, linear decay)."""

    epochs: int = 3
    """Passes over the training examples; the epoch with the best dev accuracy is kept."""
    max_train: int | None = 2000
    """Train on at most this many examples (a class-balanced seeded subsample; None: all)."""
    batch_size: int = 32
    lr: float = 1e-4
    """AdamW learning rate (MiniLM-L6 is small; 1e-4 converges in a few epochs)."""
    warmup: float = 0.1
    """Fraction of the steps with a linear warm-up."""
    max_length: int = 128
    """Input tokens kept per example (longer inputs are truncated)."""
    dev_limit: int = 200
    """Dev examples scored after each epoch."""
    seed: int = 0


@dataclass(frozen=True)
class ClassifierPrediction:
    label: str
    """The task label the plug-in predicts."""
    confidence: float
    """Its softmax probability."""


class SmallClassifier:
    """A sequence classifier over one task's labels: `predict(examples)` gives label and
    confidence for each."""

    def __init__(self, model: Any, tokenizer: Any, spec: TaskSpec, info: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.info = info
        """What is known about its training: encoder, examples, seconds, dev accuracy."""
        self.labels = _label_order(model.config, spec)  # head index -> task label

    @property
    def name(self) -> str:
        return str(self.info.get("name", "Plug-in"))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @classmethod
    def train(
        cls,
        task: Task,
        config: ClassifierTrainConfig = ClassifierTrainConfig(),
        *,
        exclude: Sequence[str] = (),
        encoder: str | None = None,
        name: str = "MiniLM",
    ) -> SmallClassifier:
        """Fine-tune `encoder` (default: the packaged MiniLM) with a new head on `task.train`,
        leaving out the examples whose ids are in `exclude` (the demonstrations, so that the
        plug-in's predictions on them are out of sample)."""
        if task.spec.kind != "classification":
            raise ConfigError(f"a plug-in classifier needs a classification task; '{task.name}'")
        skip = set(exclude)
        pool = [ex for ex in task.train if ex.id not in skip]
        if not pool:
            raise DataError(f"task '{task.name}' has no training examples for the plug-in")
        pool = balanced_sample(pool, config.max_train, config.seed)
        path = encoder or default_encoder_path()
        with seeded_rng(config.seed):  # seeded head init and dropout; the caller's RNG untouched
            tokenizer = AutoTokenizer.from_pretrained(path)
            with quiet_loading():
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, **_head_labels(task.spec)
                )
            plugin = cls(model, tokenizer, task.spec, {"name": name, "encoder": str(path)})
            plugin._fit(pool, list(task.dev[: config.dev_limit]), config)
        plugin.info["excluded_ids"] = sorted(skip)
        return plugin

    @classmethod
    def tiny(cls, task: Task, *, encoder: str | None = None, seed: int = 0) -> SmallClassifier:
        """An untrained 2-layer BERT over MiniLM's vocabulary, for unit tests."""
        path = encoder or default_encoder_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            **_head_labels(task.spec),
        )
        with seeded_rng(seed):  # seeded weights; the caller's RNG untouched
            model = BertForSequenceClassification(config)
        return cls(model, tokenizer, task.spec, {"name": "TinyBERT", "encoder": "tiny"})

    @classmethod
    def load(cls, folder: str | Path, spec: TaskSpec, name: str | None = None) -> SmallClassifier:
        """A saved plug-in or any local Hugging Face sequence-classification folder whose labels
        (`id2label`) are the task's labels, its verbalizers, or `LABEL_0..` in the task's order."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"'{folder}' is not a Hugging Face model folder (no config.json); pass a folder "
                "saved with save_pretrained or by frozenlm"
            )
        info: dict[str, Any] = {}
        if (folder / MARKER).is_file():
            info = json.loads((folder / MARKER).read_text())
            if info.get("task") != spec.name:
                raise CheckpointError(
                    f"the plug-in in '{folder}' was trained on task '{info.get('task')}', not "
                    f"'{spec.name}'"
                )
        try:
            with quiet_loading():
                model = AutoModelForSequenceClassification.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"could not load a sequence classifier from '{folder}': {err}"
            ) from None
        info.setdefault("name", folder.name)
        if name:
            info["name"] = name
        return cls(model, tokenizer, spec, info)

    def save(self, folder: str | Path) -> None:
        """Model, tokenizer and `frozenlm-plugin.json`, written atomically (safetensors)."""

        def write(tmp: Path) -> None:
            with quiet_loading():
                self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            info = {**self.info, "task": self.spec.name, "labels": self.labels}
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")

        build_folder(folder, write, marker=MARKER)

    @torch.no_grad()
    def probabilities(self, examples: Sequence[Example], batch_size: int = 64) -> torch.Tensor:
        """Softmax probabilities [N, K] over the task's labels (in `self.labels` order)."""
        out = []
        self.model.eval()
        texts = [self.spec.format_input(ex) for ex in examples]
        for start in range(0, len(texts), batch_size):
            batch = self._encode(texts[start : start + batch_size], 512)
            out.append(torch.softmax(self.model(**batch).logits.float(), dim=-1))  # [b, K]
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def predict(self, examples: Sequence[Example]) -> list[ClassifierPrediction]:
        probs = self.probabilities(examples)
        best = probs.argmax(dim=-1)
        return [
            ClassifierPrediction(self.labels[int(i)], float(row[int(i)]))
            for i, row in zip(best, probs, strict=True)
        ]

    def accuracy(self, examples: Sequence[Example]) -> float:
        predictions = self.predict(examples)
        hits = sum(p.label == ex.label for p, ex in zip(predictions, examples, strict=True))
        return hits / max(len(examples), 1)

    # -- training ---------------------------------------------------------------------------

    def _encode(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        limit = min(max_length, getattr(self.tokenizer, "model_max_length", max_length))
        return dict(
            self.tokenizer(
                texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
            )
        )

    def _fit(self, train: list[Example], dev: list[Example], config: ClassifierTrainConfig) -> None:
        index = {label: i for i, label in enumerate(self.labels)}
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total = steps_per_epoch * config.epochs
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total), total)
        rng = random.Random(config.seed)
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        start = time.perf_counter()
        history = []
        with progress(total=total, desc=f"{self.spec.name} plug-in", unit="step") as bar:
            for epoch in range(1, config.epochs + 1):
                self.model.train()
                order = list(train)
                rng.shuffle(order)
                for at in range(0, len(order), config.batch_size):
                    rows = order[at : at + config.batch_size]
                    batch = self._encode(
                        [self.spec.format_input(ex) for ex in rows], config.max_length
                    )
                    gold = torch.tensor([index[ex.label] for ex in rows])
                    loss = torch.nn.functional.cross_entropy(self.model(**batch).logits, gold)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                score = self.accuracy(dev) if dev else 0.0
                history.append({"epoch": epoch, "dev_accuracy": score})
                log.info("plug-in epoch %d: dev accuracy %.3f", epoch, score)
                if best is None or score > best[0]:
                    state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    best = (score, epoch, state)
        assert best is not None
        self.model.load_state_dict(best[2])
        self.model.eval()
        self.info.update(
            train_examples=len(train),
            train_seconds=time.perf_counter() - start,
            best_epoch=best[1],
            dev_accuracy=best[0],
            dev_examples=len(dev),
            history=history,
            config=asdict(config),
        )


def _head_labels(spec: TaskSpec) -> dict[str, Any]:
    """A new classification head's size and label names: the task's labels, in order."""
    labels = list(spec.labels)
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _label_order(config: Any, spec: TaskSpec) -> list[str]:
    """The task label of each head output, read from the model's `id2label`."""
    id2label = {int(i): str(name) for i, name in (config.id2label or {}).items()}
    labels = list(spec.labels)
    if sorted(id2label) != list(range(len(labels))):
        raise CheckpointError(
            f"the plug-in has {len(id2label)} outputs but task '{spec.name}' has "
            f"{len(labels)} labels ({', '.join(labels)})"
        )
    by_name = {label.lower(): label for label in labels}
    by_name |= {verb.lower(): label for label, verb in spec.labels.items()}
    names = [id2label[i] for i in range(len(labels))]
    if all(n.lower() in by_name for n in names):
        order = [by_name[n.lower()] for n in names]
        if len(set(order)) == len(order):
            return order
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return labels  # unnamed outputs: the task's label order, as the SuperICL script assumes
    raise CheckpointError(
        f"the plug-in's labels ({', '.join(names)}) are not the labels of task '{spec.name}' "
        f"({', '.join(labels)})"
    )
