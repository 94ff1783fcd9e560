"""The SuperICL plug-in: a small sequence classifier trained on the task, whose prediction and
confidence go into the large model's context.

By default it is the packaged all-MiniLM-L6-v2 encoder with a fresh classification head, either
fine-tuned with it (`EncoderTraining.FULL`) or trained alone over the frozen encoder's sentence
embeddings (`EncoderTraining.FROZEN`); any local Hugging Face sequence-classification folder can
be used instead (`SmallClassifier.load`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    get_linear_schedule_with_warmup,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from frozenlm.atomic import build_folder
from frozenlm.backbone import quiet_loading
from frozenlm.codec import to_json
from frozenlm.devices import seeded_rng
from frozenlm.errors import CheckpointError, ConfigError, DataError
from frozenlm.fingerprint import folder_fingerprint
from frozenlm.progress import progress
from frozenlm.prompts.demos import default_encoder_path
from frozenlm.tasks.spec import Example, Task, TaskSpec
from frozenlm.tasks.splits import balanced_sample

log = logging.getLogger(__name__)

MARKER = "frozenlm-plugin.json"
"""Written last into a saved plug-in folder: its task, labels and training record."""
HEAD_TENSORS = "head.safetensors"
"""A frozen-encoder plug-in's head; the encoder is named in the marker, not copied."""


class EncoderTraining(StrEnum):
    """What training changes."""

    FULL = "full"
    """The encoder and a new head on its [CLS] state (BERT fine-tuning); saved as a Hugging
    Face sequence-classification folder."""
    FROZEN = "frozen"
    """Only a linear head over the frozen encoder's mean-pooled states (a sentence embedding,
    as all-MiniLM-L6-v2 is read; SetFit's head, Tunstall et al. 2022). The embeddings are
    computed once, so an epoch costs microseconds; the head's loss is convex, so the last
    epoch is kept and dev decides nothing. Saved: the head and the encoder's name."""


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How the plug-in classifier is trained (BERT-style recipe: AdamW, linear decay)."""

    epochs: int = 3
    """Passes over the training examples; FULL keeps the epoch with the best dev accuracy."""
    max_train: int | None = 2000
    """Train on at most this many examples (a class-balanced seeded subsample; None: all)."""
    batch_size: int = 32
    lr: float = 1e-4
    """AdamW learning rate (MiniLM-L6 is small; 1e-4 converges in a few epochs; a FROZEN head
    takes 1e-2)."""
    warmup: float = 0.1
    """Fraction of the steps with a linear warm-up."""
    max_length: int = 128
    """Input tokens kept per example (longer inputs are truncated)."""
    dev_limit: int = 200
    """Dev examples scored after each epoch (FROZEN: once, for the record)."""
    seed: int = 0
    encoder_training: EncoderTraining = EncoderTraining.FULL
    """Fine-tune the encoder with the head, or train a head over the frozen encoder."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"plug-in epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"plug-in batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ClassifierPrediction:
    label: str
    """The task label the plug-in predicts."""
    confidence: float
    """Its softmax probability."""


