"""`evaluate`: examples in, a `Report` out. Pure: it writes no files.

Classification is rank classification over the label verbalizers (optionally length-normalised
and contextually calibrated); generation is greedy decoding scored by exact match and token F1.
A majority-class baseline is always computed beside classification results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import BatchBudget, Row, generate_rows, score_rows
from frozenlm.engine.generation import GenerationConfig
from frozenlm.errors import ConfigError, DataError
from frozenlm.metrics import (
    Interval,
    bootstrap,
    confusion_matrix,
    exact_match,
    macro_f1,
    majority_label,
    token_f1,
)
from frozenlm.plugins.protocol import Conditioning, Plugin, inference_conditioning
from frozenlm.prompts.demos import DemoSelector
from frozenlm.prompts.render import PromptConfig, Prompter, RenderedPrompt
from frozenlm.tasks import Example, Task

log = logging.getLogger(__name__)

PROMPT_METHODS = ("zero-shot", "few-shot")
CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021, contextual calibration


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate a task with prompt design."""

    method: Literal["zero-shot", "few-shot"] = "zero-shot"
    """zero-shot: instruction and input only; few-shot: `shots` demonstrations from train."""
    shots: int = 4
    """Demonstrations for few-shot (ignored by zero-shot)."""
    selection: Literal["random", "balanced", "nearest"] = "balanced"
    """How demonstrations are chosen: a random or class-balanced fixed set, or the nearest
    training examples by MiniLM embedding (per input)."""
    framing: Literal["plain", "qa", "label"] = "plain"
    """plain: `input / Answer:`; qa: `Q: input / A:`; label: `input / Label:`."""
    chat_template: bool = True
    """Wrap the prompt in the backbone's chat template when it has one."""
    chain_of_thought: bool = False
    """Generation tasks: reason step by step before the answer."""
    calibrate: bool = False
    """Contextual calibration: divide label probabilities by those on content-free inputs."""
    length_normalize: bool = False
    """Score multi-token verbalizers by mean instead of summed log-probability."""
    split: str = "test"
    """Split to evaluate."""
    limit: int | None = None
    """Evaluate only the first N examples of the split (its order is a seeded shuffle)."""
    max_prompt_tokens: int = 2048
    """Context budget per prompt (capped by the backbone's context length)."""
    max_new_tokens: int = 32
    """Generation: tokens to generate (128 with chain of thought unless set)."""
    batch_tokens: int = 4096
    """Padded tokens per forward batch."""
    batch_rows: int = 16
    """Rows per forward batch."""
    seed: int = 0
    """Seed for demonstration choice and bootstrap resampling."""

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ConfigError(
                f"limit must be a positive number of examples, got {self.limit} "
                "(leave it unset to evaluate the whole split)"
            )
        if isinstance(self.shots, bool) or self.shots < 0:
            raise ConfigError(f"shots must be 0 or more demonstrations, got {self.shots}")
        for name in ("max_prompt_tokens", "max_new_tokens", "batch_tokens", "batch_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive number, got {value}")

    def budget(self) -> BatchBudget:
        return BatchBudget(tokens=self.batch_tokens, rows=self.batch_rows)

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            shots=self.shots if self.method == "few-shot" else 0,
            selection=self.selection,
            framing=self.framing,
            chat_template=self.chat_template,
            chain_of_thought=self.chain_of_thought,
            seed=self.seed,
        )


@dataclass
class Report:
    """The result of one evaluation; `to_json()` is what `--out` writes."""

    task: str
    method: str
    backbone: str
    fingerprint: str
    split: str
    n: int
    metrics: dict[str, Interval]
    baseline: dict[str, Interval] = field(default_factory=dict)
    confusion: dict[str, Any] | None = None
    seconds: float = 0.0
    examples_per_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    prompt_stats: dict[str, float] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {k: v.to_json() for k, v in self.metrics.items()}
        data["baseline"] = {k: v.to_json() for k, v in self.baseline.items()}
        return data

    def headline(self) -> str:
        """One line per metric, with the baseline beside it."""
        lines = [f"{self.task} · {self.method} · {self.split} (n={self.n}, {self.backbone})"]
        for name, value in self.metrics.items():
            extra = f"   majority baseline {self.baseline[name]}" if name in self.baseline else ""
            lines.append(f"  {name}: {value}{extra}")
        lines.append(f"  {self.seconds:.1f} s, {self.examples_per_s:.2f} examples/s")
        return "\n".join(lines)


def _prompt_stats(prompts: Sequence[RenderedPrompt]) -> dict[str, float]:
    return {
        "mean_prompt_tokens": sum(len(p.ids) for p in prompts) / max(len(prompts), 1),
        "prompts_with_dropped_demos": sum(p.dropped_demos > 0 for p in prompts),
        "truncated_inputs": sum(p.truncated_input for p in prompts),
    }


