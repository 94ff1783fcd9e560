"""`evaluate`: examples in, a `Report` out. Pure: it writes no files.

Classification is rank classification over the label verbalizers (optionally length-normalised
and contextually calibrated, see `calibration`), scored by accuracy and macro-F1; generation is
greedy decoding scored by exact match and token F1. A majority-class baseline is always computed
beside classification results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import BatchBudget, Row, generate_rows_detailed, score_rows
from frozenlm.engine.generation import GenerationConfig
from frozenlm.errors import ConfigError, DataError
from frozenlm.evaluation.calibration import (
    CALIBRATIONS,
    Calibration,
    Choice,
    calibrate,
    calibration_warning,
    choose_on_dev,
    label_prior,
    log_prior_ratio,
)
from frozenlm.metrics import (
    Interval,
    bootstrap,
    confusion_matrix,
    exact_match,
    macro_f1,
    macro_f1_interval,
    majority_label,
    token_f1,
)
from frozenlm.plugins.protocol import Conditioning, Plugin, inference_conditioning
from frozenlm.prompts.demos import DemoSelector
from frozenlm.prompts.render import PromptConfig, Prompter, RenderedPrompt
from frozenlm.tasks import Example, Task, TaskSpec

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
    """Contextual calibration of the label scores (Zhao et al. 2021), as `calibration` says."""
    calibration: Calibration = "dev"
    """With `calibrate`: "uniform" divides label probabilities by those on content-free inputs
    (Zhao et al.); "prior" also multiplies them by the train split's add-one smoothed label
    shares (the same predictions as uniform on a balanced train split); "dev" picks no
    calibration, uniform or prior per task by macro-F1 on `dev_limit` dev examples. Default dev:
    on two backbones x a balanced and an 87%-one-class task it was never more than 0.025
    macro-F1 below the best of the three, where uniform fell to 0.565 accuracy against a 0.870
    majority class and prior collapsed to the majority class (docs/results/quality)."""
    dev_limit: int | None = 200
    """Dev examples scored to choose the calibration (calibration="dev"); None: all of dev."""
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
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(
                f"unknown calibration '{self.calibration}'; expected one of "
                f"{', '.join(CALIBRATIONS)}"
            )
        if self.dev_limit is not None and (isinstance(self.dev_limit, bool) or self.dev_limit < 1):
            raise ConfigError(
                f"dev_limit must be a positive number of examples, got {self.dev_limit} "
                "(leave it unset to score the whole dev split)"
            )
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
    calibration: dict[str, Any] | None = None
    """With calibration: the mode asked for, the one applied (`chosen`; dev picks it), the
    train label prior and, for dev, each choice's dev macro-F1 and the seconds the choice took
    (in `seconds`, not in `examples_per_s`: it is paid once per task, not per prediction)."""
    warnings: list[str] = field(default_factory=list)
    """Sentences a reader must not miss, e.g. calibration at or below the majority class."""

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
        if self.calibration is not None:
            lines.append(f"  calibration: {describe_calibration(self.calibration)}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append(f"  {self.seconds:.1f} s, {self.examples_per_s:.2f} examples/s")
        return "\n".join(lines)


def describe_calibration(calibration: dict[str, Any]) -> str:
    """E.g. "dev -> prior (dev macro-F1 over 200: none 0.412, uniform 0.603, prior 0.655)"."""
    if calibration["mode"] != "dev":
        return str(calibration["mode"])
    dev = ", ".join(f"{k} {v:.3f}" for k, v in calibration["dev_macro_f1"].items())
    return f"dev -> {calibration['chosen']} (dev macro-F1 over {calibration['dev_n']}: {dev})"


def _prompt_stats(prompts: Sequence[RenderedPrompt]) -> dict[str, float]:
    return {
        "mean_prompt_tokens": sum(len(p.ids) for p in prompts) / max(len(prompts), 1),
        "prompts_with_dropped_demos": sum(p.dropped_demos > 0 for p in prompts),
        "truncated_inputs": sum(p.truncated_input for p in prompts),
    }


def label_candidates(task: Task | TaskSpec, prompter: Prompter) -> list[list[int]]:
    """The token ids of each label's verbalizer (task label order), after `prompter`'s prompts;
    two labels with the same ids are refused."""
    spec = task.spec if isinstance(task, Task) else task
    labels = list(spec.labels)
    ids = [prompter.continuation_ids(spec.labels[label]) for label in labels]
    seen: dict[tuple[int, ...], str] = {}
    for label, tokens in zip(labels, ids, strict=True):
        if tuple(tokens) in seen:
            raise DataError(
                f"task '{spec.name}': the verbalizers of labels '{seen[tuple(tokens)]}' and "
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


def row_positions(row: Row) -> int:
    """Positions the backbone computes for a row's prompt: its ids, soft tokens and key/value
    prefix (what an answer costs, before any generated token)."""
    soft = 0 if row.soft is None else int(row.soft.shape[0])
    return len(row.ids) + soft + (0 if row.kv is None else row.kv.length)


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


def _demo_key(demos: Sequence[Example]) -> tuple[str, ...]:
    return tuple(d.id for d in demos)


def _content_free_logprobs(
    backbone: Backbone,
    prompter: Prompter,
    demos: Sequence[Sequence[Example]],
    candidates: list[list[int]],
    config: EvalConfig,
) -> dict[tuple[str, ...], torch.Tensor]:
    """log p_cf [K] per distinct demonstration set of `demos`, averaged over the content-free
    inputs."""
    demo_sets = {_demo_key(ds): ds for ds in demos}
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
    if config.calibrate and config.calibration == "dev":
        if config.split == "dev":
            raise ConfigError(
                "calibration 'dev' chooses on the dev split, so it cannot also be scored on it; "
                "evaluate the test split or calibrate with 'uniform' or 'prior'"
            )
        if not task.dev:
            raise DataError(
                f"task '{task.name}' has no dev examples to choose its calibration on; "
                "calibrate with 'uniform' or 'prior'"
            )
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
            selector,
            examples,
            demos,
            rows,
            candidates,
            config,
            report,
        )
    report.seconds = time.perf_counter() - start
    scoring = report.seconds - (report.calibration or {}).get("dev_seconds", 0.0)
    report.examples_per_s = report.n / scoring if scoring > 0 else 0.0
    return report


def _predict(scores: torch.Tensor, labels: Sequence[str]) -> list[str]:
    """The label of the highest score of each row of `scores` [N, K]."""
    return [labels[int(i)] for i in scores.argmax(dim=-1)]


def _classification_metrics(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str], seed: int
) -> dict[str, Interval]:
    correct = [float(p == g) for p, g in zip(predicted, gold, strict=True)]
    return {
        "accuracy": bootstrap(correct, seed=seed),
        "macro_f1": macro_f1_interval(gold, predicted, labels, seed=seed),
    }


def _finish_classification(
    backbone: Backbone,
    task: Task,
    prompter: Prompter,
    selector: DemoSelector | None,
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
    predicted = _predict(scores, labels)
    report.metrics = _classification_metrics(gold, predicted, labels, config.seed)
    if config.calibrate:
        # The same label scores, calibrated: one run reports both.
        uncalibrated = report.metrics
        scores, report.calibration = _calibrate(
            backbone, task, prompter, selector, demos, scores, candidates, config
        )
        predicted = _predict(scores, labels)
        report.metrics = _classification_metrics(gold, predicted, labels, config.seed)
        report.metrics |= {f"uncalibrated_{k}": v for k, v in uncalibrated.items()}
        report.method += "-calibrated"
    majority = majority_label([ex.label for ex in task.train])
    report.baseline = _classification_metrics(gold, [majority] * len(gold), labels, config.seed)
    if report.calibration is not None:
        _warn_if_calibration_fails(report, report.calibration, majority)
    report.confusion = {
        "labels": labels,
        "matrix": confusion_matrix(gold, predicted, labels),
        "macro_f1": macro_f1(gold, predicted, labels),
        "majority_label": majority,
    }
    report.predictions = [
        {
            "id": ex.id,
            "gold": g,
            "predicted": p,
            "scores": [round(float(s), 4) for s in row],
            "positions": row_positions(prompt_row),
        }
        for ex, g, p, row, prompt_row in zip(examples, gold, predicted, scores, rows, strict=True)
    ]


def _calibrate(
    backbone: Backbone,
    task: Task,
    prompter: Prompter,
    selector: DemoSelector | None,
    demos: Sequence[list[Example]],
    scores: torch.Tensor,
    candidates: list[list[int]],
    config: EvalConfig,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The test rows' scores [N, K] calibrated as `config.calibration` says (dev: as the dev
    split chooses), and what was applied (`Report.calibration`)."""
    labels = list(task.spec.labels)
    train_labels = [ex.label for ex in task.train]
    prior = log_prior_ratio(train_labels, labels)  # [K]

    def variants(
        raw: torch.Tensor, row_demos: Sequence[list[Example]]
    ) -> dict[Choice, torch.Tensor]:
        cf = _content_free_logprobs(backbone, prompter, row_demos, candidates, config)
        content_free = torch.stack([cf[_demo_key(ds)] for ds in row_demos])  # [N, K]
        return {
            "none": raw,
            "uniform": calibrate(raw, content_free),
            "prior": calibrate(raw, content_free, prior),
        }

    record: dict[str, Any] = {"mode": config.calibration}
    chosen: Choice = "uniform" if config.calibration == "uniform" else "prior"
    if config.calibration == "dev":
        start = time.perf_counter()
        dev = list(task.dev)[: config.dev_limit]
        dev_demos = selector.select_many(dev) if selector else [[] for _ in dev]
        prompts = [prompter.render(ex, d) for ex, d in zip(dev, dev_demos, strict=True)]
        dev_scores = score_prompts(
            backbone, prompt_rows(prompts), candidates, config, f"{task.name} dev calibration"
        )
        dev_predicted = {k: _predict(v, labels) for k, v in variants(dev_scores, dev_demos).items()}
        chosen, dev_f1 = choose_on_dev([ex.label for ex in dev], dev_predicted, labels)
        seconds = time.perf_counter() - start
        record |= {"dev_n": len(dev), "dev_macro_f1": dev_f1, "dev_seconds": seconds}
    record |= {"chosen": chosen, "prior": label_prior(train_labels, labels)}
    return variants(scores, demos)[chosen], record


