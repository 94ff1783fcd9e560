"""SuperICL (Xu et al. 2023): the large model reads k demonstrations, each with a small plug-in
model's prediction and confidence beside the gold label, then the test input with the plug-in's
prediction, and gives the final label.

`run_supericl` measures it against both baselines in one pass over the same examples: in-context
learning alone (same demonstrations, no plug-in lines), the plug-in alone, SuperICL, and the
paper's ablations (no confidences; no demonstrations).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from frozenlm.errors import ConfigError, DataError
from frozenlm.evaluation.evaluate import Report
from frozenlm.metrics import Interval, bootstrap, macro_f1_interval, majority_label
from frozenlm.prompts.demos import DemoSelector
from frozenlm.prompts.render import PromptConfig, Prompter, RenderedPrompt
from frozenlm.supericl.backends import EXPLAIN_CUE, Backend, Choice
from frozenlm.supericl.small_classifier import (
    MARKER,
    ClassifierPrediction,
    ClassifierTrainConfig,
    SmallClassifier,
)
from frozenlm.tasks.spec import Example, Task

log = logging.getLogger(__name__)

VARIANTS = ("icl", "supericl", "supericl_no_confidence", "supericl_no_demos")
"""ICL alone, SuperICL, and the two ablations, in the order they run."""


@dataclass(frozen=True)
class SuperICLConfig:
    """How the SuperICL context is built and what is measured."""

    shots: int = 8
    """Demonstrations k (the paper used 32 with a 4k-token model; 8 fit every built-in task in
    2,048 tokens)."""
    selection: Literal["random", "balanced"] = "balanced"
    """A fixed seeded sample of train, or one with the same count per label."""
    plugin_name: str = "MiniLM"
    """The plug-in's name as the large model reads it ("RoBERTa-Large" in the paper)."""
    in_sample_demos: bool = False
    """Train the plug-in on the demonstrations too, as the published script did (its confidences
    on them are then inflated). By default they are left out of its training."""
    chat_template: bool = False
    """Local backend: wrap the context in the backbone's chat template (the paper used plain
    completion text)."""
    explanation: bool = False
    """Ask for a short explanation wherever SuperICL's label differs from the plug-in's."""
    variants: tuple[str, ...] = VARIANTS
    """What to run besides the plug-in alone: "icl", "supericl" and the ablations
    "supericl_no_confidence", "supericl_no_demos"."""
    split: str = "test"
    limit: int | None = None
    """Evaluate the first N examples of the split."""
    max_prompt_tokens: int = 2048
    """Context budget; demonstrations are dropped (never the test input) to fit."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ConfigError(f"shots must be >= 0, got {self.shots}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or "supericl" not in self.variants:
            raise ConfigError(
                f"variants must include 'supericl' and come from {', '.join(VARIANTS)}; "
                f"got {', '.join(self.variants)}"
            )
        if self.selection not in ("random", "balanced"):
            raise ConfigError(
                f"SuperICL demonstrations are a fixed sample: selection must be random or "
                f"balanced, not '{self.selection}'"
            )


@dataclass
class SuperICLResult:
    task: str
    backend: str
    config: SuperICLConfig
    plugin: dict[str, Any]
    n: int
    metrics: dict[str, float | None]
    intervals: dict[str, Interval]
    context_tokens: dict[str, float]
    """Mean prompt tokens per prediction, per variant."""
    demos: list[str]
    """Ids of the demonstrations."""
    predictions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "backend": self.backend,
            "n": self.n,
            "metrics": self.metrics,
            "intervals": {k: v.to_json() for k, v in self.intervals.items()},
            "context_tokens": self.context_tokens,
            "plugin": self.plugin,
            "demos": self.demos,
            "config": asdict(self.config),
            "seconds": self.seconds,
            "calls": self.calls,
        }

    def headline(self) -> str:
        m = self.metrics
        lines = [f"{self.task} · SuperICL · {self.config.split} (n={self.n}, {self.backend})"]
        for key in ("icl", "plugin", *VARIANTS[1:]):
            if f"{key}_accuracy" in self.intervals:
                lines.append(f"  {key}_accuracy: {self.intervals[key + '_accuracy']}")
        rate, right = m["override_rate"], m["override_accuracy"]
        lines.append(
            f"  override_rate: {rate:.3f}   override_accuracy: "
            + ("n/a (no overrides)" if right is None else f"{right:.3f}")
        )
        lines.append(f"  majority baseline: {m['majority_accuracy']:.3f}   {self.seconds:.1f} s")
        return "\n".join(lines)


def pick_demos(task: Task, config: SuperICLConfig) -> list[Example]:
    """The k demonstrations from train, fixed for the whole run."""
    if config.shots and not task.train:
        raise DataError(f"task '{task.name}' has no training examples for demonstrations")
    selector = DemoSelector(
        task.train, task.spec, k=config.shots, selection=config.selection, seed=config.seed
    )
    probe = Example(id="<no example>", fields={}, label="")
    return selector.select(probe)


def plugin_note(name: str, verbalizer: str, confidence: float | None) -> str:
    """The line SuperICL adds after an input: the plug-in's prediction (and confidence)."""
    note = f"{name} prediction: {verbalizer}"
    return note if confidence is None else note + f" (confidence {confidence:.2f})"