def label_candidates(task: Task, prompter: Prompter) -> list[list[int]]:
    """The token ids of each label's verbalizer (task label order), after `prompter`'s prompts;
    two labels with the same ids are refused."""
    labels = list(task.spec.labels)
    ids = [prompter.continuation_ids(task.spec.labels[label]) for label in labels]
    seen: dict[tuple[int, ...], str] = {}
    for label, tokens in zip(labels, ids, strict=True):
        if tuple(tokens) in seen:
            raise DataError(
                f"task '{task.name}': the verbalizers of labels '{seen[tuple(tokens)]}' and "
                f"'{label}' are the same tokens for this tokenizer, so they would score identically"
            )
        seen[tuple(tokens)] = label
    return ids


def task_prompter(
    backbone: Backbone, task: Task, config: EvalConfig, answer_tokens: int | None = None
) -> Prompter:
    """The prompter of `task` under `config` within the backbone's context, leaving room for
    `answer_tokens` (default: the longest label verbalizer; generation passes its
    max-new-tokens)."""
    return Prompter(
        task.spec,
        backbone.tokenizer,
        config.prompt_config(),
        max_tokens=min(config.max_prompt_tokens, backbone.max_length),
        answer_tokens=answer_tokens,
    )


def classification_prompter(
    backbone: Backbone, task: Task, config: EvalConfig
) -> tuple[Prompter, list[list[int]]]:
    """A classification task's prompter, with room for its longest verbalizer, and the token
    ids of each label's verbalizer (in the task's label order)."""
    prompter = task_prompter(backbone, task, config)
    return prompter, label_candidates(task, prompter)


def prompt_rows(
    prompts: Sequence[RenderedPrompt], conditioning: Sequence[Conditioning] | None = None
) -> list[Row]:
    """Engine rows of rendered prompts, each with its plug-in's conditioning when given."""
    if conditioning is None:
        return [Row(p.ids) for p in prompts]
    return [c.row(p.ids, p.input_start) for p, c in zip(prompts, conditioning, strict=True)]


def score_prompts(
    backbone: Backbone,
    rows: Sequence[Row],
    candidates: list[list[int]],
    config: EvalConfig,
    desc: str,
    share_text: bool = True,
) -> torch.Tensor:
    """Log-probability scores [N, K] of every label for every row (length-normalised when the
    config says so). What all rows start with is computed once (`share_text`: including the
    text all prompts have in common)."""
    budget = config.budget()
    scores = score_rows(
        backbone, rows, [candidates] * len(rows), budget, share_text=share_text, desc=desc
    )
    out = torch.zeros(len(rows), len(candidates))
    for i, s in enumerate(scores):
        out[i] = s.values(config.length_normalize)
    return out


def _content_free_logprobs(
    backbone: Backbone,
    prompter: Prompter,
    demo_sets: dict[tuple[str, ...], list[Example]],
    candidates: list[list[int]],
    config: EvalConfig,
) -> dict[tuple[str, ...], torch.Tensor]:
    """log p_cf [K] per distinct demonstration set, averaged over the content-free inputs."""
    keys = list(demo_sets)
    prompts = [
        prompter.render_content_free(demo_sets[k], content=c) for k in keys for c in CONTENT_FREE
    ]
    scores = score_prompts(backbone, prompt_rows(prompts), candidates, config, "calibrating")
    probs = torch.softmax(scores, dim=-1).view(len(keys), len(CONTENT_FREE), -1).mean(dim=1)
    return {key: torch.log(probs[i]) for i, key in enumerate(keys)}


