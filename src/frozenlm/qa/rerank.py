"""The trained re-ranker: a cross-encoder that scores (question, passage) pairs, initialised from
the packaged all-MiniLM-L6-v2 and trained with sentence-transformers' cross-encoder trainer.

Training pairs each train question with its gold passage (or, without one, the best-ranked
retrieved passage that holds an answer) as the positive and with hard negatives mined from the
retriever's own top results (passages that are neither gold nor hold an answer), under binary
cross-entropy with the positives weighted by the number of negatives (sentence-transformers'
MS MARCO recipe), or listwise (the default, by measurement). At use its ranking is fused with
the retriever's (`RerankerConfig.fusion`). The checkpoint is the model's safetensors folder plus
`reranker.json` (config, corpus fingerprint, split hash, training time), written atomically.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from frozenlm.atomic import build_folder
from frozenlm.devices import seeded_rng
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.metrics import normalize_answer
from frozenlm.progress import progress
from frozenlm.prompts.demos import default_encoder_path
from frozenlm.qa.data import Corpus, QAExample, QATask
from frozenlm.qa.retrieve import Hits, Retriever, fuse

log = logging.getLogger(__name__)

MARKER = "reranker.json"


@dataclass(frozen=True)
class RerankerConfig:
    """How the re-ranker is trained (defaults: the measured recipe of docs/results/qa/reranker.md,
    75 steps)."""

    questions: int = 1200
    """Train questions used (the first of the train split's seeded order; 0: all)."""
    negatives: int = 3
    """Hard negatives per question."""
    mine_depth: int = 20
    """Negatives are drawn from the retriever's top this many passages."""
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-4
    """AdamW learning rate. sentence-transformers' cross-encoder examples use 2e-5; measured
    here, BCE at 2e-5 left the loss flat for 191 steps, listwise at 1e-4 / 2e-4 learned."""
    max_length: int = 192
    """Word pieces per (question, passage) pair; longer pairs are truncated."""
    init: str = ""
    """Encoder folder to start from; "" is the packaged all-MiniLM-L6-v2."""
    loss: Literal["bce", "listwise"] = "listwise"
    """bce: binary cross-entropy on (question, passage) pairs, positives weighted by
    `negatives`; listwise: softmax cross-entropy of the positive against its hard negatives
    and one other question's passage from the batch (sentence-transformers'
    MultipleNegativesRankingLoss with num_negatives=1)."""
    fusion: int = 10
    """How the re-ranker orders passages: its ranking fused with the retriever's by reciprocal
    rank (`retrieve.fuse` with this k), or 0: its ranking alone. By measurement: on the 500 dev
    questions (hybrid top 20, the 75-step listwise model) answer@5 was 0.786 alone, 0.796 for the
    retriever, 0.842 fused with k=10 (0.824 with k=60; docs/results/qa/reranker.md)."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_fusion(self.fusion)
        if self.loss not in ("bce", "listwise"):
            raise ConfigError(f"re-ranker loss must be bce or listwise, not {self.loss!r}")
        for name in ("negatives", "mine_depth", "epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise ConfigError(f"re-ranker {name} must be a positive number, got {value}")
        if self.questions < 0:
            raise ConfigError(f"re-ranker questions must be >= 0, got {self.questions}")
        if not self.lr > 0:
            raise ConfigError(f"re-ranker lr must be positive, got {self.lr}")


def check_fusion(k: int) -> int:
    """`k` when it is a valid rank-fusion k (0: no fusion), else ConfigError."""
    if k < 0:
        raise ConfigError(f"re-ranker fusion must be >= 0 (0: none), got {k}")
    return k


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether some answer occurs in `text` as whole words after SQuAD normalisation."""
    padded = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(a)} " in padded for a in answers if normalize_answer(a))


def is_positive(example: QAExample, corpus: Corpus, position: int) -> bool:
    """A gold passage of the example, or (for an example without gold passages) one that holds
    an answer."""
    passage = corpus[position]
    if example.gold:
        return passage.id in example.gold
    return has_answer(passage.full_text, example.answers)


Group = tuple[str, int, list[int]]
"""(question, corpus position of its positive, positions of its hard negatives)."""


def mine(
    examples: Sequence[QAExample],
    hits: Sequence[Hits],
    corpus: Corpus,
    config: RerankerConfig,
) -> list[Group]:
    """Per question: its positive and up to `negatives` hard negatives from the retriever's top
    `mine_depth` (best-ranked first); a question with no positive or no negative is skipped."""
    groups: list[Group] = []
    skipped = 0
    for example, ranked in zip(examples, hits, strict=True):
        top = [p for p, _ in ranked[: config.mine_depth]]
        gold = [corpus.position(g) for g in example.gold if g in corpus]
        positive = (
            gold[0] if gold else next((p for p in top if is_positive(example, corpus, p)), None)
        )
        negatives = [
            p
            for p in top
            if not is_positive(example, corpus, p)
            and not has_answer(corpus[p].full_text, example.answers)
        ]
        if positive is None or not negatives:
            skipped += 1
            continue
        groups.append((example.question, positive, negatives[: config.negatives]))
    if skipped:
        log.info("re-ranker: %d question(s) without a positive or a hard negative skipped", skipped)
    return groups


