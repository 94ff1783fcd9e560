"""The references a user would otherwise pick: PEFT's PromptTuning and PrefixTuning, trained with
PEFT's own model wrapper and the settings of its examples (random init, AdamW, lr 3e-2,
full-sequence logits).

Each sees the same rows in the same order as frozenlm's loop (`training_rows`, `DataOrder`),
right-padded (so PEFT gives every row's tokens the positions frozenlm's engine does), and what
it learns is evaluated with frozenlm's scorer (a soft prompt, a deep prompt), so only the
training recipe differs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import (
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    get_peft_model,
)
from transformers import get_linear_schedule_with_warmup

from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.engine.splice import IGNORE_INDEX
from frozenlm.plugins.peft import PEFT_PROMPT_POSITION, peft_prefix_layout, prefix_from_peft
from frozenlm.plugins.prefix import DeepPrompt, PrefixConfig
from frozenlm.plugins.soft_prompt import PromptInit, SoftPromptConfig, SoftPromptSet
from frozenlm.progress import progress
from frozenlm.tasks import Task
from frozenlm.training.config import TrainConfig
from frozenlm.training.rows import DataOrder, TrainRow, training_rows


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


@dataclass(frozen=True)
class PeftPrefixConfig:
    """PEFT prefix tuning as in its causal-LM example, `examples/causal_language_modeling/
    peft_prefix_tuning_clm.ipynb` (huggingface/peft 5d602fd): `PrefixTuningConfig(task_type=
    CAUSAL_LM, num_virtual_tokens=30)` (so no `prefix_projection`, random init), AdamW at lr
    3e-2 decaying linearly to 0 without warm-up (`get_linear_schedule_with_warmup`), batch 8.
    Its data (tweets, left-padded to 64 tokens) is replaced by frozenlm's rows, right-padded."""

    num_virtual_tokens: int = 30
    """Prefix positions at every layer (the example's 30)."""
    steps: int = 150
    """Optimizer steps (the schedule decays to 0 over them)."""
    batch_size: int = 8
    """Rows per step (the example's 8)."""
    lr: float = 3e-2
    """AdamW's peak learning rate (the example's 3e-2)."""
    seed: int = 0
    """Seed of the random init and the data order."""


@dataclass
class PeftPrefixResult:
    plugin: DeepPrompt
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
    with _wrapped(backbone, peft_config) as model:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        run = _Run(model, backbone.device, rows, order, config.batch_size, f"peft {task.name}")
        seconds, losses = _steps(run, optimizer, config.steps)
        weights = model.get_prompt_embedding_to_save("default").detach().float().clone()  # [P, D]
    prompt_config = SoftPromptConfig(
        length=config.prompt_length, init=PromptInit.RANDOM, position=PEFT_PROMPT_POSITION
    )
    plugin = SoftPromptSet({task.name: weights}, prompt_config)
    plugin.requires_grad_(False)
    return PeftPromptResult(plugin, seconds, losses)


def train_peft_prefix(
    backbone: Backbone, task: Task, config: PeftPrefixConfig = PeftPrefixConfig()
) -> PeftPrefixResult:
    """Train one task's prefix with PEFT's PrefixTuning; return it as a frozenlm deep prompt
    (fp32). A backbone whose prefix PEFT would lay out otherwise than frozenlm is refused
    (ConfigError, `peft_prefix_layout`). The torch RNG is seeded with `config.seed` inside; the
    caller's is left as it was."""
    layers, heads, width = peft_prefix_layout(backbone)
    rows = training_rows(backbone, [task], TrainConfig(seed=config.seed))
    order = DataOrder(len(rows), config.seed)
    peft_config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens
    )
    with seeded_rng(config.seed, backbone.device), _wrapped(backbone, peft_config) as model:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr)
        schedule = get_linear_schedule_with_warmup(optimizer, 0, config.steps)
        desc = f"peft prefix {task.name}"
        run = _Run(model, backbone.device, rows, order, config.batch_size, desc)
        seconds, losses = _steps(run, optimizer, config.steps, schedule)
        flat = model.get_prompt_embedding_to_save("default").float()  # [P, L*2*H*d]
    prefix = prefix_from_peft(flat, layers, heads, width)  # [L, 2, H, P, d]
    prefix_config = PrefixConfig(length=config.num_virtual_tokens, init=PromptInit.RANDOM)
    plugin = DeepPrompt({task.name: prefix}, prefix_config)
    plugin.requires_grad_(False)
    return PeftPrefixResult(plugin, seconds, losses)


@dataclass
class _Run:
    """What PEFT's training steps read: the wrapped model and the rows in their order."""

    model: PeftModel
    device: torch.device
    """Where the batches go (the backbone's device)."""
    rows: Sequence[TrainRow]
    order: DataOrder
    batch_size: int
    desc: str


@contextmanager
def _wrapped(backbone: Backbone, peft_config: PeftConfig) -> Iterator[PeftModel]:
    """The backbone's model in PEFT's wrapper, in train mode as PEFT's examples train; the
    backbone is frozen and in eval mode again afterwards."""
    model = get_peft_model(backbone.model, peft_config)
    try:
        model.train()
        yield model
    finally:
        # PEFT's wrapper put the backbone in train mode: back to frozen and eval.
        backbone.model.eval()
        backbone.model.requires_grad_(False)


def _steps(
    run: _Run,
    optimizer: torch.optim.Optimizer,
    steps: int,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[float, list[float]]:
    """PEFT's examples' training loop for `steps` steps: the wrapped model's own loss on each
    batch of rows, then step the optimizer (and `schedule`). Returns the seconds taken and the
    loss of each step."""
    losses = []
    start = time.perf_counter()
    for step in progress(range(steps), desc=run.desc):
        first = step * run.batch_size
        batch = [run.rows[run.order[p]] for p in range(first, first + run.batch_size)]
        ids, mask, labels = _batch_tensors(batch, run.device)
        loss = run.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return time.perf_counter() - start, losses
