"""Textual recursion, the baseline of neural recursion (Levine et al. 2022): pass 1 (the frozen
model with its one-pass soft prompt) samples k candidate answers, pass 2 reads them as text
("Candidates: a; b; c" after the input) with a soft prompt of its own, trained on the same
data, and answers.

The candidate task is written as a task file (JSON spec + JSONL splits) beside the trained
prompt, so `frozenlm eval --plugin OUT/prompt --task OUT/task/task.json` evaluates it like any
other. Pass 1 samples the training inputs' candidates too: the prompt it was trained with has
seen those inputs, so its candidates there are better than on test (a gap the paper shares).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from frozenlm.atomic import atomic_write_bytes, atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.engine.batching import BatchBudget, generate_rows_detailed
from frozenlm.engine.generation import GenerationConfig
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import (
    EvalConfig,
    Report,
    classification_prompter,
    evaluate,
    prompt_rows,
    score_prompts,
    task_prompter,
)
from frozenlm.plugins.protocol import Plugin, inference_conditioning
from frozenlm.plugins.registry import load_plugin
from frozenlm.tasks import Example, Task, TaskSpec, load_task
from frozenlm.tasks.splits import make_example
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import TrainResult, train_new_plugin

log = logging.getLogger(__name__)

CANDIDATES_FIELD = "candidates"


@dataclass(frozen=True)
class TextualConfig:
    """How pass 1 proposes candidates."""

    k: int = 4
    """Candidates sampled per input (duplicates merged, so a confident pass 1 offers fewer)."""
    temperature: float = 0.7
    """Sampling temperature of pass 1 (generation: per token; classification: over labels)."""
    seed: int = 0
    """Seed of the sampling."""
    max_new_tokens: int = 16
    """Tokens per sampled answer (generation)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError("k must be at least 1 candidate")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive to sample, got {self.temperature}")


def sample_candidates(
    backbone: Backbone,
    plugin: Plugin,
    task: Task,
    examples: Sequence[Example],
    config: TextualConfig,
    chat_template: bool = True,
) -> list[list[str]]:
    """Pass 1: k sampled answers per example (distinct, in order of first appearance)."""
    eval_config = EvalConfig(chat_template=chat_template, seed=config.seed)
    conditioning = inference_conditioning([(plugin, task.spec, ex) for ex in examples])
    if task.spec.kind == "generation":
        prompter = task_prompter(backbone, task, eval_config, answer_tokens=config.max_new_tokens)
        prompts = [prompter.render(ex) for ex in examples]
        rows = prompt_rows(prompts, conditioning)
        repeated = [row for row in rows for _ in range(config.k)]
        generation = GenerationConfig(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed,
        )
        made = generate_rows_detailed(
            backbone, repeated, generation, BatchBudget(), desc=f"{task.name} candidates"
        )
        answers = [prompter.extract_answer(g.text) for g in made]
        per_example = [answers[i * config.k : (i + 1) * config.k] for i in range(len(examples))]
    else:
        prompter, candidates = classification_prompter(backbone, task, eval_config)
        prompts = [prompter.render(ex) for ex in examples]
        rows = prompt_rows(prompts, conditioning)
        scores = score_prompts(backbone, rows, candidates, eval_config, f"{task.name} candidates")
        probs = torch.softmax(scores / config.temperature, dim=-1)  # [N, K]
        sampler = torch.Generator().manual_seed(config.seed)
        drawn = torch.multinomial(probs, config.k, replacement=True, generator=sampler)  # [N, k]
        labels = list(task.spec.labels)
        per_example = [[task.spec.labels[labels[j]] for j in row.tolist()] for row in drawn]
    return [list(dict.fromkeys(a for a in answers if a)) or ["none"] for answers in per_example]


def candidate_spec(spec: TaskSpec) -> TaskSpec:
    """`spec` whose input ends with the candidates pass 1 proposed."""
    return replace(
        spec,
        name=f"{spec.name}-candidates",
        input_fields=(*spec.input_fields, CANDIDATES_FIELD),
        template=f"{spec.template}\nCandidates: {{{CANDIDATES_FIELD}}}",
        source=f"textual recursion over {spec.name}",
    )


