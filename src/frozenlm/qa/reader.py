"""The frozen reader: QA examples become a generation task whose input is the packed passages
and the question, so the backbone reads them through the same prompts, generation, plug-ins and
training loop as any other generation task.

`reader_task` builds that task for one context per question (closed book: none; the retriever's
or re-ranker's order packed into the budget; the gold passage alone; the counterfactual passage).
Its train split holds closed-book demonstrations ("Question: ... / Answer: ...", short answers
in the data's style) for few-shot reading; `qa.train.reader_training_task` gives train and dev
packed contexts instead, for training a soft prompt to read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, task_prompter
from frozenlm.prompts.demos import DemoSelector
from frozenlm.prompts.render import Prompter, RenderedPrompt
from frozenlm.qa.data import Corpus, QAExample, QATask
from frozenlm.qa.pack import Packed, pack
from frozenlm.tasks.spec import Example, Task, TaskSpec

READ_INSTRUCTION = "Answer the question with a short answer (a few words) taken from the passages."
CLOSED_INSTRUCTION = "Answer the question with a short answer (a few words)."
TEMPLATE = "{context}Question: {question}"
Context = Literal["closed", "retrieved", "reranked", "gold", "counterfactual"]
CONTEXTS: tuple[str, ...] = ("closed", "retrieved", "reranked", "gold", "counterfactual")


@dataclass(frozen=True)
class ReaderConfig:
    """How the frozen reader reads."""

    budget: int = 512
    """Prompt tokens in all (instruction, demonstrations, passages, question and the answer
    slot); capped by the backbone's context. Passages fill what the rest leaves."""
    max_new_tokens: int = 16
    """Answer tokens generated (greedy, stopping at a newline); reserved in the budget."""
    method: Literal["zero-shot", "few-shot"] = "few-shot"
    """Few-shot by measurement: SmolLM2-135M-Instruct on 40 nq test questions with the gold
    passage, exact match zero-shot 0.05 (chat template) / 0.20 (plain), few-shot 0.075 / 0.30:
    demonstrations teach the short answer style (docs/results/qa/reader-prompt.md)."""
    shots: int = 4
    """Closed-book demonstrations from train for few-shot."""
    max_passages: int | None = None
    """At most this many passages per context (None: as many as fit)."""
    best_last: bool = False
    """Show the packed passages in reverse ranking order, the best right before the question
    (small readers weigh what is nearest the question most)."""
    chat_template: bool = False
    """Off by measurement (see `method`): with the chat template the instruct model answers in
    sentences."""
    batch_rows: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget <= self.max_new_tokens:
            raise ConfigError(
                f"the reader budget ({self.budget} tokens) must exceed max_new_tokens "
                f"({self.max_new_tokens})"
            )
        if self.max_passages is not None and self.max_passages < 0:
            raise ConfigError(f"max_passages must be >= 0, got {self.max_passages}")

    def eval_config(self, split: str = "test") -> EvalConfig:
        return EvalConfig(
            method=self.method,
            shots=self.shots,
            selection="random",
            chat_template=self.chat_template,
            split=split,
            max_prompt_tokens=self.budget,
            max_new_tokens=self.max_new_tokens,
            batch_rows=self.batch_rows,
            batch_tokens=self.batch_rows * self.budget,
            seed=self.seed,
        )


def reader_spec(task_name: str, context: str = "retrieved") -> TaskSpec:
    """The generation spec the reader is prompted with (closed book has its own instruction)."""
    return TaskSpec(
        name=f"{task_name}-reader" if context != "closed" else f"{task_name}-closed-book",
        kind="generation",
        input_fields=("context", "question"),
        instruction=CLOSED_INSTRUCTION if context == "closed" else READ_INSTRUCTION,
        template=TEMPLATE,
        metric="exact_match",
        source=f"QA task {task_name}, read by a frozen LM",
    )


def as_example(example: QAExample, context: str, answers: Sequence[str] | None = None) -> Example:
    """The reader's example of a QA example with the given context text."""
    refs = tuple(answers) if answers is not None else example.answers
    return Example(
        id=example.id,
        fields={"context": context, "question": example.question},
        label=refs[0],
        answers=refs,
    )


class ContextPacker:
    """Packs contexts for one reader (backbone, spec and config): a candidate context fits when
    the complete prompt, demonstrations included, renders within the budget uncut."""

    def __init__(self, backbone: Backbone, task: Task, config: ReaderConfig) -> None:
        self.task = task
        self.config = config
        eval_config = config.eval_config()
        self.prompter: Prompter = task_prompter(
            backbone, task, eval_config, answer_tokens=config.max_new_tokens
        )
        prompt_config = eval_config.prompt_config()
        self.selector = (
            DemoSelector(
                task.train, task.spec, k=prompt_config.shots, selection="random", seed=config.seed
            )
            if prompt_config.shots > 0 and task.train
            else None
        )

    def demos_for(self, example: QAExample) -> list[Example]:
        """The demonstrations shown before `example` (the fixed seeded sample evaluation uses)."""
        return self.selector.select_many([as_example(example, "")])[0] if self.selector else []

    def render(self, example: QAExample, context: str) -> RenderedPrompt:
        """The reader's prompt for `example` reading `context`, after its demonstrations."""
        return self.prompter.render(as_example(example, context), self.demos_for(example))

    def fits_for(self, example: QAExample) -> Callable[[str], bool]:
        demos = self.demos_for(example)

        def fits(context: str) -> bool:
            return self.prompter.fits(as_example(example, context), demos)

        return fits

    def pack(self, example: QAExample, ranked: Sequence[int], corpus: Corpus) -> Packed:
        candidates = [(p, corpus[p].full_text) for p in ranked]
        return pack(
            candidates,
            self.fits_for(example),
            max_passages=self.config.max_passages,
            best_last=self.config.best_last,
        )


def demo_examples(task: QATask) -> tuple[Example, ...]:
    """Closed-book demonstrations: train questions with their first answer, no passages."""
    return tuple(as_example(e, "") for e in task.train)


def reader_task(
    task: QATask,
    examples: Sequence[QAExample],
    contexts: Sequence[str],
    *,
    context: str = "retrieved",
    answers: Sequence[Sequence[str]] | None = None,
) -> Task:
    """A generation task whose test split is `examples` with their `contexts` (and, for the
    counterfactual, other reference `answers`); train holds the closed-book demonstrations."""
    refs = answers if answers is not None else [None] * len(examples)
    test = tuple(as_example(e, c, a) for e, c, a in zip(examples, contexts, refs, strict=True))
    return Task(spec=reader_spec(task.name, context), train=demo_examples(task), dev=(), test=test)
