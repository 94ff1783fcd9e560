"""Every way of specialising the frozen backbone, under one small protocol.

A `Method` is fitted on a task's train (and dev) split and returns a `Fitted`: what to evaluate
with (a backbone, possibly a fine-tuned copy, an optional plug-in, an `EvalConfig`) and what it
cost (trainable parameters, labelled examples, training seconds, bytes a user must store per
task). `METHODS` is the one registry `compare` reads; a method that cannot run on a task says why
(`unavailable`) and is reported as skipped, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.devices import seeded_rng
from frozenlm.evaluation.evaluate import EvalConfig, Report
from frozenlm.plugins.checkpoint import load_checkpoint, save_checkpoint
from frozenlm.plugins.connector import ConnectorConfig
from frozenlm.plugins.prefix import PrefixConfig
from frozenlm.plugins.prompt_generator import PromptGeneratorConfig
from frozenlm.plugins.protocol import Plugin
from frozenlm.plugins.registry import load_plugin, new_plugin, plugin_meta, recipe
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.supericl.backends import LocalBackend
from frozenlm.supericl.run import (
    SuperICLConfig,
    as_report,
    pick_demos,
    plugin_report,
    run_supericl,
)
from frozenlm.supericl.small_classifier import (
    ClassifierTrainConfig,
    EncoderTraining,
    SmallClassifier,
)
from frozenlm.tasks import Example, Task
from frozenlm.training.config import TrainConfig
from frozenlm.training.finetune import FineTuned, LoraSettings, full_copy, lora_copy
from frozenlm.training.loop import train
from frozenlm.training.peft_prompt import (
    PeftPrefixConfig,
    PeftPromptConfig,
    train_peft_prefix,
    train_peft_prompt,
)


@dataclass(frozen=True)
class Budget:
    """How much compute a comparison may spend."""

    name: str
    steps: int
    """Optimizer steps of every trained method."""
    batch_size: int
    """Rows per step."""
    eval_every: int
    """Dev evaluation (early stopping, best checkpoint) every N steps."""
    dev_limit: int
    """Dev examples per evaluation."""
    test_limit: int | None
    """Test examples per task (None: the whole test split)."""
    train_sizes: tuple[int | None, ...]
    """Labelled training examples for the learning curves (None: the whole train split)."""
    shots: int = 4
    """Demonstrations of few-shot prompting."""
    partner_methods: tuple[str, ...] = ("zero-shot", "few-shot", "soft-prompt", "lora", "full-ft")
    """Methods also fitted on the domain-shift partner task (the reverse direction)."""

    def describe(self) -> str:
        sizes = ", ".join("all" if s is None else str(s) for s in self.train_sizes)
        test = "whole test split" if self.test_limit is None else f"first {self.test_limit}"
        return (
            f"{self.name}: {self.steps} steps x batch {self.batch_size}, dev every "
            f"{self.eval_every} steps on {self.dev_limit} examples, test: {test}, "
            f"train sizes {sizes}, {self.shots}-shot prompts"
        )


BUDGETS = {
    "quick": Budget("quick", steps=20, batch_size=4, eval_every=10, dev_limit=24,
                    test_limit=80, train_sizes=(16, 128),
                    partner_methods=("zero-shot", "soft-prompt", "lora")),
    "full": Budget("full", steps=150, batch_size=8, eval_every=25, dev_limit=200,
                   test_limit=400, train_sizes=(16, 64, 256, None)),
}  # fmt: skip


@dataclass
class Fitted:
    """A fitted method: what to evaluate with and what fitting it cost."""

    backbone: Backbone
    eval_config: EvalConfig
    plugin: Plugin | None = None
    trainable_parameters: int = 0
    labelled_train: int = 0
    labelled_dev: int = 0
    train_seconds: float = 0.0
    stored_bytes: int = 0
    """What a user keeps per task: plug-in or model files, or the prompt text."""
    shares_backbone: bool = True
    """Served from the one frozen backbone (False: needs its own model copy per task)."""
    best_step: int | None = None
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """Divergences the training loop caught and recovered from (see `training.loop`)."""
    evaluator: Callable[[Task, EvalConfig], Report] | None = None
    """How to evaluate, for methods that are not a prompt or plug-in on a backbone (the plug-in
    classifier, SuperICL); None: `evaluate(backbone, task, config, plugin)`."""


class Method(Protocol):
    name: str
    trains: bool
    """Whether it learns from the train split (then it gets a learning curve)."""

    def unavailable(self, task: Task) -> str | None:
        """Why this method cannot run on `task`, or None."""
        ...

    def fit(
        self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path
    ) -> Fitted: ...


def _prompt_bytes(task: Task, demos: int = 0) -> int:
    """Bytes of the prompt text a prompt-design method stores: instruction, template, demos."""
    text = task.spec.instruction + task.spec.template
    for ex in task.train[:demos]:
        text += task.spec.format_input(ex) + task.spec.labels.get(ex.label, "")
    return len(text.encode("utf-8"))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _prompt_design(task: Task, config: EvalConfig) -> tuple[EvalConfig, int]:
    """`config` calibrated for a classification task as `EvalConfig.calibration` says by
    default (the measured choice: per task on dev), and the labelled dev examples that uses;
    uniform on a task without a dev split."""
    if task.spec.kind != "classification":
        return config, 0
    if config.calibration != "dev":
        return replace(config, calibrate=True), 0
    if not task.dev:
        return replace(config, calibrate=True, calibration="uniform"), 0
    return replace(config, calibrate=True), len(task.dev[: config.dev_limit])


class ZeroShot:
    name = "zero-shot"
    trains = False

    def unavailable(self, task: Task) -> str | None:
        return None

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        config, dev = _prompt_design(task, EvalConfig(method="zero-shot", seed=seed))
        return Fitted(backbone, config, labelled_dev=dev, stored_bytes=_prompt_bytes(task))


class FewShot:
    name = "few-shot"
    trains = False

    def unavailable(self, task: Task) -> str | None:
        return None if task.train else "the task has no training examples for demonstrations"

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        shots = min(budget.shots, len(task.train))
        config, dev = _prompt_design(task, EvalConfig(method="few-shot", shots=shots, seed=seed))
        return Fitted(
            backbone,
            config,
            labelled_train=shots,
            labelled_dev=dev,
            stored_bytes=_prompt_bytes(task, shots),
        )


def _train_config(budget: Budget, seed: int) -> TrainConfig:
    return TrainConfig(
        steps=budget.steps,
        batch_size=budget.batch_size,
        eval_every=budget.eval_every,
        eval_limit=budget.dev_limit,
        seed=seed,
        save_last=False,  # compare resumes cell by cell, not step by step
    )


class TrainedPlugin:
    """A plug-in method of the registry trained on the task with the one loop and its kind's
    recipe (`registry.recipe`: AdamW 1e-2 for soft and deep prompts; Lester's Adafactor 0.3 for
    an ID-PT generator's base prompt and 1/300 of it for its network), `train` overriding it."""

    trains = True

    def __init__(
        self, name: str, config: Mapping[str, Any], train: Mapping[str, Any] | None = None
    ) -> None:
        self.name, self.config = name, dict(config)
        self.train_overrides = dict(train or {})

    def unavailable(self, task: Task) -> str | None:
        return None

    def train_config(self, budget: Budget, seed: int) -> TrainConfig:
        fields = recipe(self.name) | self.train_overrides
        return replace(_train_config(budget, seed), **fields)

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        plugin = new_plugin(self.name, self.config, backbone, [task.spec], seed)
        meta = plugin_meta(self.name, self.config, backbone, [task], [task.name])
        config = self.train_config(budget, seed)
        result = train(backbone, plugin, [task], config, work, meta=meta)
        best, _ = load_plugin(work, backbone)
        return Fitted(
            backbone,
            EvalConfig(seed=seed),
            plugin=best,
            trainable_parameters=plugin.num_trainable(),
            labelled_train=len(task.train),
            labelled_dev=min(budget.dev_limit, len(task.dev)),
            train_seconds=result.seconds,
            stored_bytes=folder_bytes(work / "best"),
            best_step=result.best_step,
            recoveries=result.recoveries,
        )


class PeftReference:
    """A PEFT prompt-learning method trained with PEFT's own wrapper and the settings of its
    examples (`training.peft_prompt`) on the rows frozenlm's loop would see, then evaluated as
    the frozenlm plug-in of `kind` it converts to."""

    trains = True

    def __init__(
        self,
        name: str,
        kind: str,
        settings: Callable[..., Any],
        run: Callable[[Backbone, Task, Any], Any],
    ) -> None:
        self.name, self.kind, self.settings, self.run = name, kind, settings, run

    def unavailable(self, task: Task) -> str | None:
        return None

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        config = self.settings(steps=budget.steps, batch_size=budget.batch_size, seed=seed)
        result = self.run(backbone, task, config)
        plugin = result.plugin
        meta = plugin_meta(self.kind, to_json(plugin.config), backbone, [task], [task.name])
        save_checkpoint(work / "best", plugin.tensors(), meta)
        return Fitted(
            backbone,
            EvalConfig(seed=seed),
            plugin=plugin,
            trainable_parameters=sum(t.numel() for t in plugin.tensors().values()),
            labelled_train=len(task.train),
            train_seconds=result.seconds,
            stored_bytes=folder_bytes(work / "best"),
        )


class _FineTuning:
    """Shared by LoRA and full fine-tuning: train a copy with the one loop, keep its best."""

    name = ""
    trains = True
    lr = 0.0

    def copy(self, backbone: Backbone) -> tuple[Backbone, FineTuned]:
        raise NotImplementedError

    def unavailable(self, task: Task) -> str | None:
        return None

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        with seeded_rng(seed, backbone.device):  # seeded adapter init; the caller's RNG untouched
            tuned, weights = self.copy(backbone)
        config = replace(
            _train_config(budget, seed), optimizer="adamw", lr=self.lr, weight_decay=0.0
        )
        meta = {"kind": self.name, "backbone": {"fingerprint": backbone.fingerprint}}
        result = train(tuned, weights, [task], config, work, meta=meta)
        weights.load_tensors(load_checkpoint(work / "best").tensors)
        tuned.model.requires_grad_(False)
        return Fitted(
            tuned,
            EvalConfig(seed=seed),
            # the copy's own weights carry the task: it is evaluated as prompt design is
            trainable_parameters=weights.num_trainable(),
            labelled_train=len(task.train),
            labelled_dev=min(budget.dev_limit, len(task.dev)),
            train_seconds=result.seconds,
            stored_bytes=folder_bytes(work / "best"),
            shares_backbone=self.name == "lora",
            best_step=result.best_step,
            recoveries=result.recoveries,
        )


class Lora(_FineTuning):
    """PEFT LoRA on the attention projections (r=8), AdamW lr 1e-3."""

    name = "lora"
    lr = 1e-3

    def __init__(self, settings: LoraSettings | None = None) -> None:
        self.settings = settings or LoraSettings()

    def copy(self, backbone: Backbone) -> tuple[Backbone, FineTuned]:
        return lora_copy(backbone, self.settings)


class FullFineTuning(_FineTuning):
    """Every backbone weight trained on a copy, AdamW lr 5e-5."""

    name = "full-ft"
    lr = 5e-5

    def copy(self, backbone: Backbone) -> tuple[Backbone, FineTuned]:
        return full_copy(backbone)


PLUGIN_EPOCHS = 100
"""Full-batch passes of compare's plug-in head over its rows (30 to 1000 passes, and lr 3e-3
to 3e-2, moved the quick cells' mean accuracy by under 0.01)."""


def _plugin_train_config(budget: Budget, size: int, seed: int) -> ClassifierTrainConfig:
    """The plug-in classifier of compare: a linear head over the frozen MiniLM's sentence
    embeddings, trained on all of the cell's `size` labelled rows in every step for
    `PLUGIN_EPOCHS` passes. The budget limits labelled examples, not passes: once the
    embeddings are computed, a pass costs microseconds.

    Measured on the quick cells (sentiment, trec, topic x 16 and 128 rows x 3 seeds, the first
    400 test examples): fine-tuning MiniLM on `steps` x `batch_size` rows (one epoch at 128
    rows) ended at 0.41 mean accuracy on sentiment at 128 rows, nearly all one class, below the
    majority class (0.59); the head ends at 0.66 (trec 0.68, topic 0.94) after 1-12 s of
    training. Fine-tuning for 10-12 epochs reached 0.65 on sentiment and 0.82 on trec (128
    rows, seed 0) in 6-15 minutes on 2 shared cores, and a 24-row dev set cannot choose its
    epoch: its accuracy jumped by up to 0.17 between epochs whose test accuracy differed by 0.04.
    """
    return ClassifierTrainConfig(
        encoder_training=EncoderTraining.FROZEN,
        epochs=PLUGIN_EPOCHS,
        max_train=None,
        batch_size=max(size, 1),  # every row in each step: deterministic, and epochs = steps
        lr=1e-2,
        dev_limit=budget.dev_limit,
        seed=seed,
    )


def _supericl_config(budget: Budget, task: Task, seed: int) -> SuperICLConfig:
    """`budget.shots` demonstrations, but at most half the training examples: the plug-in
    trains on the rest, so that its predictions on the demonstrations are out of sample."""
    shots = min(budget.shots, len(task.train) // 2)
    return SuperICLConfig(shots=shots, variants=("supericl",), seed=seed)


class _SmallModelMethod:
    """Shared by the plug-in alone and SuperICL: the MiniLM plug-in, trained on the task with
    the SuperICL demonstrations left out (`_plugin_train_config`)."""

    name = ""
    trains = True

    def unavailable(self, task: Task) -> str | None:
        if task.spec.kind != "classification":
            return "a plug-in classifier needs a classification task"
        return None

    def _train(
        self, task: Task, budget: Budget, seed: int, work: Path
    ) -> tuple[SmallClassifier, list[Example]]:
        demos = pick_demos(task, _supericl_config(budget, task, seed))
        config = _plugin_train_config(budget, len(task.train) - len(demos), seed)
        plugin = SmallClassifier.train(task, config, exclude=[d.id for d in demos])
        plugin.save(work / "best")
        return plugin, demos

    def _fitted(
        self, backbone: Backbone, plugin: SmallClassifier, budget: Budget, work: Path
    ) -> Fitted:
        selects = bool(plugin.info["dev_selects"])  # else dev was only scored for the record
        return Fitted(
            backbone,
            EvalConfig(),
            trainable_parameters=plugin.num_trained,
            labelled_train=int(plugin.info["train_examples"]),
            labelled_dev=int(plugin.info["dev_examples"]) if selects else 0,
            train_seconds=float(plugin.info["train_seconds"]),
            stored_bytes=folder_bytes(work / "best"),
            best_step=int(plugin.info["best_epoch"]) if selects else None,
            shares_backbone=self.name == "supericl",  # the plug-in alone needs no backbone
        )


class PluginAlone(_SmallModelMethod):
    """The SuperICL plug-in by itself: MiniLM fine-tuned with a classification head."""

    name = "plugin"

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        plugin, _ = self._train(task, budget, seed, work)

        def evaluator(data: Task, config: EvalConfig) -> Report:
            examples = list(data.split(config.split))[: config.limit]
            return plugin_report(plugin, data, examples, config.seed)

        fitted = self._fitted(backbone, plugin, budget, work)
        fitted.evaluator = evaluator
        return fitted


class SuperICLMethod(_SmallModelMethod):
    """SuperICL on the frozen backbone: k demonstrations with the plug-in's prediction and
    confidence, then the test input with its prediction (Xu et al. 2023)."""

    name = "supericl"

    def fit(self, backbone: Backbone, task: Task, budget: Budget, seed: int, work: Path) -> Fitted:
        plugin, demos = self._train(task, budget, seed, work)
        backend = LocalBackend(backbone, chat_template=False)

        def evaluator(data: Task, config: EvalConfig) -> Report:
            sic = _supericl_config(budget, task, seed)
            sic = replace(sic, split=config.split, limit=config.limit)
            result = run_supericl(data, backend, plugin, demos, backbone.tokenizer, sic)
            return as_report(result, "supericl", backbone.fingerprint)

        fitted = self._fitted(backbone, plugin, budget, work)
        fitted.labelled_train += len(demos)
        fitted.evaluator = evaluator
        return fitted


METHODS: dict[str, Method] = {
    "zero-shot": ZeroShot(),
    "few-shot": FewShot(),
    # Lester et al. 2021's prompt (class-label init) right before the input, AdamW lr 1e-2.
    "soft-prompt": TrainedPlugin("soft-prompt", to_json(SoftPromptConfig())),
    # PEFT's PromptTuning as in its examples: random init, AdamW lr 3e-2.
    "peft-prompt": PeftReference("peft-prompt", "soft-prompt", PeftPromptConfig, train_peft_prompt),
    # PEFT's PrefixTuning as in its causal-LM example: 30 virtual tokens, no projection, AdamW lr
    # 3e-2 decaying linearly; evaluated as a frozenlm deep prompt.
    "peft-prefix": PeftReference("peft-prefix", "prefix", PeftPrefixConfig, train_peft_prefix),
    # Li & Liang 2021, P-tuning v2: key/value prefixes at every layer.
    "prefix": TrainedPlugin("prefix", to_json(PrefixConfig())),
    "lora": Lora(),
    "full-ft": FullFineTuning(),
    # Levine et al. 2022: a generator writes each input's prompt (here trained on one task).
    "id-pt": TrainedPlugin("id-pt", to_json(PromptGeneratorConfig())),
    # Levine et al. 2022: the frozen model twice, pass 1's states written into pass 2 by a
    # trained 2-layer connector (here from scratch, without a pass-1 prompt or pre-training).
    "recursion": TrainedPlugin("recursion", to_json(ConnectorConfig())),
    "plugin": PluginAlone(),
    "supericl": SuperICLMethod(),
}
