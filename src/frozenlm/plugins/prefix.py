"""Deep prompts (prefix tuning: Li & Liang 2021; P-tuning v2: Liu et al. 2022): trainable keys
and values of P prefix positions at every layer of the frozen backbone.

A shallow soft prompt reaches the model through its input embeddings only; a deep prompt puts P
key/value pairs into every layer's attention, which is what lets small models match fine-tuning
(P-tuning v2). It is exactly the engine's `PrefixCache`: rows continue after it as they continue
after a cached soft prompt, so scoring, generation, mixed batches and training need nothing new.

Each task's prefix is one fp32 tensor [L, 2, H, P, d] (layers, keys/values, key/value heads,
positions, head width), cast to the backbone's dtype at use. It starts as the keys and values the
backbone itself computes for P real tokens (the task's label words, then common vocabulary): Li &
Liang found initialising from real words' activations matters most with little data. With
`reparameterize`, Li & Liang's MLP writes the prefix while training (here residually, from
that same start); only the prefix it wrote is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import per_task_tensors
from frozenlm.plugins.protocol import Conditioning, count_trainable, single_group
from frozenlm.plugins.reparam import ResidualMLP, module_key
from frozenlm.plugins.soft_prompt import PromptInit, initial_ids
from frozenlm.tasks import Example, TaskSpec


@dataclass(frozen=True)
class PrefixConfig:
    """Shape and initialisation of a deep prompt."""

    length: int = 10
    """Prefix positions P at every layer."""
    init: PromptInit = PromptInit.CLASS_LABELS
    """The tokens whose keys and values the prefix starts from (`random`: small noise)."""
    vocab_size: int = 5000
    """`vocab` / `class-labels` init samples from this many most common tokens."""
    reparameterize: int = 0
    """Write the prefix through an MLP of this bottleneck width while training (Li & Liang's
    reparameterization, residual from the init); 0: train the prefix directly."""

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ConfigError(f"prefix length must be at least 1, got {self.length}")
        if self.reparameterize < 0:
            raise ConfigError(f"reparameterize must be 0 or more, got {self.reparameterize}")
        object.__setattr__(self, "init", PromptInit(self.init))


def kv_shape(backbone: Backbone) -> tuple[int, int, int]:
    """(layers, key/value heads, head width) of the backbone's attention cache; a backbone whose
    layers differ in heads or width is refused (one prefix tensor holds every layer)."""
    probe = PrefixCache.compute(backbone, [[0]])
    shapes = {(int(k.shape[1]), int(k.shape[3])) for k in probe.keys}
    shapes |= {(int(v.shape[1]), int(v.shape[3])) for v in probe.values}
    if len(shapes) != 1:
        raise ConfigError(
            f"backbone '{backbone.name}' has layers of different key/value shapes "
            f"{sorted(shapes)}; a deep prompt needs the same heads and width in every layer"
        )
    ((heads, width),) = shapes
    return len(probe.keys), heads, width


def initial_prefix(
    backbone: Backbone, config: PrefixConfig, spec: TaskSpec, seed: int
) -> torch.Tensor:
    """The starting prefix [L, 2, H, P, d] (fp32, CPU): the backbone's own keys and values of P
    real tokens (or small noise with `random` init)."""
    if config.init is PromptInit.RANDOM:
        layers, heads, width = kv_shape(backbone)
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(layers, 2, heads, config.length, width, generator=generator) * 0.02
    ids = initial_ids(backbone, config.init, config.length, [spec], seed, config.vocab_size)
    with torch.no_grad():
        real = PrefixCache.compute(backbone, [ids])
    keys = torch.stack([k[0] for k in real.keys])  # [L, H, P, d]
    values = torch.stack([v[0] for v in real.values])
    return torch.stack([keys, values], dim=1).float().cpu()  # [L, 2, H, P, d]


class DeepPrompt(nn.Module):
    """One key/value prefix per task; every row of a task continues after the same one."""

    method = "prefix"
    reads_input = False  # a task's rows share its prefix
    serves_any_task = False

    def __init__(
        self,
        prefixes: Mapping[str, torch.Tensor],
        config: PrefixConfig,
        *,
        reparameterize: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.prefixes = nn.ParameterDict(
            {name: nn.Parameter(p.detach().float().clone()) for name, p in prefixes.items()}
        )  # task -> [L, 2, H, P, d] fp32
        self.mlps = nn.ModuleDict()
        """task -> the network writing its prefix, while training with `reparameterize`."""
        if reparameterize and config.reparameterize:
            for name, p in prefixes.items():
                per_position = p.numel() // p.shape[3]  # L * 2 * H * d
                self.mlps[module_key(name)] = ResidualMLP(
                    per_position, config.reparameterize, per_position
                )

    @classmethod
    def from_config(
        cls, config: PrefixConfig, backbone: Backbone, specs: Sequence[TaskSpec], seed: int
    ) -> DeepPrompt:
        """New prefixes for `specs`, each starting from real tokens' keys and values."""
        prefixes = {
            spec.name: initial_prefix(backbone, config, spec, seed + i)
            for i, spec in enumerate(specs)
        }
        with seeded_rng(seed):  # the networks' init; the caller's RNG untouched
            return cls(prefixes, config, reparameterize=True)

    @property
    def task_names(self) -> list[str]:
        return list(self.prefixes)

    def prefix(self, task: str) -> torch.Tensor:
        """The prefix [L, 2, H, P, d] of the task named `task` (through its MLP while there is
        one)."""
        if task not in self.prefixes:
            raise ConfigError(
                f"this plug-in has no prefix for task '{task}'; it has: {', '.join(self.prefixes)}"
            )
        weights = self.prefixes[task]
        if module_key(task) not in self.mlps:
            return weights
        layers, _, heads, length, width = weights.shape
        flat = weights.permute(3, 0, 1, 2, 4).reshape(length, -1)  # [P, L*2*H*d]
        written = self.mlps[module_key(task)](flat)
        return written.reshape(length, layers, 2, heads, width).permute(1, 2, 3, 0, 4)

    def condition(self, task: TaskSpec, examples: Sequence[Example]) -> list[Conditioning]:
        """The key/value prefix of `task`, the same object for every example."""
        weights = self.prefix(task.name)
        kv = PrefixCache.from_tensors(
            [layer[0].unsqueeze(0) for layer in weights],  # [1, H, P, d] per layer
            [layer[1].unsqueeze(0) for layer in weights],
        )
        return [Conditioning(kv=kv)] * len(examples)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Weights to store, named `prefix.<task>` (what the MLP wrote, when there is one)."""
        with torch.no_grad():
            return {f"prefix.{n}": self.prefix(n).detach().clone() for n in self.prefixes}

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, torch.Tensor],
        config: PrefixConfig,
        backbone: Backbone,
        *,
        source: str = "the checkpoint",
    ) -> DeepPrompt:
        """Saved prefixes, each of which must be [L, 2, H, config.length, d] for this backbone;
        a tensor of another name or shape raises CheckpointError naming it and `source`."""
        layers, heads, width = kv_shape(backbone)
        expected = [layers, 2, heads, config.length, width]
        prefixes = per_task_tensors(tensors, "prefix", "deep prompt", source)
        for task, tensor in prefixes.items():
            if list(tensor.shape) != expected:
                raise CheckpointError(
                    f"{source}: deep prompt tensor 'prefix.{task}' is {list(tensor.shape)}, but "
                    f"this backbone ({layers} layers, {heads} key/value heads of width {width}) "
                    f"with prefix length {config.length} needs {expected}"
                )
        return cls(prefixes, config)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return single_group(self, lr)

    def num_trainable(self) -> int:
        return count_trainable(self)
