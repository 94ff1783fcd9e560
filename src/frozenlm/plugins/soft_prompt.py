"""Soft prompts (Lester et al. 2021): P trainable vectors prepended to the input embeddings.

`SoftPromptSet` holds one prompt per task (or one shared by all) and hands each row of a
(possibly mixed-task) batch the prompt of its task, at the configured place in the prompt.
Weights are fp32; `splice` casts them to the backbone's dtype at use. With the residual
reparameterization a small network rewrites each prompt while it trains; what is stored is the
prompt it wrote.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import per_task_tensors
from frozenlm.plugins.protocol import Conditioning, SoftPosition, count_trainable, single_group
from frozenlm.plugins.reparam import ResidualMLP, module_key
from frozenlm.tasks import Example, TaskSpec


class PromptInit(StrEnum):
    """How prompt vectors start (Lester et al. 2021, section 3.2)."""

    CLASS_LABELS = "class-labels"
    """Embeddings of the label verbalizers first, the rest sampled from common vocabulary
    (Lester's best; the default for classification)."""
    VOCAB = "vocab"
    """Embeddings of tokens sampled from the 5,000 most common vocabulary entries."""
    RANDOM = "random"
    """Uniform in [-0.5, 0.5]."""


@dataclass(frozen=True)
class SoftPromptConfig:
    """Shape and initialisation of a soft prompt."""

    length: int = 20
    """Prompt vectors P. Lester et al. find 20-100 works; 20 keeps the context short."""
    init: PromptInit = PromptInit.CLASS_LABELS
    """Initialisation; generation tasks have no labels and fall back to `vocab`."""
    vocab_size: int = 5000
    """Sample `vocab` init from this many most common tokens (lowest BPE ids, specials skipped:
    byte-level BPE ids are ordered by merge rank, a proxy for frequency)."""
    random_range: float = 0.5
    """Half-width of the uniform range for `random` init."""
    shared: bool = False
    """One prompt for every task instead of one per task (the multi-task baseline that, like
    input-dependent prompts, gets no task id); `class-labels` init then uses every task's labels."""
    position: SoftPosition = SoftPosition.INPUT
    """Where the prompt sits in each row (see `SoftPosition`). Right before the input by
    measurement (docs/results/quality/recipe.md): before everything, as Lester et al. place it,
    the prompt displaces the chat template's first token, where this kind of model parks its
    attention, and training collapsed to below the majority class."""
    residual: int = 0
    """Residual reparameterization (Razdaibiedina et al. 2023) with a bottleneck of this width
    while training (0: none). Stored prompts are the reparameterized vectors, so loading needs
    no network."""

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ConfigError(f"prompt length must be at least 1, got {self.length}")
        if self.residual < 0:
            raise ConfigError(f"residual bottleneck must be 0 or more, got {self.residual}")
        object.__setattr__(self, "init", PromptInit(self.init))
        object.__setattr__(self, "position", SoftPosition(self.position))


def common_token_ids(backbone: Backbone, count: int) -> list[int]:
    """The `count` lowest non-special token ids."""
    special = set(backbone.tokenizer.all_special_ids) | set(
        getattr(backbone.tokenizer, "added_tokens_decoder", {}) or {}
    )
    ids = [i for i in range(backbone.vocab_size) if i not in special]
    return ids[:count]


def initial_ids(
    backbone: Backbone,
    init: PromptInit,
    length: int,
    specs: Sequence[TaskSpec],
    seed: int,
    vocab_size: int = 5000,
) -> list[int]:
    """`length` token ids to start a prompt from: the tasks' label verbalizers first (with
    `class-labels`), the rest a seeded sample of the `vocab_size` most common tokens."""
    rng = random.Random(seed)
    ids: list[int] = []
    if init is PromptInit.CLASS_LABELS:
        for word in (w for spec in specs for w in spec.labels.values()):
            label_ids = backbone.tokenizer.encode(" " + word.strip(), add_special_tokens=False)
            ids.extend(label_ids)
        ids = list(dict.fromkeys(ids))[:length]  # tasks may share label words
    vocab = common_token_ids(backbone, vocab_size)
    return ids + rng.sample(vocab, length - len(ids))


def initial_prompt(
    backbone: Backbone, config: SoftPromptConfig, specs: Sequence[TaskSpec], seed: int
) -> torch.Tensor:
    """Initial prompt vectors [P, D] (fp32) for the tasks (one, or all that share it),
    deterministic for `seed`."""
    width = backbone.hidden_size
    if config.init is PromptInit.RANDOM:
        generator = torch.Generator().manual_seed(seed)
        uniform = torch.rand(config.length, width, generator=generator)
        return (uniform * 2 - 1) * config.random_range
    ids = initial_ids(backbone, config.init, config.length, specs, seed, config.vocab_size)
    with torch.no_grad():
        return backbone.embed(torch.tensor(ids, device=backbone.device)).float().cpu().clone()


SHARED = "*"
"""The name of the one prompt of a shared soft prompt (`SoftPromptConfig.shared`)."""


class SoftPromptSet(nn.Module):
    """One soft prompt per task (or one for all); rows of a batch may belong to different tasks."""

    method = "soft-prompt"
    reads_input = False  # evaluation computes each prompt's keys and values once

    def __init__(
        self,
        prompts: Mapping[str, torch.Tensor],
        config: SoftPromptConfig,
        *,
        reparameterize: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.prompts = nn.ParameterDict(
            {name: nn.Parameter(w.detach().float().clone()) for name, w in prompts.items()}
        )  # task -> [P, D] fp32
        self.residual = nn.ModuleDict()
        """task -> its residual network, while training with `config.residual`."""
        if reparameterize and config.residual:
            for name, w in prompts.items():
                self.residual[module_key(name)] = ResidualMLP(int(w.shape[1]), config.residual)

    @classmethod
    def from_config(
        cls, config: SoftPromptConfig, backbone: Backbone, specs: Sequence[TaskSpec], seed: int
    ) -> SoftPromptSet:
        """New prompts for `specs`, each initialised as `config.init` says."""
        if config.shared:
            prompts = {SHARED: initial_prompt(backbone, config, specs, seed)}
        else:
            prompts = {
                spec.name: initial_prompt(backbone, config, [spec], seed + i)
                for i, spec in enumerate(specs)
            }
        with seeded_rng(seed):  # the residual networks' init; the caller's RNG untouched
            return cls(prompts, config, reparameterize=True)

    @property
    def task_names(self) -> list[str]:
        return list(self.prompts)

    @property
    def serves_any_task(self) -> bool:
        """A shared prompt conditions any task, including tasks it was not trained on."""
        return SHARED in self.prompts

    def prompt(self, task: str) -> torch.Tensor:
        """The prompt [P, D] of the task named `task` (the one prompt, when shared), through its
        residual network while there is one."""
        name = SHARED if SHARED in self.prompts else task
        if name not in self.prompts:
            raise ConfigError(
                f"this plug-in has no prompt for task '{task}'; it has: {', '.join(self.prompts)}"
            )
        if module_key(name) in self.residual:
            return self.residual[module_key(name)](self.prompts[name])
        return self.prompts[name]

    def soft_tokens(self, task: TaskSpec, examples: Sequence[Example]) -> list[torch.Tensor]:
        """The prompt [P, D] of `task` for each example (the same tensor: prompts ignore input)."""
        return [self.prompt(task.name)] * len(examples)

    def condition(self, task: TaskSpec, examples: Sequence[Example]) -> list[Conditioning]:
        """The prompt of `task` at `config.position`, the same object for every example."""
        return [Conditioning(soft=self.prompt(task.name), position=self.config.position)] * len(
            examples
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """Weights to store, named `prompt.<task>` (the vectors the residual network wrote)."""
        with torch.no_grad():
            return {f"prompt.{name}": self.prompt(name).detach().clone() for name in self.prompts}

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, torch.Tensor],
        config: SoftPromptConfig,
        hidden_size: int,
        *,
        source: str = "the checkpoint",
    ) -> SoftPromptSet:
        """Saved prompts, each of which must be [config.length, hidden_size] (the backbone's);
        a tensor of another name or shape raises CheckpointError naming it and `source`."""
        prompts = per_task_tensors(tensors, "prompt", "soft prompt", source)
        expected = [config.length, hidden_size]
        for task, tensor in prompts.items():
            name, shape = f"prompt.{task}", list(tensor.shape)
            if tensor.dim() != 2 or shape[1] != hidden_size:
                raise CheckpointError(
                    f"{source}: soft prompt tensor '{name}' is {shape}, but the backbone has "
                    f"hidden size {hidden_size}; expected {expected}"
                )
            if shape[0] != config.length:
                raise CheckpointError(
                    f"{source}: soft prompt tensor '{name}' has {shape[0]} vectors, but its "
                    f"config says length {config.length}; expected {expected}"
                )
        if config.shared and set(prompts) != {SHARED}:
            raise CheckpointError(
                f"{source}: a shared soft prompt is one tensor 'prompt.{SHARED}', "
                f"found {', '.join(sorted(tensors))}"
            )
        return cls(prompts, config)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return single_group(self, lr)

    def num_trainable(self) -> int:
        return count_trainable(self)