def evaluate(
    backbone: Backbone,
    task: Task,
    config: EvalConfig = EvalConfig(),
    plugin: Plugin | None = None,
) -> Report:
    """Evaluate `task` on `config.split` on the frozen `backbone`: prompt design alone, or with
    a plug-in's conditioning of each prompt."""
    if config.method not in PROMPT_METHODS:
        raise ConfigError(
            f"unknown method '{config.method}'; expected one of {', '.join(PROMPT_METHODS)}"
        )
    examples = list(task.split(config.split))[: config.limit]
    if not examples:
        raise DataError(f"task '{task.name}' has no examples in its {config.split} split")
    if config.calibrate and task.spec.kind != "classification":
        raise ConfigError("--calibrate applies to classification tasks only")
    if config.calibrate and plugin is not None:
        raise ConfigError("--calibrate applies to prompt design, not to a trained plug-in")
    generation = task.spec.kind == "generation"
    max_new = config.max_new_tokens
    if generation and config.chain_of_thought and max_new == EvalConfig.max_new_tokens:
        max_new = 128
    prompt_config = config.prompt_config()
    start = time.perf_counter()
    candidates: list[list[int]] = []
    if generation:
        prompter = task_prompter(backbone, task, config, answer_tokens=max_new)
    else:
        prompter, candidates = classification_prompter(backbone, task, config)
    selector = None
    if prompt_config.shots > 0:
        selector = DemoSelector(
            task.train,
            task.spec,
            k=prompt_config.shots,
            selection=config.selection,
            seed=config.seed,
        )
    demos = selector.select_many(examples) if selector else [[] for _ in examples]
    prompts = [prompter.render(ex, d) for ex, d in zip(examples, demos, strict=True)]
    conditioning = None
    if plugin is not None:
        conditioning = inference_conditioning([(plugin, task.spec, ex) for ex in examples])
    rows = prompt_rows(prompts, conditioning)

    report = Report(
        task=task.name,
        method=plugin.method
        if plugin is not None
        else config.method
        + (f"-{prompt_config.shots}" if prompt_config.shots else "")
        + ("-cot" if config.chain_of_thought else ""),
        backbone=backbone.name,
        fingerprint=backbone.fingerprint,
        split=config.split,
        n=len(examples),
        metrics={},
        config=asdict(config),
        prompt_stats=_prompt_stats(prompts),
    )
    if generation:
        _finish_generation(backbone, prompter, examples, rows, config, max_new, report)
    else:
        _finish_classification(
            backbone,
            task,
            prompter,
            examples,
            demos,
            rows,
            candidates,
            config,
            report,
        )
    report.seconds = time.perf_counter() - start
    report.examples_per_s = report.n / report.seconds if report.seconds > 0 else 0.0
    return report


def _finish_classification(
    backbone: Backbone,
    task: Task,
    prompter: Prompter,
    examples: Sequence[Example],
    demos: Sequence[list[Example]],
    rows: Sequence[Row],
    candidates: list[list[int]],
    config: EvalConfig,
    report: Report,
) -> None:
    labels = list(task.spec.labels)
    desc = f"{task.name} {report.method}"
    scores = score_prompts(backbone, rows, candidates, config, desc)
    gold = [ex.label for ex in examples]

    def accuracy(rows: torch.Tensor) -> tuple[list[str], Interval]:
        predicted = [labels[int(i)] for i in rows.argmax(dim=-1)]
        correct = [float(p == g) for p, g in zip(predicted, gold, strict=True)]
        return predicted, bootstrap(correct, seed=config.seed)

    predicted, report.metrics["accuracy"] = accuracy(scores)
    if config.calibrate:
        # The same label scores, divided by their content-free probabilities: one run reports both.
        demo_sets = {tuple(d.id for d in ds): ds for ds in demos}
        cf = _content_free_logprobs(backbone, prompter, demo_sets, candidates, config)
        cf_rows = torch.stack([cf[tuple(d.id for d in ds)] for ds in demos])  # [N, K]
        scores = torch.log_softmax(scores, dim=-1) - cf_rows
        report.metrics["uncalibrated_accuracy"] = report.metrics["accuracy"]
        predicted, report.metrics["accuracy"] = accuracy(scores)
        report.method += "-calibrated"
    majority = majority_label([ex.label for ex in task.train])
    report.baseline = {
        "accuracy": bootstrap([float(g == majority) for g in gold], seed=config.seed)
    }
    report.confusion = {
        "labels": labels,
        "matrix": confusion_matrix(gold, predicted, labels),
        "macro_f1": macro_f1(gold, predicted, labels),
        "majority_label": majority,
    }
    report.predictions = [
        {"id": ex.id, "gold": g, "predicted": p, "scores": [round(float(s), 4) for s in row]}
        for ex, g, p, row in zip(examples, gold, predicted, scores, strict=True)
    ]


def _finish_generation(
    backbone: Backbone,
    prompter: Prompter,
    examples: Sequence[Example],
    rows: Sequence[Row],
    config: EvalConfig,
    max_new: int,
    report: Report,
) -> None:
    stop = ("\n\n",) if config.chain_of_thought else ("\n",)
    gen_config = GenerationConfig(max_new_tokens=max_new, stop=stop)
    desc = f"{report.task} generate"
    outputs = generate_rows(backbone, rows, gen_config, config.budget(), desc=desc)
    answers = [prompter.extract_answer(text) for text in outputs]
    refs = [ex.answers or (ex.label,) for ex in examples]
    em = [exact_match(a, r) for a, r in zip(answers, refs, strict=True)]
    f1 = [token_f1(a, r) for a, r in zip(answers, refs, strict=True)]
    report.metrics = {
        "exact_match": bootstrap(em, seed=config.seed),
        "f1": bootstrap(f1, seed=config.seed),
    }
    report.predictions = [
        {"id": ex.id, "gold": list(r), "generated": out, "answer": a}
        for ex, r, out, a in zip(examples, refs, outputs, answers, strict=True)
    ]
