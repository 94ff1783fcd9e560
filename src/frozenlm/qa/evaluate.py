"""`frozenlm qa eval`: every stage of the open-domain QA pipeline measured against the ones
before it, with bootstrap intervals.

1. Retrieval recall@k on the whole split, per retriever: the answer occurs in a top-k passage
   (SQuAD-normalised whole words) and the gold passage is among the top k.
2. Re-ranking (the first `limit` questions): the same recalls after the re-ranker re-orders the
   chosen retriever's top `rerank_depth`.
3. Packing: how many passages fit the reader's budget, and how often the packed context holds
   the answer / the gold passage, without and with the re-ranker.
4. Reading: exact match and token F1 of the frozen reader per context: closed book, retriever
   order, re-ranked, the gold passage alone (the ceiling), and bigbench's counterfactual passage
   (scored against the swapped-in entity: does the reader read, or answer from memory?).
`evaluate_qa` is pure: a report out; the caller writes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError, DataError
from frozenlm.evaluation.evaluate import evaluate
from frozenlm.metrics import Interval, bootstrap, exact_match
from frozenlm.plugins.protocol import Plugin
from frozenlm.qa.data import Corpus, QAExample, QATask
from frozenlm.qa.pack import Packed
from frozenlm.qa.reader import CONTEXTS, ContextPacker, ReaderConfig, reader_task
from frozenlm.qa.rerank import Reranker, has_answer
from frozenlm.qa.retrieve import RETRIEVERS, Hits, Index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QAEvalConfig:
    """What `evaluate_qa` measures."""

    split: str = "test"
    limit: int | None = 200
    """Questions re-ranked and read: the split's first this many (None: all). Retrieval recall
    is measured on the whole split."""
    retrievers: tuple[str, ...] = RETRIEVERS
    """Retrievers whose recall is measured (each needs its part of the index)."""
    ks: tuple[int, ...] = (1, 5, 20, 100)
    retriever: str = "hybrid"
    """The order packed without the re-ranker, and the candidates the re-ranker re-orders."""
    rerank_depth: int = 20
    """Passages per question the re-ranker scores."""
    contexts: tuple[str, ...] = ("closed", "retrieved", "reranked", "gold")
    """What the reader reads (see the module docstring); "counterfactual" needs `nq`; none:
    retrieval (and, with a re-ranker, re-ranking) only."""
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.contexts if c not in CONTEXTS]
        if unknown:
            raise ConfigError(
                f"unknown reader context(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(CONTEXTS)}"
            )
        for name in (*self.retrievers, self.retriever):
            if name not in RETRIEVERS:
                raise ConfigError(
                    f"unknown retriever '{name}'; expected one of {', '.join(RETRIEVERS)}"
                )
        if any(k < 1 for k in self.ks) or self.rerank_depth < 1:
            raise ConfigError("ks and rerank_depth must be positive numbers of passages")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be a positive number of questions, got {self.limit}")


@dataclass
class QAReport:
    """What `frozenlm qa eval --out` writes."""

    task: str
    backbone: str
    fingerprint: str
    split: str
    corpus: dict[str, Any]
    n_retrieval: int
    n_read: int
    retrieval: dict[str, dict[str, Interval]] = field(default_factory=dict)
    reranked: dict[str, Interval] = field(default_factory=dict)
    packing: dict[str, dict[str, Any]] = field(default_factory=dict)
    reader: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Interval):
                return value.to_json()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return {k: plain(v) for k, v in asdict(self).items()} | {
            "retrieval": plain(self.retrieval),
            "reranked": plain(self.reranked),
            "packing": plain(self.packing),
            "reader": plain(self.reader),
        }

    def headline(self) -> str:
        lines = [
            f"{self.task} · {self.split} · {self.backbone} · corpus {self.corpus['passages']:,} "
            f"passages (retrieval on {self.n_retrieval} questions, reading on {self.n_read})"
        ]
        for name, metrics in self.retrieval.items():
            cells = ", ".join(f"{k} {v.value:.3f}" for k, v in metrics.items())
            lines.append(f"  {name}: {cells}")
        if self.reranked:
            cells = ", ".join(f"{k} {v.value:.3f}" for k, v in self.reranked.items())
            lines.append(f"  re-ranked: {cells}")
        for name, stats in self.packing.items():
            lines.append(
                f"  packed {name}: {stats['passages']:.2f} passages, answer in context "
                f"{stats['answer_in_context']}"
            )
        for name, metrics in self.reader.items():
            extra = "".join(
                f", {k} {metrics[k]}" for k in ("from_passage", "from_memory") if k in metrics
            )
            lines.append(f"  reader {name}: EM {metrics['exact_match']}, F1 {metrics['f1']}{extra}")
        lines.append("  " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def recall_at(
    examples: Sequence[QAExample],
    hits: Sequence[Hits],
    corpus: Corpus,
    ks: Sequence[int],
    seed: int = 0,
) -> dict[str, Interval]:
    """answer@k (an answer occurs in a top-k passage) and gold@k (a gold passage is in the top
    k; only over questions with gold passages) for each k."""
    out: dict[str, Interval] = {}
    found = [
        [has_answer(corpus[p].full_text, e.answers) for p, _ in h]
        for e, h in zip(examples, hits, strict=True)
    ]
    golds = [
        [corpus[p].id in e.gold for p, _ in h]
        for e, h in zip(examples, hits, strict=True)
        if e.gold
    ]
    for k in ks:
        out[f"answer@{k}"] = bootstrap([float(any(f[:k])) for f in found], seed=seed)
    if golds:
        for k in ks:
            out[f"gold@{k}"] = bootstrap([float(any(g[:k])) for g in golds], seed=seed)
    return out


def packing_stats(
    examples: Sequence[QAExample], packed: Sequence[Packed], corpus: Corpus, seed: int = 0
) -> dict[str, Any]:
    counts = [len(p.positions) for p in packed]
    gold = [
        float(any(corpus[i].id in e.gold for i in p.positions if i >= 0))
        for e, p in zip(examples, packed, strict=True)
        if e.gold
    ]
    return {
        "passages": sum(counts) / max(1, len(counts)),
        "min_passages": min(counts, default=0),
        "max_passages": max(counts, default=0),
        "cut": sum(p.cut for p in packed),
        "answer_in_context": bootstrap(
            [
                float(has_answer(p.context, e.answers))
                for e, p in zip(examples, packed, strict=True)
            ],
            seed=seed,
        ),
        **({"gold_in_context": bootstrap(gold, seed=seed)} if gold else {}),
    }


def evaluate_qa(
    backbone: Backbone,
    task: QATask,
    index: Index,
    reranker: Reranker | None = None,
    config: QAEvalConfig = QAEvalConfig(),
    plugin: Plugin | None = None,
) -> QAReport:
    """Measure retrieval, re-ranking, packing and reading on `config.split` (see the module
    docstring). `plugin` (e.g. a soft prompt trained to read) conditions the reader."""
    index.check_serves(task.corpus, task.name)
    everything = list(task.split(config.split))
    if not everything:
        raise DataError(f"QA task '{task.name}' has no questions in its {config.split} split")
    read = everything[: config.limit]
    corpus = task.corpus
    needs_rerank = "reranked" in config.contexts
    if needs_rerank and reranker is None:
        raise ConfigError("the 'reranked' context needs a re-ranker (--reranker DIR)")
    if "counterfactual" in config.contexts and not all("swapped_context" in e.extra for e in read):
        raise ConfigError(
            "the 'counterfactual' context needs bigbench's swapped passages, which only the "
            "built-in nq has"
        )
    report = QAReport(
        task=task.name,
        backbone=backbone.name,
        fingerprint=backbone.fingerprint,
        split=config.split,
        corpus={"passages": len(corpus), "fingerprint": corpus.fingerprint},
        n_retrieval=len(everything),
        n_read=len(read),
        config=asdict(config),
    )
    depth = max(max(config.ks), config.rerank_depth)
    questions = [e.question for e in everything]
    main_hits: list[Hits] = []
    for name in dict.fromkeys((*config.retrievers, config.retriever)):
        start = time.perf_counter()
        hits = index.retriever(name).search(questions, depth)
        report.seconds[f"retrieve {name}"] = time.perf_counter() - start
        if name in config.retrievers:
            report.retrieval[name] = recall_at(everything, hits, corpus, config.ks, config.seed)
        if name == config.retriever:
            main_hits = hits[: len(read)]
    reranked: list[Hits] = []
    if reranker is not None:  # re-ranking recall is measured whenever there is a re-ranker
        start = time.perf_counter()
        alone = reranker.ranked([e.question for e in read], main_hits, corpus, config.rerank_depth)
        reranked = reranker.fused(alone, main_hits)
        report.seconds["rerank"] = time.perf_counter() - start
        ks = [k for k in config.ks if k <= config.rerank_depth]
        report.reranked = recall_at(read, reranked, corpus, ks, config.seed)
        before = recall_at(read, main_hits, corpus, ks, config.seed)
        report.reranked |= {f"{k} before": v for k, v in before.items()}
        if reranker.fusion:
            by_itself = recall_at(read, alone, corpus, ks, config.seed)
            report.reranked |= {f"{k} alone": v for k, v in by_itself.items()}
        report.config["fusion"] = reranker.fusion
    for context in config.contexts:
        _read(backbone, task, read, context, main_hits, reranked, config, plugin, report)
    return report


def _read(
    backbone: Backbone,
    task: QATask,
    examples: Sequence[QAExample],
    context: str,
    retrieved: Sequence[Hits],
    reranked: Sequence[Hits],
    config: QAEvalConfig,
    plugin: Plugin | None,
    report: QAReport,
) -> None:
    """Pack one kind of context for every question and let the reader answer."""
    corpus = task.corpus
    start = time.perf_counter()
    answers: list[tuple[str, ...]] | None = None
    demo_task = reader_task(task, [], [], context=context)
    packer = ContextPacker(backbone, demo_task, config.reader)
    if context == "closed":
        packed = [Packed("", ()) for _ in examples]
    elif context in ("retrieved", "reranked"):
        source = retrieved if context == "retrieved" else reranked
        packed = [
            packer.pack(e, [p for p, _ in h], corpus) for e, h in zip(examples, source, strict=True)
        ]
    elif context == "gold":
        packed = [
            packer.pack(e, [corpus.position(g) for g in e.gold if g in corpus], corpus)
            for e in examples
        ]
    else:  # counterfactual: the swapped passage as bigbench published it
        packed = []
        for e in examples:
            text = e.extra["swapped_context"]
            packed.append(packer.pack(e, [], corpus) if not text else _pack_text(packer, e, text))
        answers = [(e.extra["swapped_answer"],) for e in examples]
    pack_seconds = time.perf_counter() - start
    if context != "closed":
        report.packing[context] = packing_stats(examples, packed, corpus, config.seed)
        if context == "counterfactual":  # the swapped passage is not the corpus' gold one
            report.packing[context].pop("gold_in_context", None)
            report.packing[context]["answer_in_context"] = bootstrap(
                [
                    float(has_answer(p.context, a))
                    for p, a in zip(packed, answers or [], strict=True)
                ],
                seed=config.seed,
            )
    task_for_reading = reader_task(
        task, examples, [p.context for p in packed], context=context, answers=answers
    )
    result = evaluate(backbone, task_for_reading, config.reader.eval_config(), plugin)
    metrics: dict[str, Any] = {
        "exact_match": result.metrics["exact_match"],
        "f1": result.metrics["f1"],
        "questions_per_s": result.examples_per_s,
        "mean_prompt_tokens": result.prompt_stats.get("mean_prompt_tokens", 0.0),
        "truncated_inputs": result.prompt_stats.get("truncated_inputs", 0),
    }
    if context == "counterfactual":
        predicted = [row["answer"] for row in result.predictions]
        swapped = [a[0] for a in answers or []]
        metrics["from_passage"] = bootstrap(
            [float(has_answer(p, [s])) for p, s in zip(predicted, swapped, strict=True)],
            seed=config.seed,
        )
        metrics["from_memory"] = bootstrap(
            [
                float(has_answer(p, e.answers) and not has_answer(p, [s]))
                for p, s, e in zip(predicted, swapped, examples, strict=True)
            ],
            seed=config.seed,
        )
        metrics["exact_match_original"] = bootstrap(
            [exact_match(p, e.answers) for p, e in zip(predicted, examples, strict=True)],
            seed=config.seed,
        )
    report.reader[context] = metrics
    report.seconds[f"read {context}"] = time.perf_counter() - start
    report.seconds[f"pack {context}"] = pack_seconds
    report.predictions[context] = [
        {**row, "passages": [corpus[i].id if i >= 0 else "counterfactual" for i in p.positions]}
        for row, p in zip(result.predictions, packed, strict=True)
    ]


def _pack_text(packer: ContextPacker, example: QAExample, text: str) -> Packed:
    """Pack one passage given as text (not in the corpus; position -1)."""
    from frozenlm.qa.pack import pack

    return pack([(-1, text)], packer.fits_for(example))
