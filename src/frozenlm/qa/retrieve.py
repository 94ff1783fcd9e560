"""Retrievers over a QA corpus: BM25 (bm25s), dense (all-MiniLM-L6-v2, exact search over a
normalised matrix) and hybrid (reciprocal-rank fusion of the two).

An index is a folder built once and written atomically: `index.json` (what was built, for which
corpus fingerprint, with which settings and how long it took), `bm25/` (bm25s' own JSON + .npy
files, saved and loaded without pickle) and `dense.safetensors` (the passage embeddings).
Loading it for a corpus with another fingerprint is refused. Every retriever returns, per
question, the corpus positions of its top k passages, best first, with their scores.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from frozenlm.atomic import build_folder
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.progress import progress
from frozenlm.prompts.demos import default_encoder_path
from frozenlm.qa.data import Corpus

log = logging.getLogger(__name__)

MARKER = "index.json"
FORMAT = 1
RETRIEVERS = ("bm25", "dense", "hybrid")
PARTS = ("bm25", "dense")

Hits = list[tuple[int, float]]
"""One question's retrieved passages: (corpus position, score), best first."""


@dataclass(frozen=True)
class IndexConfig:
    """How an index is built."""

    parts: tuple[str, ...] = PARTS
    """Which retrievers to build: "bm25", "dense" or both (hybrid needs both)."""
    k1: float = 1.5
    """BM25 term-frequency saturation (bm25s' default, Robertson et al.)."""
    b: float = 0.75
    """BM25 length normalisation (bm25s' default)."""
    stemmer: str = "english"
    """Snowball stemmer language (PyStemmer) for BM25's tokens; "" for none."""
    stopwords: str = "en"
    """bm25s' stop-word list; "" for none."""
    encoder: str = ""
    """Dense encoder folder (a sentence-transformers model); "" is the packaged
    all-MiniLM-L6-v2. Note it was trained on data that includes Natural Questions."""
    batch_size: int = 64
    """Passages per encoder batch."""
    rrf_k: int = 60
    """Reciprocal-rank fusion constant (Cormack et al. 2009)."""

    def __post_init__(self) -> None:
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise ConfigError(
                f"unknown index part(s) {', '.join(unknown) or '(none)'}; expected some of "
                f"{', '.join(PARTS)}"
            )


class Retriever(Protocol):
    """Anything that ranks the corpus for questions."""

    name: str

    def search(self, questions: Sequence[str], k: int) -> list[Hits]:
        """Per question, the top `k` passages, best first."""
        ...


def _stemmer(config: IndexConfig) -> Any:
    if not config.stemmer:
        return None
    import Stemmer

    return Stemmer.Stemmer(config.stemmer)


def _bm25_tokens(texts: Sequence[str], config: IndexConfig, *, ids: bool) -> Any:
    """bm25s' tokens of `texts`: a Tokenized (ids and vocabulary) or lists of words."""
    import bm25s

    return bm25s.tokenize(
        list(texts),
        stopwords=config.stopwords or [],
        stemmer=_stemmer(config),
        return_ids=ids,
        show_progress=False,
    )


class BM25:
    """Okapi BM25 over the corpus with bm25s."""

    name = "bm25"

    def __init__(self, model: Any, config: IndexConfig, size: int) -> None:
        self.model, self.config, self.size = model, config, size

    @classmethod
    def build(cls, corpus: Corpus, config: IndexConfig) -> BM25:
        import bm25s

        model = bm25s.BM25(k1=config.k1, b=config.b)
        model.index(_bm25_tokens(corpus.texts(), config, ids=True), show_progress=False)
        return cls(model, config, len(corpus))

    def save(self, folder: Path) -> None:
        self.model.save(str(folder), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, config: IndexConfig, size: int) -> BM25:
        import bm25s

        return cls(bm25s.BM25.load(str(folder), allow_pickle=False), config, size)

    def search(self, questions: Sequence[str], k: int) -> list[Hits]:
        k = min(k, self.size)
        words = _bm25_tokens(questions, self.config, ids=False)
        out: list[Hits] = []
        for start in range(0, len(words), 256):
            chunk = words[start : start + 256]
            # words the corpus never has score nothing; a question of only such words gets no hits
            known = [[w for w in q if w in self.model.vocab_dict] for q in chunk]
            if not any(known):
                out.extend([] for _ in chunk)
                continue
            docs, scores = self.model.retrieve(
                [q or [next(iter(self.model.vocab_dict))] for q in known],
                k=k,
                show_progress=False,
            )
            for q, row_docs, row_scores in zip(known, docs, scores, strict=True):
                pairs = zip(row_docs.tolist(), row_scores.tolist(), strict=True)
                out.append([(int(d), float(s)) for d, s in pairs] if q else [])
        return out


