"""Plug-ins that condition the frozen backbone with soft tokens.

Any object with `kind` and `soft_tokens(task, examples)` can be evaluated and served: a soft
prompt ignores the input, an input-dependent generator reads it. Rows of one batch may come from
different plug-ins or tasks; `splice` joins them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from frozenlm.tasks import Example, TaskSpec


class SoftTokenSource(Protocol):
    """Emits the soft tokens [P, D] that precede each example's prompt."""

    kind: str

    def soft_tokens(self, task: TaskSpec, examples: Sequence[Example]) -> list[torch.Tensor]:
        """One [P_b, D] tensor per example of `task` (P_b may differ between rows)."""
        ...


def soft_tokens_by_row(
    rows: Sequence[tuple[SoftTokenSource, TaskSpec, Example]],
) -> list[torch.Tensor]:
    """Each row's soft tokens from its own plug-in, asking each plug-in once per task in the
    batch (a generator then writes a whole group's prompts in one forward). Gradients flow as
    the caller's grad mode allows."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (plugin, spec, _) in enumerate(rows):
        groups.setdefault((id(plugin), spec.name), []).append(i)
    for index in groups.values():
        plugin, spec, _ = rows[index[0]]
        tokens = plugin.soft_tokens(spec, [rows[i][2] for i in index])
        for i, row_tokens in zip(index, tokens, strict=True):
            out[i] = row_tokens
    return [t for t in out if t is not None]