def mine_pairs(
    examples: Sequence[QAExample],
    hits: Sequence[Hits],
    corpus: Corpus,
    config: RerankerConfig,
) -> tuple[list[str], list[str], list[float]]:
    """(questions, passages, labels) training pairs of `mine`'s groups, in a seeded shuffle."""
    rows = [
        (question, corpus[position].full_text, label)
        for question, positive, negatives in mine(examples, hits, corpus, config)
        for position, label in [(positive, 1.0)] + [(p, 0.0) for p in negatives]
    ]
    random.Random(config.seed).shuffle(rows)
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def training_columns(
    examples: Sequence[QAExample],
    hits: Sequence[Hits],
    corpus: Corpus,
    config: RerankerConfig,
) -> dict[str, list[Any]]:
    """The trainer's data set columns for `config.loss`: bce, (query, passage, label) pairs;
    listwise, (query, positive, negative_1 .. negative_n) rows of the questions with all
    `negatives` hard negatives."""
    if config.loss == "bce":
        queries, passages, labels = mine_pairs(examples, hits, corpus, config)
        return {"query": queries, "passage": passages, "label": labels}
    groups = [g for g in mine(examples, hits, corpus, config) if len(g[2]) == config.negatives]
    random.Random(config.seed).shuffle(groups)
    columns: dict[str, list[Any]] = {
        "query": [q for q, _, _ in groups],
        "positive": [corpus[p].full_text for _, p, _ in groups],
    }
    for i in range(config.negatives):
        columns[f"negative_{i + 1}"] = [corpus[n[i]].full_text for _, _, n in groups]
    return columns


class Reranker:
    """A trained (or freshly initialised) cross-encoder over (question, passage) pairs.
    `fusion` is the k of the rank fusion with the retriever's order (0: none; None: the
    checkpoint's, see `RerankerConfig.fusion`)."""

    def __init__(
        self, model: Any, meta: dict[str, Any] | None = None, fusion: int | None = None
    ) -> None:
        self.model = model
        self.meta = meta or {}
        if fusion is None:
            fusion = int(self.meta.get("config", {}).get("fusion", RerankerConfig.fusion))
        self.fusion = check_fusion(fusion)

    def score(
        self, questions: Sequence[str], passages: Sequence[str], batch_size: int = 64
    ) -> list[float]:
        """The relevance logit of each (question, passage) pair, scored in batches."""
        if not questions:
            return []
        scores = self.model.predict(
            list(zip(questions, passages, strict=True)),
            batch_size=batch_size,
            show_progress_bar=False,
            activation_fn=torch.nn.Identity(),
        )
        return [float(s) for s in scores]

    def rerank(
        self,
        questions: Sequence[str],
        hits: Sequence[Hits],
        corpus: Corpus,
        depth: int,
        batch_size: int = 64,
    ) -> list[Hits]:
        """Each question's top `depth` retrieved passages in the re-ranker's order: its own
        ranking (`ranked`) fused with the retrieved order when `fusion` is set (the scores are
        then the fused ones); the passages beyond `depth` are dropped."""
        return self.fused(self.ranked(questions, hits, corpus, depth, batch_size), hits)

    def ranked(
        self,
        questions: Sequence[str],
        hits: Sequence[Hits],
        corpus: Corpus,
        depth: int,
        batch_size: int = 64,
    ) -> list[Hits]:
        """Each question's top `depth` retrieved passages sorted by the cross-encoder's logit
        alone, scored in batches across questions."""
        pairs = [
            (q, p) for q, ranked in zip(questions, hits, strict=True) for p, _ in ranked[:depth]
        ]
        out: list[Hits] = []
        step = batch_size * 8
        scores: list[float] = []
        with progress(total=len(pairs), desc="re-rank", unit="pair") as bar:
            for start in range(0, len(pairs), step):
                chunk = pairs[start : start + step]
                scores.extend(
                    self.score(
                        [q for q, _ in chunk], [corpus[p].full_text for _, p in chunk], batch_size
                    )
                )
                bar.update(len(chunk))
        at = 0
        for ranked in hits:
            mine = ranked[:depth]
            scored = [(p, scores[at + i]) for i, (p, _) in enumerate(mine)]
            at += len(mine)
            out.append(sorted(scored, key=lambda item: -item[1]))
        return out

    def fused(self, ranked: Sequence[Hits], hits: Sequence[Hits]) -> list[Hits]:
        """`ranked` (the cross-encoder's orders) fused with the retrieved orders `hits` over the
        same passages by reciprocal rank with k = `fusion`; `ranked` itself when `fusion` is 0."""
        if not self.fusion:
            return list(ranked)
        return [
            fuse([[own], [retrieved[: len(own)]]], len(own), self.fusion)[0]
            for own, retrieved in zip(ranked, hits, strict=True)
        ]