def run_supericl(
    task: Task,
    backend: Backend,
    classifier: SmallClassifier,
    demos: Sequence[Example],
    tokenizer: Any,
    config: SuperICLConfig = SuperICLConfig(),
    max_tokens: int | None = None,
) -> SuperICLResult:
    """ICL alone, the plug-in alone, SuperICL and its ablations on the same examples.

    `tokenizer` measures the context budget (`max_tokens`, default `config.max_prompt_tokens`):
    the backbone's own for the local backend, an approximation for a remote model.
    """
    if task.spec.kind != "classification":
        raise ConfigError(f"SuperICL needs a classification task; '{task.name}' is generation")
    examples = list(task.split(config.split))[: config.limit]
    if not examples:
        raise DataError(f"task '{task.name}' has no examples in its {config.split} split")
    start = time.perf_counter()
    predicted = dict(zip(
        [ex.id for ex in [*demos, *examples]],
        classifier.predict([*demos, *examples]),
        strict=True,
    ))  # fmt: skip
    verbalizers = task.spec.labels

    def annotate(with_confidence: bool) -> Callable[[Example], str]:
        def note(example: Example) -> str:
            p = predicted[example.id]
            confidence = p.confidence if with_confidence else None
            return plugin_note(config.plugin_name, verbalizers[p.label], confidence)

        return note

    contexts: dict[str, tuple[Callable[[Example], str] | None, Sequence[Example]]] = {
        "icl": (None, demos),
        "supericl": (annotate(True), demos),
        "supericl_no_confidence": (annotate(False), demos),
        "supericl_no_demos": (annotate(True), []),
    }
    variants = {name: contexts[name] for name in VARIANTS if name in config.variants}
    budget = max_tokens or config.max_prompt_tokens
    answer = _answer_tokens(tokenizer, verbalizers.values())
    choices: dict[str, list[Choice]] = {}
    prompts: dict[str, list[RenderedPrompt]] = {}
    for name, (note, shown) in variants.items():
        prompt_config = PromptConfig(
            shots=len(shown),
            framing="label",
            chat_template=backend.uses_chat_template,
            seed=config.seed,
        )
        prompter = Prompter(
            task.spec, tokenizer, prompt_config, max_tokens=budget, answer_tokens=answer,
            annotate=note,
        )  # fmt: skip
        prompts[name] = [prompter.render(ex, shown) for ex in examples]
        log.info("%s: %s", task.name, name)
        choices[name] = backend.choose(task, prompter, prompts[name])

    rows = _rows(examples, predicted, choices)
    if config.explanation:
        _explain(backend, rows, prompts["supericl"], verbalizers)
    result = SuperICLResult(
        task=task.name,
        backend=backend.name,
        config=config,
        plugin=_classifier_summary(classifier),
        n=len(examples),
        metrics={},
        intervals={},
        context_tokens={
            name: sum(len(p.ids) for p in ps) / len(ps) for name, ps in prompts.items()
        },
        demos=[d.id for d in demos],
        predictions=rows,
    )
    _score(result, task, examples, rows, choices, config.seed)
    # What the demonstrations teach: how often the plug-in shown in them was right.
    right = [predicted[d.id].label == d.label for d in demos]
    result.metrics["plugin_demo_accuracy"] = sum(right) / len(right) if right else None
    result.seconds = time.perf_counter() - start
    result.calls = {
        "requests": backend.calls,
        "cache_hits": backend.cache_hits,
    }
    dropped = sum(p.dropped_demos > 0 for p in prompts["supericl"])
    if dropped:
        log.warning(
            "%d of %d SuperICL prompts dropped demonstrations to fit %d tokens",
            dropped,
            len(examples),
            budget,
        )
    return result


