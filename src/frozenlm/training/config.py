"""`TrainConfig`: how a plug-in is trained. Defaults are the recipe of Lester et al. 2021 for
prompt tuning; each plug-in kind may override parts of it (`frozenlm.plugins.registry.recipe`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from frozenlm.errors import ConfigError
from frozenlm.prompts.render import PromptConfig


@dataclass(frozen=True)
class TrainConfig:
    """How a plug-in is trained (defaults: Lester et al. 2021)."""

    steps: int = 150
    """Optimizer steps at most (early stopping may end sooner)."""
    batch_size: int = 8
    """Rows per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    """adafactor: Lester's recipe; adamw: the choice of PEFT's examples."""
    lr: float = 0.3
    """Constant learning rate (Lester: 0.3 with Adafactor)."""
    weight_decay: float = 1e-5
    """Weight decay (Lester: 1e-5)."""
    eval_every: int = 25
    """Evaluate on dev (and save `last/`) every N steps."""
    eval_limit: int | None = 200
    """Dev examples per task per evaluation (None: the whole dev split)."""
    patience: int = 4
    """Stop after this many evaluations without a better dev metric (0: never stop early)."""
    seed: int = 0
    """Seed of initialisation and data order."""
    chat_template: bool = True
    """Render each input with the backbone's chat template around it, as zero-shot prompting."""
    save_last: bool = True
    """Save the resumable state (`last/`: weights, optimizer, RNG) at every dev evaluation."""
    task_cap: int | None = None
    """Multi-task training: each task contributes at most this many train rows, a seeded sample
    (examples-proportional mixing with a cap, Raffel et al. 2020), so a large task does not
    drown the others. None: every row of every task."""
    warmup: int = 0
    """Steps over which the learning rate rises linearly from lr / warmup to lr."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    balance: Literal["none", "sample"] = "sample"
    """sample: every class of a classification task is drawn equally often (rows of smaller
    classes repeat within an epoch), so an imbalanced task is not learnt as its majority class;
    on a balanced task it changes nothing. none: rows as they come."""
    recover: bool = True
    """Watch for divergence at each dev evaluation and go back to the best state with the
    learning rate times `recover_factor` (at most `max_recoveries` times)."""
    recover_factor: float = 0.3
    """What a recovery multiplies the learning rate by."""
    max_recoveries: int = 3
    """Recoveries at most; a run diverging again after them stops early."""
    rising_evals: int = 3
    """Divergence: the mean training loss rose at this many dev evaluations in a row."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.task_cap is not None and self.task_cap < 1:
            raise ConfigError(f"task-cap must be at least 1, got {self.task_cap}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be 0 or more steps, got {self.warmup}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max-grad-norm must be positive, got {self.max_grad_norm}")
        if self.balance not in ("none", "sample"):
            raise ConfigError(f"balance must be none or sample, got {self.balance!r}")
        if not 0 < self.recover_factor < 1:
            raise ConfigError(f"recover-factor must be in (0, 1), got {self.recover_factor}")

    def lr_scale(self, step: int) -> float:
        """The warm-up's factor on the learning rate at optimizer step `step` (from 0)."""
        return min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(shots=0, chat_template=self.chat_template, seed=self.seed)