class MeanPooledClassifier(nn.Module):
    """A linear head over a frozen encoder's sentence embedding. Called like a sequence
    classifier (`model(**batch).logits`)."""

    def __init__(self, encoder: Any, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.config = encoder.config
        """The encoder's config; its `id2label` names the head's outputs."""
        self.max_length = max_length
        """Input tokens kept per example, in training and prediction alike."""
        self.head = nn.Linear(encoder.config.hidden_size, len(encoder.config.id2label))

    def train(self, mode: bool = True) -> MeanPooledClassifier:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, so its embeddings can be computed once
        return self

    @torch.no_grad()
    def embed(self, **batch: torch.Tensor) -> torch.Tensor:
        """Each layer's output averaged over the real tokens, then over the layers. Measured on
        compare's quick cells (sentiment, trec, topic x 16, 128 rows x 3 seeds, all-MiniLM-L6-v2):
        mean test accuracy 0.676 against 0.644 for the last layer alone."""
        layers = self.encoder(**batch, output_hidden_states=True).hidden_states[1:]
        states = torch.stack(layers).mean(dim=0)  # [B, T, E]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B, E]

    def forward(self, **batch: torch.Tensor) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.head(self.embed(**batch)))  # [B, K]


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
        frozen = isinstance(model, MeanPooledClassifier)
        self.max_length = model.max_length if frozen else 512
        """Input tokens kept per example in prediction."""

    @property
    def name(self) -> str:
        return str(self.info.get("name", "Plug-in"))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def num_trained(self) -> int:
        """Parameters that training changes (FROZEN: the head's only)."""
        if isinstance(self.model, MeanPooledClassifier):
            return sum(p.numel() for p in self.model.head.parameters())
        return self.num_parameters

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
        info = {"name": name, "encoder": encoder or "default"}
        with seeded_rng(config.seed):  # seeded head init and dropout; the caller's RNG untouched
            tokenizer = AutoTokenizer.from_pretrained(path)
            with quiet_loading():
                if config.encoder_training is EncoderTraining.FROZEN:
                    frozen = AutoModel.from_pretrained(path, **_head_labels(task.spec))
                    model: Any = MeanPooledClassifier(frozen, config.max_length)
                    info["encoder_fingerprint"] = folder_fingerprint(frozen, Path(path))
                else:
                    model = AutoModelForSequenceClassification.from_pretrained(
                        path, **_head_labels(task.spec)
                    )
            plugin = cls(model, tokenizer, task.spec, info)
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
        info: dict[str, Any] = {}
        if (folder / MARKER).is_file():
            info = json.loads((folder / MARKER).read_text())
            if info.get("task") != spec.name:
                raise CheckpointError(
                    f"the plug-in in '{folder}' was trained on task '{info.get('task')}', not "
                    f"'{spec.name}'"
                )
        info.setdefault("name", folder.name)
        if name:
            info["name"] = name
        if (folder / HEAD_TENSORS).is_file():
            return cls._load_head(folder, spec, info)
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"'{folder}' is not a Hugging Face model folder (no config.json); pass a folder "
                "saved with save_pretrained or by frozenlm"
            )
        try:
            with quiet_loading():
                model = AutoModelForSequenceClassification.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"could not load a sequence classifier from '{folder}': {err}"
            ) from None
        return cls(model, tokenizer, spec, info)

    @classmethod
    def _load_head(cls, folder: Path, spec: TaskSpec, info: dict[str, Any]) -> SmallClassifier:
        """A frozen-encoder plug-in: the encoder its marker names (checked by fingerprint)
        under the head saved in `folder`."""
        ref = str(info.get("encoder", ""))
        path = default_encoder_path() if ref == "default" else ref
        if not (Path(path) / "config.json").is_file():
            raise CheckpointError(
                f"the plug-in in '{folder}' reads the encoder '{ref}', which is not a model "
                "folder here"
            )
        labels = [str(label) for label in info.get("labels", [])]
        with quiet_loading():
            encoder = AutoModel.from_pretrained(path, id2label=dict(enumerate(labels)))
        found = folder_fingerprint(encoder, Path(path))
        if found != info.get("encoder_fingerprint"):
            raise CheckpointError(
                f"the plug-in in '{folder}' was trained over encoder weights "
                f"{info.get('encoder_fingerprint')}, but '{path}' holds {found}"
            )
        model = MeanPooledClassifier(encoder, int(info["max_length"]))
        try:
            model.head.load_state_dict(load_file(folder / HEAD_TENSORS))
        except RuntimeError as err:
            raise CheckpointError(
                f"'{folder / HEAD_TENSORS}' does not fit the encoder: {err}"
            ) from None
        return cls(model, AutoTokenizer.from_pretrained(path), spec, info)

    def save(self, folder: str | Path) -> None:
        """Written atomically (safetensors) with `frozenlm-plugin.json`: the model and tokenizer,
        or a frozen-encoder plug-in's head only."""

        def write(tmp: Path) -> None:
            info = {**self.info, "task": self.spec.name, "labels": self.labels}
            if isinstance(self.model, MeanPooledClassifier):
                tensors = {k: v.contiguous() for k, v in self.model.head.state_dict().items()}
                save_file(tensors, tmp / HEAD_TENSORS)
                info["max_length"] = self.model.max_length
            else:
                with quiet_loading():
                    self.model.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")

        build_folder(folder, write, marker=MARKER)

    @torch.no_grad()
    def probabilities(self, examples: Sequence[Example], batch_size: int = 64) -> torch.Tensor:
        """Softmax probabilities [N, K] over the task's labels (in `self.labels` order)."""
        out = []
        self.model.eval()
        texts = [self.spec.format_input(ex) for ex in examples]
        for start in range(0, len(texts), batch_size):
            batch = self._encode(texts[start : start + batch_size], self.max_length)
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
        start = time.perf_counter()
        frozen = isinstance(self.model, MeanPooledClassifier)
        logits_of = self._frozen_logits(train) if frozen else self._logits(train, config)
        index = {label: i for i, label in enumerate(self.labels)}
        gold = torch.tensor([index[ex.label] for ex in train])  # [N]
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total = steps_per_epoch * config.epochs
        trained = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total), total)
        rng = random.Random(config.seed)
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        history, losses = [], []
        with progress(total=total, desc=f"{self.spec.name} plug-in", unit="step") as bar:
            for epoch in range(1, config.epochs + 1):
                self.model.train()
                order = list(range(len(train)))
                rng.shuffle(order)
                summed = 0.0
                for at in range(0, len(order), config.batch_size):
                    rows = order[at : at + config.batch_size]
                    loss = torch.nn.functional.cross_entropy(logits_of(rows), gold[rows])
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                    summed += loss.item() * len(rows)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                losses.append(round(summed / len(train), 4))
                if frozen:
                    continue  # a convex loss: the last epoch is kept, dev decides nothing
                score = self.accuracy(dev) if dev else 0.0
                history.append({"epoch": epoch, "dev_accuracy": score})
                log.info("plug-in epoch %d: dev accuracy %.3f", epoch, score)
                if best is None or score > best[0]:
                    state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    best = (score, epoch, state)
        if best is None:
            best_epoch, dev_accuracy = config.epochs, self.accuracy(dev) if dev else 0.0
            log.info(
                "plug-in head: loss %.3f -> %.3f in %d epochs", losses[0], losses[-1], best_epoch
            )
        else:
            self.model.load_state_dict(best[2])
            dev_accuracy, best_epoch = best[0], best[1]
        self.model.eval()
        self.info.update(
            train_examples=len(train),
            train_seconds=time.perf_counter() - start,
            best_epoch=best_epoch,
            dev_accuracy=dev_accuracy,
            dev_examples=len(dev),
            dev_selects=not frozen,
            history=history,
            losses=losses,
            config=to_json(config),
        )

    def _logits(
        self, train: list[Example], config: ClassifierTrainConfig
    ) -> Callable[[list[int]], torch.Tensor]:
        """FULL: the logits [b, K] of training rows (positions in `train`), encoded afresh."""
        texts = [self.spec.format_input(ex) for ex in train]

        def logits_of(rows: list[int]) -> torch.Tensor:
            batch = self._encode([texts[i] for i in rows], config.max_length)
            return self.model(**batch).logits

        return logits_of

    def _frozen_logits(self, train: list[Example]) -> Callable[[list[int]], torch.Tensor]:
        """FROZEN: every training row's sentence embedding [N, E] computed once; the logits
        [b, K] of a batch are the head over them."""
        model = self.model
        assert isinstance(model, MeanPooledClassifier)
        texts = [self.spec.format_input(ex) for ex in train]
        table = torch.cat(
            [
                model.embed(**self._encode(texts[at : at + 64], model.max_length))
                for at in range(0, len(texts), 64)
            ]
        )  # [N, E]
        return lambda rows: model.head(table[rows])


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
