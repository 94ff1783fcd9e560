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
