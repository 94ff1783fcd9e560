"""Fine-tuning baselines: LoRA (PEFT) and full fine-tuning, on a copy of the backbone.

The frozen backbone itself is never touched: each baseline trains a deep copy. The trainable
weights are wrapped in `FineTuned`, an nn.Module that is also a `Plugin` adding no soft
conditioning, so the one training loop (`train.train`) and `evaluate` take a baseline exactly like a
plug-in: same rows, same loss on target tokens, same dev early stopping, same checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from frozenlm.backbone import Backbone
from frozenlm.plugins.protocol import NONE, Conditioning, single_group
from frozenlm.tasks import Example, TaskSpec

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA on the attention projections."""

    r: int = 8
    """Rank of each adapter."""
    alpha: int = 16
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    targets: tuple[str, ...] = LORA_TARGETS
    """Module names that get an adapter."""


class FineTuned(nn.Module):
    """The trainable weights of a fine-tuned copy of the backbone, under stable names.

    It registers those parameters (not the whole model), so the training loop's optimizer,
    checkpoints and resume see exactly what is trained. `condition` adds nothing: the copy's
    own weights carry the task.
    """

    reads_input = False
    serves_any_task = False

    def __init__(self, method: str, model: nn.Module, trainable: Sequence[str]) -> None:
        super().__init__()
        self.method = method
        named = dict(model.named_parameters())
        self.weights = nn.ParameterDict({_key(n): named[n] for n in trainable})

    def condition(self, task: TaskSpec, examples: Sequence[Example]) -> list[Conditioning]:
        """No conditioning: the copy's weights carry the task."""
        return [NONE] * len(examples)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trained weights, under their names in the model (what a user must store)."""
        return {_name(k): p.detach().clone() for k, p in self.weights.items()}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved weights (named as `tensors()` names them) into the model."""
        for key, param in self.weights.items():
            param.copy_(tensors[_name(key)])

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return single_group(self, lr)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.weights.values())


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


def _name(key: str) -> str:
    return key.replace("__", ".")


def _copy_backbone(backbone: Backbone, suffix: str) -> tuple[Backbone, nn.Module]:
    model = copy.deepcopy(backbone.model)
    return (
        Backbone(
            model,
            backbone.tokenizer,
            name=f"{backbone.name}+{suffix}",
            source=backbone.source,
            fingerprint=backbone.fingerprint,  # reports name the base weights
        ),
        model,
    )


def lora_copy(
    backbone: Backbone, settings: LoraSettings = LoraSettings()
) -> tuple[Backbone, FineTuned]:
    """A copy of the backbone with LoRA adapters on its attention projections; only the adapters
    require grad."""
    tuned, model = _copy_backbone(backbone, "lora")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
    )
    get_peft_model(model, config)  # injects the adapters into `model` in place
    model.eval()
    trainable = [n for n, _ in model.named_parameters() if "lora_" in n]
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return tuned, FineTuned("lora", model, trainable)


def full_copy(backbone: Backbone) -> tuple[Backbone, FineTuned]:
    """A copy of the backbone with every weight trainable (tied weights counted once), in fp32
    whatever the backbone's dtype: trained weights are fp32 (bf16 cannot hold small updates)."""
    tuned, model = _copy_backbone(backbone, "full-ft")
    model.float()
    model.requires_grad_(True)
    trainable = [n for n, _ in model.named_parameters()]
    return tuned, FineTuned("full-ft", model, trainable)