def _answer_tokens(tokenizer: Any, verbalizers: Any) -> int:
    """Tokens to reserve for the longest answer (with a leading space, plus one spare)."""
    ids = [tokenizer(" " + v, add_special_tokens=False)["input_ids"] for v in verbalizers]
    return max(len(i) for i in ids) + 1


def _rows(
    examples: Sequence[Example],
    plugin: dict[str, ClassifierPrediction],
    choices: dict[str, list[Choice]],
) -> list[dict[str, Any]]:
    rows = []
    for i, ex in enumerate(examples):
        p = plugin[ex.id]
        row: dict[str, Any] = {
            "id": ex.id,
            "input": dict(ex.fields),
            "gold": ex.label,
            "plugin": p.label,
            "plugin_confidence": round(p.confidence, 4),
        }
        for name, chosen in choices.items():
            row[name] = chosen[i].label
            if chosen[i].raw is not None:
                row[f"{name}_answer"] = chosen[i].raw
        row["override"] = row["supericl"] != p.label
        rows.append(row)
    return rows


def _explain(
    backend: Backend,
    rows: list[dict[str, Any]],
    prompts: Sequence[RenderedPrompt],
    verbalizers: Any,
) -> None:
    """Ask why, wherever SuperICL's label differs from the plug-in's; stored with the row."""
    asked = [i for i, row in enumerate(rows) if row["override"] and row["supericl"] is not None]
    texts = [prompts[i].text + " " + verbalizers[rows[i]["supericl"]] + EXPLAIN_CUE for i in asked]
    for i, explanation in zip(asked, backend.explain(texts), strict=True):
        rows[i]["explanation"] = explanation


def _score(
    result: SuperICLResult,
    task: Task,
    examples: Sequence[Example],
    rows: list[dict[str, Any]],
    choices: dict[str, list[Choice]],
    seed: int,
) -> None:
    gold = [ex.label for ex in examples]
    majority = majority_label([ex.label for ex in task.train])
    predicted = {name: [r[name] for r in rows] for name in ("plugin", *choices)}  # None: no match
    predicted["majority"] = [majority] * len(rows)
    for name, answers in predicted.items():
        hits = [float(p == g) for p, g in zip(answers, gold, strict=True)]
        result.intervals[f"{name}_accuracy"] = bootstrap(hits, seed=seed)
    for name, answers in predicted.items():
        f1 = macro_f1_interval(gold, answers, list(task.spec.labels), seed=seed)
        result.intervals[f"{name}_macro_f1"] = f1
    overrides = [r for r in rows if r["override"]]
    metrics: dict[str, float | None] = {k: v.value for k, v in result.intervals.items()}
    metrics["override_rate"] = len(overrides) / len(rows)
    metrics["override_accuracy"] = (
        sum(r["supericl"] == r["gold"] for r in overrides) / len(overrides) if overrides else None
    )
    metrics["overrides"] = len(overrides)
    for name, chosen in choices.items():
        metrics[f"{name}_unmatched"] = sum(c.label is None for c in chosen)
    result.metrics = metrics


def _classifier_summary(classifier: SmallClassifier) -> dict[str, Any]:
    keep = ("name", "encoder", "train_examples", "train_seconds", "dev_accuracy", "best_epoch")
    return {k: classifier.info[k] for k in keep if k in classifier.info} | {
        "parameters": classifier.num_parameters
    }


def as_report(result: SuperICLResult, variant: str, fingerprint: str = "") -> Report:
    """One variant of a SuperICL run ("plugin", "icl", "supericl", ...) as an `evaluate.Report`,
    the shape `compare` reads."""
    key = f"{variant}_accuracy"
    if key not in result.intervals:
        raise ConfigError(f"the SuperICL run has no variant '{variant}'")
    tokens = 0.0 if variant == "plugin" else result.context_tokens[variant]
    return Report(
        task=result.task,
        method=variant,
        backbone=result.backend,
        fingerprint=fingerprint,
        split=result.config.split,
        n=result.n,
        metrics={
            "accuracy": result.intervals[key],
            "macro_f1": result.intervals[f"{variant}_macro_f1"],
        },
        baseline={
            "accuracy": result.intervals["majority_accuracy"],
            "macro_f1": result.intervals["majority_macro_f1"],
        },
        seconds=result.seconds,
        examples_per_s=result.n / result.seconds if result.seconds else 0.0,
        config=asdict(result.config),
        prompt_stats={"mean_prompt_tokens": tokens},
        predictions=[
            {"id": row["id"], "gold": row["gold"], "predicted": row[variant]}
            for row in result.predictions
        ],
    )


