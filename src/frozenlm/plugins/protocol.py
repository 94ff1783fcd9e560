"""The plug-in protocol: everything a caller may use of a plug-in, declared in one place.

A plug-in is a small `nn.Module` that conditions the frozen backbone for a task's rows: each
row's `Conditioning` is soft tokens [P, D] placed in its prompt (a soft prompt ignores the
input, an input-dependent generator (ID-PT) reads it) and/or a per-layer key/value prefix before
everything (a deep prompt); a fine-tuned copy's weights carry the task and add neither. What is
optional is an explicit attribute, never a `getattr` probe: `reads_input` says whether rows of
one task may share one conditioning (then its keys and values are computed once),
`serves_any_task` whether it may be asked about a task it was not trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch
from torch import nn

from frozenlm.engine.batching import Row
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.tasks import Example, TaskSpec


class SoftPosition(StrEnum):
    """Where a plug-in's soft tokens sit in a row's prompt."""

    START = "start"
    """Before everything (Lester et al. 2021), so before the chat template's first token."""
    AFTER_FIRST = "after-first"
    """After the prompt's first token (the chat template's first token, or the BOS): that
    token keeps its place at position 0, where models of this kind park attention (a sink)."""
    INPUT = "input"
    """Right before the input: after the instruction and everything else every prompt of the
    task starts with (which is then computed once for all rows, soft tokens included)."""


@dataclass(frozen=True)
class Conditioning:
    """What a plug-in adds to one row: soft tokens at `position` and/or a key/value prefix."""

    soft: torch.Tensor | None = None
    """Soft tokens [P, D] (fp32 or the backbone's dtype); rows that share them get the same
    tensor object."""
    kv: PrefixCache | None = None
    """A single-row per-layer key/value prefix before everything (a deep prompt)."""
    position: SoftPosition = SoftPosition.START
    """Where `soft` goes."""

    def row(self, ids: Sequence[int], input_start: int) -> Row:
        """The engine row of a prompt `ids` whose input begins at token `input_start`."""
        if self.soft is None or self.position is SoftPosition.START:
            at = 0
        elif self.position is SoftPosition.AFTER_FIRST:
            at = min(1, len(ids))
        else:
            at = input_start
        return Row(ids, self.soft, self.kv, soft_at=at)

    def detached(self) -> Conditioning:
        soft = None if self.soft is None else self.soft.detach()
        kv = None if self.kv is None else self.kv.detached()
        return Conditioning(soft, kv, self.position)


NONE = Conditioning()
"""No conditioning (prompt design, a fine-tuned copy)."""


class Plugin(Protocol):
    """A trainable source of conditioning for the frozen backbone (an `nn.Module`)."""

    @property
    def method(self) -> str:
        """Its name in the registry ("soft-prompt", "id-pt") or the baseline's ("lora",
        "full-ft"); checkpoints store it under "kind"."""
        ...

    @property
    def reads_input(self) -> bool:
        """False: every example of a task gets the same soft tokens (a soft prompt), so
        evaluation and training compute their keys and values once for all rows."""
        ...

    @property
    def serves_any_task(self) -> bool:
        """True: it may condition a task it was not trained on (a shared prompt, a generator
        that reads the instruction)."""
        ...

    def condition(self, task: TaskSpec, examples: Sequence[Example]) -> list[Conditioning]:
        """One `Conditioning` per example of `task`. Rows that share conditioning get the same
        tensors (the same objects)."""
        ...

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups for a base learning rate `lr` (parts may learn at
        different rates)."""
        ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights to store in a checkpoint (detached copies)."""
        ...

    def num_trainable(self) -> int:
        """Parameters that require grad."""
        ...

    # The nn.Module members the training loop and the loaders use.
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def requires_grad_(self, requires_grad: bool = True) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def single_group(plugin: nn.Module, lr: float) -> list[dict[str, Any]]:
    """One optimizer group of every trainable parameter at `lr` (for `param_groups`)."""
    return [{"params": [p for p in plugin.parameters() if p.requires_grad], "lr": lr}]


def count_trainable(plugin: nn.Module) -> int:
    """Parameters of `plugin` that require grad (for `num_trainable`)."""
    return sum(p.numel() for p in plugin.parameters() if p.requires_grad)


def conditioning_by_row(
    rows: Sequence[tuple[Plugin, TaskSpec, Example]],
) -> list[Conditioning]:
    """Each row's conditioning from its own plug-in, asking each plug-in once per task in the
    batch (a generator then writes a whole group's prompts in one forward; a plug-in that does
    not read the input gives every row of the task the same tensors). Gradients flow as the
    caller's grad mode allows."""
    out: list[Conditioning | None] = [None] * len(rows)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (plugin, spec, _) in enumerate(rows):
        groups.setdefault((id(plugin), spec.name), []).append(i)
    for index in groups.values():
        plugin, spec, first = rows[index[0]]
        if plugin.reads_input:
            made = plugin.condition(spec, [rows[i][2] for i in index])
        else:  # one object for every row of the task: the engine then computes it once
            made = plugin.condition(spec, [first]) * len(index)
        for i, conditioning in zip(index, made, strict=True):
            out[i] = conditioning
    return [c for c in out if c is not None]


def inference_conditioning(
    rows: Sequence[tuple[Plugin, TaskSpec, Example]],
) -> list[Conditioning]:
    """`conditioning_by_row` without gradients, detached; rows that shared tensors still do."""
    with torch.no_grad():
        made = conditioning_by_row(rows)
    seen: dict[int, Conditioning] = {}
    return [seen.setdefault(id(c), c.detached()) for c in made]
