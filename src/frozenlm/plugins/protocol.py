"""The plug-in protocol: everything a caller may use of a plug-in, declared in one place.

A plug-in is a small `nn.Module` that conditions the frozen backbone for a task's rows. Today's
plug-ins emit soft tokens [P, D] before each row's prompt: a soft prompt ignores the input, an
input-dependent generator (ID-PT) reads it, a fine-tuned copy's weights carry the task and emit
none. What is optional is an explicit attribute, never a `getattr` probe: `reads_input` says
whether rows of one task may share one conditioning (then its keys and values are computed
once), `serves_any_task` whether it may be asked about a task it was not trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from frozenlm.tasks import Example, TaskSpec


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

    def soft_tokens(self, task: TaskSpec, examples: Sequence[Example]) -> list[torch.Tensor]:
        """One [P_b, D] tensor (fp32 or the backbone's dtype) per example of `task`. Rows that
        share conditioning get the same tensor object."""
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


def soft_tokens_by_row(
    rows: Sequence[tuple[Plugin, TaskSpec, Example]],
) -> list[torch.Tensor]:
    """Each row's soft tokens from its own plug-in, asking each plug-in once per task in the
    batch (a generator then writes a whole group's prompts in one forward; a plug-in that does
    not read the input gives every row of the task the same tensor). Gradients flow as the
    caller's grad mode allows."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (plugin, spec, _) in enumerate(rows):
        groups.setdefault((id(plugin), spec.name), []).append(i)
    for index in groups.values():
        plugin, spec, first = rows[index[0]]
        if plugin.reads_input:
            tokens = plugin.soft_tokens(spec, [rows[i][2] for i in index])
        else:  # one object for every row of the task: the engine then computes it once
            tokens = plugin.soft_tokens(spec, [first]) * len(index)
        for i, row_tokens in zip(index, tokens, strict=True):
            out[i] = row_tokens
    return [t for t in out if t is not None]


def inference_tokens(rows: Sequence[tuple[Plugin, TaskSpec, Example]]) -> list[torch.Tensor]:
    """`soft_tokens_by_row` without gradients, detached; rows that shared a tensor still do."""
    with torch.no_grad():
        tokens = soft_tokens_by_row(rows)
    seen: dict[int, torch.Tensor] = {}
    return [seen.setdefault(id(t), t.detach()) for t in tokens]
