"""QA tasks as plain generation tasks, so every method that runs on a text task (prompt design,
soft and deep prompts, ID-PT, LoRA, full fine-tuning; `frozenlm compare`) runs on them too.

- `<task>-closed` (`nq-closed`): the question alone, closed-book QA from the model's memory.
- `<task>-open` (`nq-open`): the question after the retriever's top `passages` passages (a fixed
  number, so the task is the same data on every backbone and records replay), in the reader's
  prompt. The retriever is hybrid when the index has both parts, else the part it has; the
  task's `source` says which.

Train is bounded (`train` questions of the seeded train order) because every open-book train
question costs a retrieval; dev and test are the QA task's whole splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from frozenlm.errors import ConfigError
from frozenlm.qa.data import QAExample, QATask
from frozenlm.qa.pack import format_passages
from frozenlm.qa.reader import as_example, reader_spec
from frozenlm.qa.retrieve import PARTS, Index, load_index
from frozenlm.tasks.spec import Example, Task

CLOSED, OPEN = "closed", "open"


@dataclass(frozen=True)
class TextTaskConfig:
    """How a QA task becomes a text task."""

    passages: int = 2
    """Retrieved passages before each open-book question."""
    train: int = 1000
    """Train questions kept (the first of the seeded train order; 0: all)."""

    def __post_init__(self) -> None:
        if self.passages < 1:
            raise ConfigError(f"open-book passages must be >= 1, got {self.passages}")
        if self.train < 0:
            raise ConfigError(f"train questions must be >= 0, got {self.train}")


def text_task_names(qa_tasks: Sequence[str]) -> list[str]:
    """The text-task names of the built-in QA tasks (`nq` -> nq-closed, nq-open)."""
    return [f"{name}-{kind}" for name in qa_tasks for kind in (CLOSED, OPEN)]


def parse_text_task(ref: str, qa_tasks: Sequence[str]) -> tuple[str, str] | None:
    """(QA task, "closed" | "open") when `ref` names a QA text task, else None."""
    name, _, kind = ref.rpartition("-")
    return (name, kind) if name in qa_tasks and kind in (CLOSED, OPEN) else None


def closed_book_task(task: QATask, config: TextTaskConfig = TextTaskConfig()) -> Task:
    """`task`'s questions alone; reference answers are all of each question's answers."""
    spec = replace(
        reader_spec(task.name, CLOSED),
        name=f"{task.name}-{CLOSED}",
        source=f"{task.source}; closed book",
    )

    def split(examples: Sequence[QAExample]) -> tuple[Example, ...]:
        return tuple(as_example(e, "") for e in examples)

    return Task(
        spec=spec,
        train=split(task.train[: config.train or None]),
        dev=split(task.dev),
        test=split(task.test),
    )


def retriever_of(index: Index) -> str:
    """Hybrid when the index has both parts, else its one part."""
    built = [p for p in PARTS if getattr(index, p) is not None]
    return "hybrid" if len(built) == len(PARTS) else built[0]


def open_book_task(task: QATask, index: Index, config: TextTaskConfig = TextTaskConfig()) -> Task:
    """`task`'s questions, each after its top `config.passages` retrieved passages."""
    index.check_serves(task.corpus, task.name)
    retriever = index.retriever(retriever_of(index))

    def split(examples: Sequence[QAExample]) -> tuple[Example, ...]:
        hits = retriever.search([e.question for e in examples], config.passages)
        return tuple(
            as_example(e, format_passages([task.corpus[p].full_text for p, _ in h]))
            for e, h in zip(examples, hits, strict=True)
        )

    splits = {
        "train": split(task.train[: config.train or None]),
        "dev": split(task.dev),
        "test": split(task.test),
    }
    source = (
        f"{task.source}; open book: the top {config.passages} {retriever.name} passages of "
        f"{len(task.corpus)}"
    )
    spec = replace(reader_spec(task.name, "retrieved"), name=f"{task.name}-{OPEN}", source=source)
    return Task(spec=spec, **splits)


def load_text_task(
    ref: str,
    seed: int = 0,
    *,
    index_folder: str | Path | None = None,
    config: TextTaskConfig = TextTaskConfig(),
) -> Task:
    """The text task `ref` names (`nq-closed`, `nq-open`); `index_folder` defaults to the
    cache's index of the QA task (`frozenlm qa index`)."""
    from frozenlm.qa.nq import BUILTIN_QA
    from frozenlm.qa.tasks import default_folder, load_qa_task

    parsed = parse_text_task(ref, BUILTIN_QA)
    if parsed is None:
        raise ConfigError(
            f"'{ref}' is not a QA text task; expected one of "
            f"{', '.join(text_task_names(BUILTIN_QA))}"
        )
    name, kind = parsed
    task = load_qa_task(name, seed=seed)
    if kind == CLOSED:
        return closed_book_task(task, config)
    folder = Path(index_folder) if index_folder is not None else default_folder(name, "index")
    return open_book_task(task, load_index(folder, task.corpus), config)
