"""What a training run reads: its rows (prompt ids and target ids per train example) and their
order, a pure function of (seed, position) so that a resumed run sees what an uninterrupted one
would."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.prompts.render import Prompter
from frozenlm.tasks import Example, Task, TaskSpec
from frozenlm.training.config import TrainConfig


@dataclass(frozen=True)
class TrainRow:
    """One training row: its task, the prompt ids and the target ids after them."""

    task: TaskSpec
    example: Example
    prefix: list[int]
    target: list[int]
    input_start: int = 0
    """Where the input begins in `prefix` (a plug-in may put its soft tokens there)."""


def training_rows(backbone: Backbone, tasks: Sequence[Task], config: TrainConfig) -> list[TrainRow]:
    """Every train example of every task as (prompt ids, target ids): zero-shot prompts whose
    targets are the label verbalizer (classification) or the reference answer (generation).
    With `config.task_cap`, a task with more train examples contributes a seeded sample of them;
    with `config.balance` "sample", rows of a classification task's smaller classes repeat
    until every class has as many as the largest."""
    rows: list[TrainRow] = []
    for task in tasks:
        examples = list(task.train)
        if config.task_cap is not None and len(examples) > config.task_cap:
            examples = random.Random(config.seed).sample(examples, config.task_cap)
        prompter = Prompter(
            task.spec,
            backbone.tokenizer,
            config.prompt_config(),
            max_tokens=min(backbone.max_length, 1024),
            answer_tokens=32,
        )
        if config.balance == "sample" and task.spec.kind == "classification":
            examples = balanced_rows(examples)
        for ex in examples:
            target = prompter.continuation_ids(prompter.demo_answer(ex))
            prompt = prompter.render(ex)
            rows.append(TrainRow(task.spec, ex, prompt.ids, target, prompt.input_start))
    if not rows:
        raise ConfigError("the tasks have no training examples")
    return rows


def balanced_rows(examples: Sequence[Example]) -> list[Example]:
    """`examples` with each class's rows repeated (cycling in order) up to the largest class's
    count: every class is drawn equally often, and nothing changes when they already are."""
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    largest = max((len(group) for group in by_label.values()), default=0)
    out = list(examples)
    for group in by_label.values():
        out += [group[i % len(group)] for i in range(largest - len(group))]
    return out


class DataOrder:
    """Rows in a seeded permutation per epoch; position p of the stream is a pure function."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._epochs: dict[int, list[int]] = {}

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch not in self._epochs:
            order = list(range(self.size))
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
            self._epochs = {epoch: order}
        return self._epochs[epoch][offset]