def new_model(config: RerankerConfig, device: str | torch.device = "cpu") -> Any:
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(
        config.init or default_encoder_path(),
        num_labels=1,
        max_length=config.max_length,
        device=str(device),
    )


def train_reranker(
    task: QATask,
    retriever: Retriever,
    config: RerankerConfig = RerankerConfig(),
    device: str | torch.device = "cpu",
) -> Reranker:
    """Mine hard negatives for the train questions with `retriever` and train a cross-encoder
    on them with sentence-transformers' CrossEncoderTrainer."""
    import tempfile

    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import (
        BinaryCrossEntropyLoss,
        MultipleNegativesRankingLoss,
    )

    examples = list(task.train[: config.questions or None])
    if not examples:
        raise ConfigError(f"QA task '{task.name}' has no train questions to train a re-ranker on")
    start = time.perf_counter()
    hits = retriever.search([e.question for e in examples], config.mine_depth)
    columns = training_columns(examples, hits, task.corpus, config)
    if not columns["query"]:
        raise ConfigError(
            f"no training pairs: none of the {len(examples)} train questions has both a positive "
            f"and a hard negative in the {retriever.name} retriever's top {config.mine_depth}"
        )
    mined = time.perf_counter() - start
    # the head is initialised and the trainer seeds every RNG: both inside a fork of them
    with seeded_rng(config.seed, device):
        model = new_model(config, device)
        data = Dataset.from_dict(columns)
        loss = (
            BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(config.negatives)))
            if config.loss == "bce"
            else MultipleNegativesRankingLoss(model, num_negatives=1)
        )
        with tempfile.TemporaryDirectory(prefix="frozenlm-reranker-") as scratch:
            args = CrossEncoderTrainingArguments(
                output_dir=scratch,
                num_train_epochs=config.epochs,
                per_device_train_batch_size=config.batch_size,
                learning_rate=config.lr,
                warmup_steps=0.1,  # a float is a share of the steps
                save_strategy="no",
                report_to="none",
                logging_steps=max(1, len(columns["query"]) // config.batch_size // 10),
                seed=config.seed,
                data_seed=config.seed,
                use_cpu=torch.device(device).type == "cpu",
                dataloader_num_workers=0,
                disable_tqdm=False,
            )
            trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)
            result = trainer.train()
            losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    seconds = {"mine": round(mined, 2), "train": round(time.perf_counter() - start - mined, 2)}
    meta: dict[str, Any] = {
        "config": asdict(config),
        "task": task.name,
        "split_hash": task.split_hash(),
        "corpus_fingerprint": task.corpus.fingerprint,
        "mined_with": retriever.name,
        "rows": len(columns["query"]),
        "pairs": len(columns["query"]) * (len(columns) - 1 if config.loss == "listwise" else 1),
        "questions": len(examples),
        "train_loss": float(result.training_loss),
        "loss_history": losses,
        "seconds": seconds,
    }
    log.info("re-ranker trained on %d rows in %.0f s", len(columns["query"]), seconds["train"])
    return Reranker(model, meta)


def save_reranker(reranker: Reranker, folder: str | Path) -> None:
    """Write the re-ranker as `folder` (the model's safetensors folder and `reranker.json`,
    last), atomically."""

    def build(tmp: Path) -> None:
        reranker.model.save_pretrained(str(tmp), safe_serialization=True)
        pickled = [p.name for p in tmp.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
        if pickled:
            raise CheckpointError(f"the re-ranker save wrote pickled files {pickled}; refusing")
        (tmp / MARKER).write_text(json.dumps(reranker.meta, indent=2) + "\n")

    build_folder(folder, build, marker=MARKER)


def load_reranker(
    folder: str | Path,
    corpus: Corpus | None = None,
    device: str | torch.device = "cpu",
    fusion: int | None = None,
) -> Reranker:
    """The re-ranker in `folder` (`fusion`: None keeps the checkpoint's); CheckpointError when
    it is not one, is incomplete, or (with `corpus`) was trained on another corpus (a warning
    only: a re-ranker transfers, but its numbers are then not the ones recorded)."""
    from sentence_transformers.cross_encoder import CrossEncoder

    folder = Path(folder)
    if not (folder / MARKER).is_file():
        raise CheckpointError(
            f"'{folder}' is not a frozenlm re-ranker (no {MARKER}); train one with "
            "`frozenlm qa train-reranker`"
        )
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"the re-ranker '{folder}' has no model.safetensors")
    try:
        meta = json.loads((folder / MARKER).read_text())
        config = meta["config"]
        model = CrossEncoder(
            str(folder), num_labels=1, max_length=int(config["max_length"]), device=str(device)
        )
    except (json.JSONDecodeError, KeyError, TypeError, OSError, ValueError) as error:
        raise CheckpointError(f"the re-ranker '{folder}' cannot be loaded: {error}") from None
    if corpus is not None and meta.get("corpus_fingerprint") != corpus.fingerprint:
        log.warning(
            "the re-ranker '%s' was trained on another corpus (%s, this one %s)",
            folder,
            meta.get("corpus_fingerprint"),
            corpus.fingerprint,
        )
    return Reranker(model, meta, fusion)