def plugin_report(
    plugin: SmallClassifier, task: Task, examples: Sequence[Example], seed: int = 0
) -> Report:
    """The plug-in classifier alone on `examples`, as an `evaluate.Report`."""
    start = time.perf_counter()
    predicted = plugin.predict(examples)
    seconds = time.perf_counter() - start
    majority = majority_label([ex.label for ex in task.train])
    gold = [ex.label for ex in examples]
    answers = [p.label for p in predicted]
    labels = list(task.spec.labels)
    hits = [float(p == g) for p, g in zip(answers, gold, strict=True)]
    chance = [float(g == majority) for g in gold]
    return Report(
        task=task.name,
        method="plugin",
        backbone=plugin.name,
        fingerprint="",
        split="",
        n=len(examples),
        metrics={
            "accuracy": bootstrap(hits, seed=seed),
            "macro_f1": macro_f1_interval(gold, answers, labels, seed=seed),
        },
        baseline={
            "accuracy": bootstrap(chance, seed=seed),
            "macro_f1": macro_f1_interval(gold, [majority] * len(gold), labels, seed=seed),
        },
        seconds=seconds,
        examples_per_s=len(examples) / seconds if seconds > 0 else 0.0,
        prompt_stats={"mean_prompt_tokens": 0.0},
        predictions=[
            {"id": ex.id, "gold": g, "predicted": p}
            for ex, g, p in zip(examples, gold, answers, strict=True)
        ],
    )


# ------------------------------------------------------------------ the whole job
def plugin_identity(
    task: Task, excluded: list[str], train: ClassifierTrainConfig, encoder: str | None
) -> dict[str, Any]:
    """What makes a trained plug-in reusable for a run: the same data, exclusions and recipe."""
    return {
        "task": task.name,
        "split_hash": task.split_hash(),
        "excluded_ids": sorted(excluded),
        "config": asdict(train),
        "encoder": encoder or "default",
    }


def get_classifier(
    task: Task,
    demos: list[Example],
    config: SuperICLConfig,
    *,
    plugin: str = "default",
    train: ClassifierTrainConfig = ClassifierTrainConfig(),
    save_to: str | Path | None = None,
    encoder: str | None = None,
) -> SmallClassifier:
    """The small classifier: the user's folder (`plugin` = a path), or the default MiniLM one:
    loaded from `save_to` when it was trained the same way, else trained and saved there."""
    if plugin != "default":
        path = Path(plugin)
        if not path.exists():
            raise ConfigError(f"--plugin '{plugin}' is neither 'default' nor an existing folder")
        return SmallClassifier.load(path, task.spec)
    excluded = [] if config.in_sample_demos else [d.id for d in demos]
    identity = plugin_identity(task, excluded, train, encoder)
    if save_to is not None and (Path(save_to) / MARKER).is_file():
        saved = json.loads((Path(save_to) / MARKER).read_text())
        if saved.get("identity") == identity:
            log.warning("reusing the plug-in trained earlier in %s", save_to)
            return SmallClassifier.load(save_to, task.spec)
    trained = SmallClassifier.train(task, train, exclude=excluded, encoder=encoder)
    trained.info["identity"] = identity
    if save_to is not None:
        trained.save(save_to)
    return trained


def supericl_job(
    task: Task,
    backend: Backend,
    tokenizer: Any,
    config: SuperICLConfig,
    *,
    plugin: str = "default",
    train: ClassifierTrainConfig = ClassifierTrainConfig(),
    save_plugin_to: str | Path | None = None,
    max_tokens: int | None = None,
) -> SuperICLResult:
    demos = pick_demos(task, config)
    classifier = get_classifier(
        task, demos, config, plugin=plugin, train=train, save_to=save_plugin_to
    )
    return run_supericl(task, backend, classifier, demos, tokenizer, config, max_tokens)
