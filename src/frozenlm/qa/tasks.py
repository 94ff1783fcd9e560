"""Which QA task a name or file means: the built-in `nq`, or a questions file over a passages
file."""

from __future__ import annotations

import os
from pathlib import Path

from frozenlm.assets import cache_dir
from frozenlm.errors import ConfigError, DataError
from frozenlm.qa import nq
from frozenlm.qa.data import QATask, load_qa_files


def load_qa_task(
    task: str, passages: str | os.PathLike[str] | None = None, *, seed: int = 0
) -> QATask:
    """The built-in `nq` (fetched by `frozenlm qa get nq`), or a questions file with `passages`."""
    if task in nq.BUILTIN_QA:
        if passages is not None:
            raise ConfigError(
                f"the built-in task '{task}' brings its own passages; drop --passages"
            )
        return nq.load_nq(seed=seed)
    if passages is None:
        if Path(task).suffix == "" and len(Path(task).parts) == 1 and not Path(task).exists():
            raise DataError(
                f"unknown QA task '{task}'; expected a built-in QA task "
                f"({', '.join(nq.BUILTIN_QA)}) or a questions file with --passages"
            )
        raise ConfigError(f"the questions file '{task}' needs a passages file (--passages)")
    return load_qa_files(task, passages, seed=seed)


def default_folder(task: str, kind: str) -> Path:
    """Where the QA commands keep a built-in task's `kind` ("index", "reranker") by default."""
    return cache_dir() / "qa" / task / kind