def candidate_task(task: Task, candidates: dict[str, dict[str, list[str]]]) -> Task:
    """`task` with each example's candidates (`candidates[split][id]`) in its input, splits in
    the same order."""
    spec = candidate_spec(task.spec)

    def derived(split: str) -> tuple[Example, ...]:
        return tuple(
            make_example(
                {**ex.fields, CANDIDATES_FIELD: "; ".join(candidates[split][ex.id])},
                ex.label,
                spec.input_fields,
                ex.answers,
            )
            for ex in task.split(split)
        )

    return Task(spec=spec, train=derived("train"), dev=derived("dev"), test=derived("test"))


def write_candidate_task(
    folder: Path, task: Task, candidates: dict[str, dict[str, list[str]]]
) -> Path:
    """The candidate task as a task file (task.json + one JSONL per split) in `folder`."""
    spec = candidate_spec(task.spec)
    generation = spec.kind == "generation"
    for split in ("train", "dev", "test"):
        lines = []
        for ex in task.split(split):
            record: dict[str, Any] = dict(ex.fields)
            record[CANDIDATES_FIELD] = "; ".join(candidates[split][ex.id])
            record["answer"] = list(ex.answers or (ex.label,)) if generation else ex.label
            lines.append(json.dumps(record, ensure_ascii=False))
        atomic_write_bytes(folder / f"{split}.jsonl", ("\n".join(lines) + "\n").encode())
    task_file = folder / "task.json"
    atomic_write_json(
        task_file,
        {
            "name": spec.name,
            "kind": spec.kind,
            "data": {s: f"{s}.jsonl" for s in ("train", "dev", "test")},
            "input_fields": list(spec.input_fields),
            "label_field": "answer",
            "instruction": spec.instruction,
            "template": spec.template,
            **({} if generation else {"labels": dict(spec.labels)}),
        },
    )
    return task_file


@dataclass
class TextualResult:
    """A textual-recursion run: the candidate task, the trained prompt, its test report."""

    task_file: Path
    train: TrainResult
    report: Report
    candidate_seconds: float


def textual_recursion(
    backbone: Backbone,
    first_prompt: str | Path,
    task: Task,
    out: str | Path,
    config: TextualConfig = TextualConfig(),
    train_config: TrainConfig | None = None,
    plugin_config: dict[str, Any] | None = None,
    *,
    test_limit: int | None = None,
    overwrite: bool = False,
) -> TextualResult:
    """Sample candidates for every split with the one-pass prompt in `first_prompt`, write the
    candidate task to `out/task/`, train a soft prompt on it into `out/prompt/`, evaluate test."""
    import time

    out = Path(out)
    train_config = train_config or TrainConfig()
    first, checkpoint = load_plugin(first_prompt, backbone)
    if task.name not in checkpoint.meta.get("tasks", {}) and not first.serves_any_task:
        raise ConfigError(f"first-prompt '{first_prompt}' was not trained for task '{task.name}'")
    first.eval()
    chat = bool(checkpoint.meta.get("train_config", {}).get("chat_template", True))
    start = time.perf_counter()
    candidates = {
        split: dict(
            zip(
                [ex.id for ex in task.split(split)],
                sample_candidates(backbone, first, task, task.split(split), config, chat),
                strict=True,
            )
        )
        for split in ("train", "dev", "test")
    }
    seconds = time.perf_counter() - start
    task_file = write_candidate_task(out / "task", task, candidates)
    written = load_task(task_file, seed=train_config.seed)  # trained on, so eval --plugin works
    result = train_new_plugin(
        backbone,
        [written],
        [str(task_file)],
        "soft-prompt",
        plugin_config or {},
        train_config,
        out / "prompt",
        overwrite=overwrite,
    )
    prompt, _ = load_plugin(out / "prompt", backbone)
    eval_config = EvalConfig(limit=test_limit, chat_template=train_config.chat_template)
    # the same examples in the original task's order: a test limit keeps the same ones
    report = evaluate(backbone, candidate_task(task, candidates), eval_config, prompt)
    return TextualResult(task_file, result, report, seconds)
