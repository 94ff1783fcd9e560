"""`frozenlm compare`: every way of specialising the frozen backbone, measured side by side.

Names are imported on first use (PEP 562, as in `frozenlm`), so reading a report module does not
load torch, PEFT and SuperICL through the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BUDGETS": "frozenlm.compare.methods",
    "METHODS": "frozenlm.compare.methods",
    "Budget": "frozenlm.compare.methods",
    "Fitted": "frozenlm.compare.methods",
    "Method": "frozenlm.compare.methods",
    "CompareConfig": "frozenlm.compare.runner",
    "CompareResult": "frozenlm.compare.runner",
    "compare": "frozenlm.compare.runner",
    "run_compare": "frozenlm.compare.runner",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'frozenlm.compare' has no attribute '{name}'")
