"""frozenlm: get the most out of one frozen language model.

The Python API mirrors the CLI: `frozenlm tasks` is `task_summaries()`, `frozenlm eval` is
`evaluate(Backbone.load(...), load_task(...), EvalConfig(...))`. Names are imported on first use
(PEP 562) so that `import frozenlm` and `frozenlm --help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "frozenlm.backbone",
    "EvalConfig": "frozenlm.evaluation.evaluate",
    "Report": "frozenlm.evaluation.evaluate",
    "evaluate": "frozenlm.evaluation.evaluate",
    "Example": "frozenlm.tasks",
    "Task": "frozenlm.tasks",
    "TaskSpec": "frozenlm.tasks",
    "list_tasks": "frozenlm.tasks",
    "load_task": "frozenlm.tasks",
    "task_summaries": "frozenlm.tasks",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'frozenlm' has no attribute '{name}'")