def load_encoder(path: str, device: str | torch.device = "cpu") -> Any:
    """The sentence-transformers encoder at `path` ("" is the packaged all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path or default_encoder_path(), device=str(device))


class Dense:
    """Exact inner-product search over L2-normalised sentence embeddings (cosine similarity)."""

    name = "dense"

    def __init__(self, matrix: torch.Tensor, encoder: Any, config: IndexConfig) -> None:
        self.matrix = matrix  # [N, D], rows of unit length
        self.encoder = encoder
        self.config = config

    @classmethod
    def build(cls, corpus: Corpus, config: IndexConfig, encoder: Any) -> Dense:
        texts = corpus.texts()
        chunks = []
        step = config.batch_size * 16
        with progress(total=len(texts), desc="embed passages", unit="passage") as bar:
            for start in range(0, len(texts), step):
                chunks.append(_embed(encoder, texts[start : start + step], config.batch_size))
                bar.update(len(texts[start : start + step]))
        return cls(torch.cat(chunks).contiguous(), encoder, config)

    def save(self, path: Path) -> None:
        save_file({"embeddings": self.matrix.cpu()}, str(path))

    def search(self, questions: Sequence[str], k: int) -> list[Hits]:
        k = min(k, self.matrix.shape[0])
        out: list[Hits] = []
        for start in range(0, len(questions), 256):
            query = _embed(self.encoder, questions[start : start + 256], self.config.batch_size)
            scores = query.to(self.matrix.device) @ self.matrix.T  # [Q, N]
            top = scores.topk(k, dim=1)
            for idx, val in zip(top.indices.tolist(), top.values.tolist(), strict=True):
                out.append([(int(i), float(v)) for i, v in zip(idx, val, strict=True)])
        return out


def _embed(encoder: Any, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    vectors = encoder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_tensor=True,
        show_progress_bar=False,
    )
    return vectors.float().cpu()  # [n, D]


def fuse(rankings: Sequence[Sequence[Hits]], k: int, rrf_k: int = 60) -> list[Hits]:
    """Reciprocal-rank fusion: each passage scores sum(1 / (rrf_k + rank)) over the rankings
    (rank 1 is the best); ties keep the order of first appearance."""
    out: list[Hits] = []
    for per_question in zip(*rankings, strict=True):
        scores: dict[int, float] = {}
        for hits in per_question:
            for rank, (position, _) in enumerate(hits, start=1):
                scores[position] = scores.get(position, 0.0) + 1.0 / (rrf_k + rank)
        best = sorted(scores.items(), key=lambda item: -item[1])[:k]
        out.append(best)
    return out


class Hybrid:
    """BM25 and dense, fused by reciprocal rank over each one's top `depth`."""

    name = "hybrid"

    def __init__(self, bm25: BM25, dense: Dense, rrf_k: int, depth: int = 100) -> None:
        self.bm25, self.dense, self.rrf_k, self.depth = bm25, dense, rrf_k, depth

    def search(self, questions: Sequence[str], k: int) -> list[Hits]:
        depth = max(k, self.depth)
        both = [self.bm25.search(questions, depth), self.dense.search(questions, depth)]
        return fuse(both, k, self.rrf_k)