def _warn_if_calibration_fails(report: Report, calibration: dict[str, Any], majority: str) -> None:
    """Log and record one sentence when calibration leaves the accuracy at or below the
    majority class's or below the uncalibrated accuracy."""
    mode = calibration["mode"]
    applied = f"dev chose {calibration['chosen']}" if mode == "dev" else mode
    message = calibration_warning(
        f"{report.task} {report.method} ({applied})",
        report.metrics["accuracy"].value,
        report.metrics["uncalibrated_accuracy"].value,
        report.baseline["accuracy"].value,
        majority,
    )
    if message is not None:
        log.warning(message)
        report.warnings.append(message)


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
    made = generate_rows_detailed(backbone, rows, gen_config, config.budget(), desc=desc)
    outputs = [g.text for g in made]
    answers = [prompter.extract_answer(text) for text in outputs]
    refs = [ex.answers or (ex.label,) for ex in examples]
    em = [exact_match(a, r) for a, r in zip(answers, refs, strict=True)]
    f1 = [token_f1(a, r) for a, r in zip(answers, refs, strict=True)]
    report.metrics = {
        "exact_match": bootstrap(em, seed=config.seed),
        "f1": bootstrap(f1, seed=config.seed),
    }
    report.predictions = [
        {
            "id": ex.id,
            "gold": list(r),
            "generated": out,
            "answer": a,
            # the mean log-probability of the generated tokens: the answer's confidence
            "logprob": round(sum(g.logprobs) / len(g.logprobs), 4) if g.logprobs else 0.0,
            "positions": row_positions(row) + len(g.tokens),
        }
        for ex, r, out, a, g, row in zip(examples, refs, outputs, answers, made, rows, strict=True)
    ]
