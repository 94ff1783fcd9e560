"""`frozenlm qa ask`: one question through the whole pipeline — retrieve, re-rank, pack, read —
with the passages the reader read."""

from __future__ import annotations

from dataclasses import dataclass, field

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import generate_rows
from frozenlm.engine.generation import GenerationConfig
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import prompt_rows
from frozenlm.evaluation.mixed import inference_conditioning
from frozenlm.plugins.protocol import Plugin
from frozenlm.qa.data import Passage, QAExample, QATask, question_id
from frozenlm.qa.reader import ContextPacker, ReaderConfig, as_example, reader_task
from frozenlm.qa.rerank import Reranker
from frozenlm.qa.retrieve import Index


@dataclass(frozen=True)
class AskConfig:
    """How one question is answered."""

    retriever: str = "hybrid"
    depth: int = 20
    """Passages retrieved (and re-ranked, with a re-ranker) before packing."""
    reader: ReaderConfig = field(default_factory=ReaderConfig)


@dataclass
class Answer:
    question: str
    answer: str
    passages: list[Passage]
    """The passages the reader read, in the order it read them."""
    scores: list[float]
    """Their re-ranker (or retriever) scores."""
    cut: bool = False


def ask(
    backbone: Backbone,
    task: QATask,
    index: Index,
    question: str,
    reranker: Reranker | None = None,
    config: AskConfig = AskConfig(),
    plugin: Plugin | None = None,
) -> Answer:
    """Answer `question` from `task`'s corpus with the frozen reader."""
    question = " ".join(question.split())
    if not question:
        raise ConfigError("the question is empty")
    hits = index.retriever(config.retriever).search([question], config.depth)[0]
    if reranker is not None:
        hits = reranker.rerank([question], [hits], task.corpus, config.depth)[0]
    example = QAExample(id=question_id(question), question=question, answers=("",))
    packer = ContextPacker(backbone, reader_task(task, [], []), config.reader)
    packed = packer.pack(example, [p for p, _ in hits], task.corpus)
    prompt = packer.render(example, packed.context)
    conditioning = None
    if plugin is not None:
        spec = packer.task.spec
        conditioning = inference_conditioning([(plugin, spec, as_example(example, packed.context))])
    rows = prompt_rows([prompt], conditioning)
    gen = GenerationConfig(max_new_tokens=config.reader.max_new_tokens)
    text = generate_rows(backbone, rows, gen, desc="read")[0]
    score = dict(hits)
    return Answer(
        question=question,
        answer=packer.prompter.extract_answer(text),
        passages=[task.corpus[p] for p in packed.positions],
        scores=[score[p] for p in packed.positions],
        cut=packed.cut,
    )
