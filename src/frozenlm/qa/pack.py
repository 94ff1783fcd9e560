"""Packing: passages join the reader's context greedily, in ranking order, while the whole
prompt (instruction, demonstrations, passages, question) still leaves the answer slot free.

The question and the answer slot are never cut: `fits` is the reader's own check of a complete
rendered prompt. When not even the first passage fits whole, it is cut word-wise to the longest
prefix that fits (so a long user passage still informs the answer); later passages are never cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

PASSAGE_FORMAT = "Passage: {text}\n"
"""How one passage is shown to the reader."""


@dataclass(frozen=True)
class Packed:
    """A reader context: the passages kept, in order."""

    context: str
    """The passages as the reader sees them ("" with none)."""
    positions: tuple[int, ...]
    """Corpus positions of the kept passages."""
    cut: bool = False
    """The first passage was cut to fit (no passage fitted whole)."""


def format_passages(texts: Sequence[str], best_last: bool = False) -> str:
    """The passages as the reader sees them, best first (or, with `best_last`, best right
    before the question)."""
    ordered = list(texts)[::-1] if best_last else texts
    return "".join(PASSAGE_FORMAT.format(text=t) for t in ordered)


def pack(
    candidates: Sequence[tuple[int, str]],
    fits: Callable[[str], bool],
    *,
    max_passages: int | None = None,
    best_last: bool = False,
) -> Packed:
    """Greedy packing of `candidates` ((corpus position, passage text), best first): each passage
    is added while `fits(context)` holds for the context with it, stopping at the first that
    does not fit (or after `max_passages`). The kept passages are shown best first, or with
    `best_last` in reverse (the best right before the question)."""
    kept: list[tuple[int, str]] = []
    for position, text in candidates:
        if max_passages is not None and len(kept) >= max_passages:
            break
        trial = format_passages([t for _, t in kept] + [text], best_last)
        if not fits(trial):
            break
        kept.append((position, text))
    if kept or not candidates or max_passages == 0:
        return Packed(format_passages([t for _, t in kept], best_last), tuple(p for p, _ in kept))
    position, text = candidates[0]
    words = text.split()
    low, high = 0, len(words)  # the longest fitting prefix has `low` words
    while low < high:
        middle = (low + high + 1) // 2
        if fits(format_passages([" ".join(words[:middle])])):
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return Packed("", ())
    return Packed(format_passages([" ".join(words[:low])]), (position,), cut=True)
