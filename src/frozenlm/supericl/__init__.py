"""SuperICL: a small fine-tuned plug-in's predictions and confidences in the large model's
context (Xu et al. 2023), on the local frozen backbone or any OpenAI-compatible endpoint.

Names are imported on first use (PEP 562, as in `frozenlm`), so the CLI can register the
`supericl` command without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LocalBackend": "frozenlm.supericl.backends",
    "OpenAIBackend": "frozenlm.supericl.backends",
    "OpenAIConfig": "frozenlm.supericl.backends",
    "get_classifier": "frozenlm.supericl.run",
    "supericl_job": "frozenlm.supericl.run",
    "SmallClassifier": "frozenlm.supericl.small_classifier",
    "ClassifierTrainConfig": "frozenlm.supericl.small_classifier",
    "SuperICLConfig": "frozenlm.supericl.run",
    "SuperICLResult": "frozenlm.supericl.run",
    "pick_demos": "frozenlm.supericl.run",
    "run_supericl": "frozenlm.supericl.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'frozenlm.supericl' has no attribute '{name}'")
