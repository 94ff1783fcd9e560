"""Reparameterizations: a plug-in's vectors written through a small network while it trains,
the network dropped afterwards so that only the vectors it wrote are stored.

`ResidualMLP` is the residual reparameterization of Razdaibiedina et al. 2023 ("Residual Prompt
Tuning"): each vector v becomes v + up(relu(down(norm(v)))), one bottleneck network shared by
the vectors of a prompt. The paper normalises after `up`; here the norm comes first and `up`
starts at zero, so the reparameterized prompt starts exactly at its initialisation (a
normalised output would replace the embedding-scale init by unit-variance vectors on the first
step). Li & Liang's prefix MLP is the same network with a wider output (`out`).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """v -> base(v) + up(act(down(norm(v)))), starting at base(v) (`up` is zero)."""

    def __init__(self, width: int, bottleneck: int, out: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, out or width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def delta(self, vectors: torch.Tensor) -> torch.Tensor:
        """What the network adds to `vectors` [..., width] -> [..., out]."""
        return self.up(torch.tanh(self.down(self.norm(vectors))))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors + self.delta(vectors)


def module_key(task: str) -> str:
    """A task name as the key of its network in an `nn.ModuleDict` (keys may not contain
    dots)."""
    return task.replace(".", "__")