@dataclass
class Index:
    """The retrievers built for one corpus."""

    corpus: Corpus
    config: IndexConfig
    bm25: BM25 | None = None
    dense: Dense | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def check_serves(self, corpus: Corpus, task: str) -> None:
        """ConfigError unless this index was built for `corpus` (that of the QA task `task`)."""
        if self.corpus.fingerprint != corpus.fingerprint:
            raise ConfigError(f"the index was built for another corpus than task '{task}'s")

    def retriever(self, name: str) -> Retriever:
        """ "bm25", "dense" or "hybrid"; ConfigError naming the missing part."""
        if name not in RETRIEVERS:
            raise ConfigError(
                f"unknown retriever '{name}'; expected one of {', '.join(RETRIEVERS)}"
            )
        needed = PARTS if name == "hybrid" else (name,)
        missing = [p for p in needed if getattr(self, p) is None]
        if missing:
            raise ConfigError(
                f"the retriever '{name}' needs the {' and '.join(missing)} part of the index, "
                f"which was not built; build it with `frozenlm qa index --parts "
                f"{','.join(PARTS)}`"
            )
        if name == "hybrid":
            assert self.bm25 is not None and self.dense is not None
            return Hybrid(self.bm25, self.dense, self.config.rrf_k)
        part = self.bm25 if name == "bm25" else self.dense
        assert part is not None
        return part


def build_index(
    corpus: Corpus, config: IndexConfig = IndexConfig(), device: str | torch.device = "cpu"
) -> Index:
    """Build the index's parts for `corpus` (BM25 ~20 s, dense ~3 min on 2 CPU cores for the
    ~24k passages of `nq`)."""
    index = Index(corpus=corpus, config=config)
    if "bm25" in config.parts:
        start = time.perf_counter()
        index.bm25 = BM25.build(corpus, config)
        index.seconds["bm25"] = time.perf_counter() - start
    if "dense" in config.parts:
        start = time.perf_counter()
        index.dense = Dense.build(corpus, config, load_encoder(config.encoder, device))
        index.seconds["dense"] = time.perf_counter() - start
    return index


def save_index(index: Index, folder: str | Path) -> None:
    """Write `index` as `folder`, atomically (`index.json` last)."""

    def build(tmp: Path) -> None:
        if index.bm25 is not None:
            (tmp / "bm25").mkdir()
            index.bm25.save(tmp / "bm25")
        if index.dense is not None:
            index.dense.save(tmp / "dense.safetensors")
        meta = {
            "format": FORMAT,
            "corpus_fingerprint": index.corpus.fingerprint,
            "passages": len(index.corpus),
            "config": {**asdict(index.config), "parts": list(index.config.parts)},
            "seconds": {k: round(v, 2) for k, v in index.seconds.items()},
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")

    build_folder(folder, build, marker=MARKER)


def load_index(folder: str | Path, corpus: Corpus, device: str | torch.device = "cpu") -> Index:
    """The index in `folder`, refused (CheckpointError) when it was built for another corpus or
    is incomplete."""
    folder = Path(folder)
    if not (folder / MARKER).is_file():
        raise CheckpointError(
            f"'{folder}' is not a frozenlm QA index (no {MARKER}); build one with "
            "`frozenlm qa index`"
        )
    try:
        meta = json.loads((folder / MARKER).read_text())
        config_json = dict(meta["config"])
        config_json["parts"] = tuple(config_json["parts"])
        config = IndexConfig(**config_json)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{folder / MARKER} is malformed: {error}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"the index '{folder}' has format {meta.get('format')}, not {FORMAT}")
    if meta.get("corpus_fingerprint") != corpus.fingerprint:
        raise CheckpointError(
            f"the index '{folder}' was built for another corpus (fingerprint "
            f"{meta.get('corpus_fingerprint')}, {meta.get('passages')} passages), not this one "
            f"({corpus.fingerprint}, {len(corpus)} passages); rebuild it with `frozenlm qa index`"
        )
    index = Index(corpus=corpus, config=config, seconds=dict(meta.get("seconds", {})))
    try:
        if "bm25" in config.parts:
            index.bm25 = BM25.load(folder / "bm25", config, len(corpus))
        if "dense" in config.parts:
            matrix = load_file(str(folder / "dense.safetensors"))["embeddings"]
            if matrix.shape[0] != len(corpus):
                raise CheckpointError(
                    f"the index '{folder}' holds {matrix.shape[0]} passage embeddings for a "
                    f"corpus of {len(corpus)}"
                )
            index.dense = Dense(matrix, load_encoder(config.encoder, device), config)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"the index '{folder}' is incomplete or corrupted: {error}") from None
    return index
