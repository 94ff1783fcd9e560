"""The reference a user would otherwise pick: PEFT's PromptTuning, trained with PEFT's own model
wrapper and the settings of its examples (random init, AdamW, lr 3e-2, full-sequence logits).

It sees the same rows in the same order as frozenlm's loop (`training_rows`, `DataOrder`), and
its learned prompt is evaluated with frozenlm's scorer, so only the training recipe differs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.engine.splice import IGNORE_INDEX
from frozenlm.plugins.soft_prompt import PromptInit, SoftPromptConfig, SoftPromptSet
from frozenlm.progress import progress
from frozenlm.tasks import Task
from frozenlm.training.loop import DataOrder, TrainConfig, TrainRow, training_rows


@dataclass(frozen=True)
class PeftPromptConfig:
    """PEFT prompt tuning as in its examples."""

    prompt_length: int = 20
    """Virtual tokens."""
    steps: int = 150
    """Optimizer steps."""
    batch_size: int = 8
    """Rows per step."""
    lr: float = 3e-2
    """AdamW learning rate of PEFT's prompt-tuning examples."""
    seed: int = 0
    """Seed of the random init and the data order."""


@dataclass
class PeftPromptResult:
    plugin: SoftPromptSet
    seconds: float
    losses: list[float]


def _batch_tensors(
    rows: Sequence[TrainRow], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, mask and labels (-100 except the target tokens), as PEFT's examples,
    on `device`."""
    width = max(len(r.prefix) + len(r.target) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # [B, T]
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for b, row in enumerate(rows):
        tokens = row.prefix + row.target
        ids[b, : len(tokens)] = torch.tensor(tokens, device=device)
        mask[b, : len(tokens)] = 1
        labels[b, len(row.prefix) : len(tokens)] = torch.tensor(row.target, device=device)
    return ids, mask, labels


def train_peft_prompt(
    backbone: Backbone, task: Task, config: PeftPromptConfig = PeftPromptConfig()
) -> PeftPromptResult:
    """Train one task's prompt with PEFT; return it as a frozenlm soft prompt (fp32). The torch
    RNG is seeded with `config.seed` inside; the caller's is left as it was."""
    rows = training_rows(backbone, [task], TrainConfig(seed=config.seed))
    order = DataOrder(len(rows), config.seed)
    with seeded_rng(config.seed, backbone.device):
        return _train(backbone, task, config, rows, order)


def _train(
    backbone: Backbone,
    task: Task,
    config: PeftPromptConfig,
    rows: Sequence[TrainRow],
    order: DataOrder,
) -> PeftPromptResult:
    peft_config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=config.prompt_length,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    model = get_peft_model(backbone.model, peft_config)
    try:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        losses = []
        start = time.perf_counter()
        for step in progress(range(config.steps), desc=f"peft {task.name}"):
            first = step * config.batch_size
            batch = [rows[order[p]] for p in range(first, first + config.batch_size)]
            ids, mask, labels = _batch_tensors(batch, backbone.device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        seconds = time.perf_counter() - start
        weights = model.get_prompt_embedding_to_save("default").detach().float().clone()  # [P, D]
    finally:
        # PEFT's wrapper put the backbone in train mode: back to frozen and eval.
        backbone.model.eval()
        backbone.model.requires_grad_(False)
    prompt_config = SoftPromptConfig(length=config.prompt_length, init=PromptInit.RANDOM)
    plugin = SoftPromptSet({task.name: weights}, prompt_config)
    plugin.requires_grad_(False)
    return PeftPromptResult(plugin, seconds, losses)
